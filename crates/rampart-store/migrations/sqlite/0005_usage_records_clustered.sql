-- usage_records clustered by its id (a UUIDv7, so rows arrive in about time order) instead of a
-- rowid table with a separate unique index on id, and no index on request_id: an insert touches
-- two B-trees (the table and `at`) instead of four. The ledger writes every request, so this is
-- its main write cost. (Lookups by request id scan; narrow them by time.)
CREATE TABLE usage_records_clustered (
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
    CONSTRAINT usage_records_pkey PRIMARY KEY (id)
) STRICT, WITHOUT ROWID;
INSERT INTO usage_records_clustered SELECT * FROM usage_records;
DROP TABLE usage_records;
ALTER TABLE usage_records_clustered RENAME TO usage_records;
CREATE INDEX usage_records_at_idx ON usage_records (at);
