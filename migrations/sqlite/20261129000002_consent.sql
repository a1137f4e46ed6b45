-- Consent and deletion (issue 5): which channels are collected, who opted out, how far each
-- channel was reconciled with Discord, and whether a guild's model still contains removed data.

-- Admins' choices per channel. A row overrides MYNAH_COLLECT_CHANNELS, which stays the default
-- for channels nobody has decided about.
CREATE TABLE channel_settings (
    guild_id   TEXT    NOT NULL,
    channel_id TEXT    NOT NULL,
    collect    INTEGER NOT NULL,              -- 1 opted in, 0 opted out
    changed_by TEXT,
    changed_ms INTEGER NOT NULL,
    PRIMARY KEY (guild_id, channel_id)
);

-- Users who opted out of collection in a guild: nothing of theirs is stored or trained on.
CREATE TABLE opt_outs (
    guild_id TEXT    NOT NULL,
    user_id  TEXT    NOT NULL,
    since_ms INTEGER NOT NULL,
    PRIMARY KEY (guild_id, user_id)
);

-- Users who asked to be forgotten: nothing of theirs written before `before_ms` is stored again,
-- even when a channel's history is read back from Discord.
CREATE TABLE forget_marks (
    guild_id  TEXT    NOT NULL,
    user_id   TEXT    NOT NULL,
    before_ms INTEGER NOT NULL,
    PRIMARY KEY (guild_id, user_id)
);

-- The newest message ID up to which a channel's history was read back from Discord, so a
-- restart fetches only what it may have missed.
CREATE TABLE channel_sync (
    guild_id       TEXT    NOT NULL,
    channel_id     TEXT    NOT NULL,
    synced_through TEXT    NOT NULL,
    synced_ms      INTEGER NOT NULL,
    PRIMARY KEY (guild_id, channel_id)
);

-- A model trained on messages that were removed since. Keyed by the run directory, so a newly
-- trained model starts clean.
CREATE TABLE model_staleness (
    guild_id TEXT    NOT NULL,
    run      TEXT    NOT NULL,
    since_ms INTEGER NOT NULL,
    reason   TEXT    NOT NULL,               -- the latest cause, for people
    removed  INTEGER NOT NULL,               -- removed messages the model had seen
    PRIMARY KEY (guild_id, run)
);

-- Superseded by model_staleness (models copied in by hand have no row in models).
ALTER TABLE models DROP COLUMN stale_reason;
ALTER TABLE models DROP COLUMN stale_since_ms;
