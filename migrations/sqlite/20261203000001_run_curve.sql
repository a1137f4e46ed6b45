-- The loss curve of each training run, written as it trains: the training loss (mean over the
-- steps since the previous point, nats per token) and, at evaluation steps, the validation
-- figure in bits per byte.
CREATE TABLE run_curve (
    run_id     INTEGER NOT NULL REFERENCES training_runs (id) ON DELETE CASCADE,
    step       INTEGER NOT NULL,
    elapsed_ms INTEGER NOT NULL,                 -- since the run started
    tokens     INTEGER NOT NULL,                 -- training tokens seen up to this step
    train_loss REAL    NOT NULL,
    val_bpb    REAL,                             -- only where the run evaluated
    PRIMARY KEY (run_id, step)
) WITHOUT ROWID;
