-- Where mynah speaks (issue 13): an admin's `llmchannel reply` choice per channel. No row means
-- the default, answering mentions only.
CREATE TABLE channel_replies (
    guild_id   TEXT    NOT NULL,
    channel_id TEXT    NOT NULL,
    mode       TEXT    NOT NULL,              -- sometimes | off
    percent    INTEGER,                       -- with sometimes: the chance to answer, 1 to 100
    changed_by TEXT,
    changed_ms INTEGER NOT NULL,
    PRIMARY KEY (guild_id, channel_id)
);
