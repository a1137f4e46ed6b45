-- The process running a training: a run is marked interrupted at start-up only if that process
-- is gone (a one-shot command next to a live bot must not mark the bot's run).
ALTER TABLE training_runs ADD COLUMN owner_pid INTEGER;
