-- Chat messages collected from Discord or imported from JSONL. Everything is per guild.
CREATE TABLE messages (
    guild_id     TEXT    NOT NULL,
    id           TEXT    NOT NULL,           -- Discord message id (or the corpus line's id)
    channel_id   TEXT    NOT NULL,
    channel_name TEXT    NOT NULL DEFAULT '',
    author_id    TEXT    NOT NULL,
    author_name  TEXT    NOT NULL,
    content      TEXT    NOT NULL,
    created_at   TEXT    NOT NULL,           -- RFC 3339 exactly as received
    created_ms   INTEGER NOT NULL,           -- the same instant in Unix ms, for ordering
    edited_at    TEXT,
    ingested_ms  INTEGER NOT NULL,
    PRIMARY KEY (guild_id, id)
);
CREATE INDEX messages_by_time ON messages (guild_id, created_ms);
CREATE INDEX messages_by_channel ON messages (guild_id, channel_id, created_ms);
CREATE INDEX messages_by_author ON messages (guild_id, author_id);

-- One row per training attempt, whatever its outcome.
CREATE TABLE training_runs (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    guild_id        TEXT    NOT NULL,
    trigger         TEXT    NOT NULL,        -- schedule | command | api | cli | remote
    requested_by    TEXT,
    started_ms      INTEGER NOT NULL,
    finished_ms     INTEGER,
    outcome         TEXT    NOT NULL DEFAULT 'running', -- running | succeeded | failed | cancelled | interrupted
    error           TEXT,
    epochs          INTEGER,
    steps           INTEGER,
    tokens          INTEGER,
    train_loss      REAL,
    val_bpb         REAL,
    corpus_messages INTEGER,
    corpus_until_ms INTEGER                  -- newest message included in the training data
);
CREATE INDEX training_runs_by_guild ON training_runs (guild_id, started_ms);

-- Trained models on disk; at most one current per guild.
CREATE TABLE models (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    guild_id        TEXT    NOT NULL,
    run_id          INTEGER REFERENCES training_runs (id),
    path            TEXT    NOT NULL,
    created_ms      INTEGER NOT NULL,
    params          INTEGER,
    val_bpb         REAL,
    corpus_messages INTEGER,
    is_current      INTEGER NOT NULL DEFAULT 0,
    stale_reason    TEXT,
    stale_since_ms  INTEGER
);
CREATE UNIQUE INDEX models_one_current ON models (guild_id) WHERE is_current = 1;
