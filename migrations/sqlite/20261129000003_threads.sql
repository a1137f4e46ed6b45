-- Messages in threads remember the channel the thread belongs to, so collecting, removing or
-- deleting a channel covers its threads.
ALTER TABLE messages ADD COLUMN parent_channel_id TEXT;
CREATE INDEX messages_by_parent ON messages (guild_id, parent_channel_id) WHERE parent_channel_id IS NOT NULL;
