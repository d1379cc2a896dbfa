-- What Rampart's caching saved, per usage record and in the rollups, in micro-dollars: a
-- response-cache hit saves the whole cost of the answer it replays; prompt-cache breakpoints save
-- the uncached price of the tokens read from the cache, less the extra price of the cache writes
-- (so a request that only wrote the cache saved a negative amount). 0 when no lever applied.
ALTER TABLE usage_records ADD COLUMN saved_micro_usd INTEGER NOT NULL DEFAULT 0;
ALTER TABLE usage_rollups ADD COLUMN saved_micro_usd INTEGER NOT NULL DEFAULT 0;
