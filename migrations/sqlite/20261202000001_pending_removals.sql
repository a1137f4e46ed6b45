-- Removals seen on Discord (deletions, edits, channel deletions) that could not be applied yet:
-- retried in the background and at start-up until they are, so a deleted message is never
-- trained on after its deletion reached the bot.
CREATE TABLE pending_removals (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    guild_id   TEXT    NOT NULL,
    kind       TEXT    NOT NULL,             -- message | channel | edit
    target     TEXT    NOT NULL,             -- the message's or the channel's ID
    content    TEXT,                         -- an edit's new text (scrubbed)
    edited_at  TEXT,
    created_ms INTEGER NOT NULL
);
