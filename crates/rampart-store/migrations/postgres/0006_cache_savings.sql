-- What Rampart's caching saved, per usage record and in the rollups (see the SQLite migration).
ALTER TABLE usage_records ADD COLUMN saved_micro_usd bigint NOT NULL DEFAULT 0;
ALTER TABLE usage_rollups ADD COLUMN saved_micro_usd bigint NOT NULL DEFAULT 0;
