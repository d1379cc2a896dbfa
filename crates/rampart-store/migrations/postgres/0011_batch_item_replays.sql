-- How many times a batch item was replayed from the dead letters: a replay is a new upstream call,
-- so its usage record gets an id of its own (the first run's id is derived from the batch and the
-- item's position alone, as before).
ALTER TABLE batch_items ADD COLUMN replays BIGINT NOT NULL DEFAULT 0 CHECK (replays >= 0);
