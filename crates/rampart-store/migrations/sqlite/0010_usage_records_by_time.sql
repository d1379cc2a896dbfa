-- usage_records keyed by (at, id) instead of by id with a second B-tree on `at`: an insert, the
-- ledger's busiest write, touches one B-tree instead of two (in isolation 2.10 → 1.61 µs per row
-- with records arriving in about time order, and less written to the WAL), and the time-range
-- reads and the retention purge walk the key itself. A record is the same (at, id) every time it
-- is written (a spool replayed after a crash), so the key keeps the ledger idempotent; the
-- stored-record check looks up (at, id) pairs.
CREATE TABLE usage_records_by_time (
    id                    BLOB    NOT NULL,
    at                    INTEGER NOT NULL,
    request_id            TEXT    NOT NULL,
    key_id                BLOB,
    team_id               BLOB,
    user_id               BLOB,
    key_label             TEXT,
    endpoint              TEXT    NOT NULL,
    model_requested       TEXT,
    model_served          TEXT,
    status                INTEGER NOT NULL CHECK (status BETWEEN 100 AND 999),
    error_type            TEXT,
    input_tokens          INTEGER NOT NULL CHECK (input_tokens >= 0),
    output_tokens         INTEGER NOT NULL CHECK (output_tokens >= 0),
    cache_write_5m_tokens INTEGER NOT NULL CHECK (cache_write_5m_tokens >= 0),
    cache_write_1h_tokens INTEGER NOT NULL CHECK (cache_write_1h_tokens >= 0),
    cache_read_tokens     INTEGER NOT NULL CHECK (cache_read_tokens >= 0),
    cost_micro_usd        INTEGER NOT NULL CHECK (cost_micro_usd >= 0),
    priced                INTEGER NOT NULL CHECK (priced IN (0, 1)),
    latency_us            INTEGER NOT NULL CHECK (latency_us >= 0),
    upstream_latency_us   INTEGER CHECK (upstream_latency_us >= 0),
    upstream_attempts     INTEGER NOT NULL CHECK (upstream_attempts >= 0),
    streamed              INTEGER NOT NULL CHECK (streamed IN (0, 1)),
    cache_hit             INTEGER NOT NULL CHECK (cache_hit IN (0, 1)),
    client_aborted        INTEGER NOT NULL CHECK (client_aborted IN (0, 1)),
    saved_micro_usd       INTEGER NOT NULL DEFAULT 0,
    CONSTRAINT usage_records_pkey PRIMARY KEY (at, id)
) STRICT, WITHOUT ROWID;
INSERT INTO usage_records_by_time SELECT * FROM usage_records;
DROP TABLE usage_records;
ALTER TABLE usage_records_by_time RENAME TO usage_records;
