-- The usage ledger and its rollups, PostgreSQL flavour: the same tables, columns and constraint
-- names as the SQLite migration (see there for what each holds).
CREATE TABLE usage_records (
    id                    uuid        NOT NULL PRIMARY KEY,
    at                    timestamptz NOT NULL,
    request_id            text        NOT NULL,
    key_id                uuid,
    team_id               uuid,
    user_id               uuid,
    key_label             text,
    endpoint              text        NOT NULL,
    model_requested       text,
    model_served          text,
    status                integer     NOT NULL CHECK (status BETWEEN 100 AND 999),
    error_type            text,
    input_tokens          bigint      NOT NULL CHECK (input_tokens >= 0),
    output_tokens         bigint      NOT NULL CHECK (output_tokens >= 0),
    cache_write_5m_tokens bigint      NOT NULL CHECK (cache_write_5m_tokens >= 0),
    cache_write_1h_tokens bigint      NOT NULL CHECK (cache_write_1h_tokens >= 0),
    cache_read_tokens     bigint      NOT NULL CHECK (cache_read_tokens >= 0),
    cost_micro_usd        bigint      NOT NULL CHECK (cost_micro_usd >= 0),
    priced                boolean     NOT NULL,
    latency_us            bigint      NOT NULL CHECK (latency_us >= 0),
    upstream_latency_us   bigint      CHECK (upstream_latency_us >= 0),
    upstream_attempts     integer     NOT NULL CHECK (upstream_attempts >= 0),
    streamed              boolean     NOT NULL,
    cache_hit             boolean     NOT NULL,
    client_aborted        boolean     NOT NULL
);
CREATE INDEX usage_records_at_idx ON usage_records (at);
CREATE INDEX usage_records_request_id_idx ON usage_records (request_id);

CREATE TABLE usage_rollups (
    period                text        NOT NULL CHECK (period IN ('hour', 'day')),
    bucket                bigint      NOT NULL,
    key_id                uuid        NOT NULL,
    team_id               uuid        NOT NULL,
    user_id               uuid        NOT NULL,
    model                 text        NOT NULL,
    requests              bigint      NOT NULL,
    errors                bigint      NOT NULL,
    input_tokens          bigint      NOT NULL,
    output_tokens         bigint      NOT NULL,
    cache_write_5m_tokens bigint      NOT NULL,
    cache_write_1h_tokens bigint      NOT NULL,
    cache_read_tokens     bigint      NOT NULL,
    cost_micro_usd        bigint      NOT NULL,
    CONSTRAINT usage_rollups_pkey PRIMARY KEY (period, bucket, key_id, team_id, user_id, model)
);
CREATE INDEX usage_rollups_team_idx ON usage_rollups (period, team_id, bucket);
CREATE INDEX usage_rollups_user_idx ON usage_rollups (period, user_id, bucket);
