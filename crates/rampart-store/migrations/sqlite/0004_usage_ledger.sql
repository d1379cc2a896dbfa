-- The usage ledger and its rollups, SQLite flavour (conventions as in 0001).
--
-- usage_records: one row per proxied request, keyed by the ledger's own id (UUIDv7, assigned when
-- the request ends), so replaying the local spool after a crash inserts nothing twice. No foreign
-- keys: a record must be insertable whatever happened to its key, team or user since.
CREATE TABLE usage_records (
    id                    BLOB    NOT NULL PRIMARY KEY,
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
    client_aborted        INTEGER NOT NULL CHECK (client_aborted IN (0, 1))
) STRICT;
CREATE INDEX usage_records_at_idx ON usage_records (at);
CREATE INDEX usage_records_request_id_idx ON usage_records (request_id);

-- usage_rollups: sums per UTC hour and per UTC day, per key, team, user and model, updated in the
-- transaction that inserts the records. bucket is the Unix time (seconds) the hour or day starts;
-- an absent key, team or user is the nil UUID and an absent model '' (so the key is NOT NULL).
CREATE TABLE usage_rollups (
    period                TEXT    NOT NULL CHECK (period IN ('hour', 'day')),
    bucket                INTEGER NOT NULL,
    key_id                BLOB    NOT NULL,
    team_id               BLOB    NOT NULL,
    user_id               BLOB    NOT NULL,
    model                 TEXT    NOT NULL,
    requests              INTEGER NOT NULL,
    errors                INTEGER NOT NULL,
    input_tokens          INTEGER NOT NULL,
    output_tokens         INTEGER NOT NULL,
    cache_write_5m_tokens INTEGER NOT NULL,
    cache_write_1h_tokens INTEGER NOT NULL,
    cache_read_tokens     INTEGER NOT NULL,
    cost_micro_usd        INTEGER NOT NULL,
    CONSTRAINT usage_rollups_pkey PRIMARY KEY (period, bucket, key_id, team_id, user_id, model)
) STRICT, WITHOUT ROWID;
CREATE INDEX usage_rollups_team_idx ON usage_rollups (period, team_id, bucket);
CREATE INDEX usage_rollups_user_idx ON usage_rollups (period, user_id, bucket);
