-- Training workers (issue 14): with MYNAH_TRAINING=workers (PostgreSQL only) a training request
-- is a row here, claimed by a `mynah worker` process for a lease it renews while it trains; a
-- finished model travels to the serving process as a bundle in model_bundles. SQLite keeps the
-- same tables so the store reads alike on both; a bot on SQLite trains in its own process.
CREATE TABLE training_jobs (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    guild_id       TEXT    NOT NULL,
    trigger        TEXT    NOT NULL,
    requested_by   TEXT,
    epochs         INTEGER,
    max_minutes    REAL,
    state          TEXT    NOT NULL DEFAULT 'queued', -- queued | running | done | failed | cancelled
    cancel         INTEGER NOT NULL DEFAULT 0,        -- 1: asked to stop
    run_id         INTEGER REFERENCES training_runs (id),
    worker         TEXT,                              -- who holds (or last held) it
    lease_until_ms INTEGER,                           -- a running job past this is re-claimable
    attempts       INTEGER NOT NULL DEFAULT 0,
    requested_ms   INTEGER NOT NULL,
    finished_ms    INTEGER,
    error          TEXT
);
CREATE UNIQUE INDEX training_jobs_one_open ON training_jobs (guild_id) WHERE state IN ('queued', 'running');

-- A worker's trained model, packed as a bundle (models::bundle), until serving processes fetch it.
CREATE TABLE model_bundles (
    run_id     INTEGER PRIMARY KEY REFERENCES training_runs (id),
    guild_id   TEXT    NOT NULL,
    bundle     BLOB    NOT NULL,
    created_ms INTEGER NOT NULL
);
