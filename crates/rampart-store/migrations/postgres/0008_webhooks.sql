-- Webhooks on batch end, PostgreSQL flavour: the same tables, columns and constraint names as the
-- SQLite migration (see there for what each holds); times are timestamptz.
CREATE TABLE team_webhooks (
    team_id           uuid        NOT NULL PRIMARY KEY REFERENCES teams (id) ON DELETE CASCADE,
    url               text        NOT NULL,
    secret_ciphertext bytea       NOT NULL,
    secret_nonce      bytea       NOT NULL,
    secret_key_id     text        NOT NULL,
    enabled           boolean     NOT NULL DEFAULT true,
    created_at        timestamptz NOT NULL,
    updated_at        timestamptz NOT NULL
);

CREATE TABLE webhook_deliveries (
    id              uuid        NOT NULL PRIMARY KEY,
    team_id         uuid        NOT NULL REFERENCES teams (id) ON DELETE CASCADE,
    batch_id        text        NOT NULL,
    attempt         integer     NOT NULL CHECK (attempt >= 1),
    url             text        NOT NULL,
    attempted_at    timestamptz NOT NULL,
    finished_at     timestamptz,
    status_code     integer,
    error           text,
    next_attempt_at timestamptz,
    delivered       boolean     NOT NULL DEFAULT false,
    CONSTRAINT webhook_deliveries_attempt_key UNIQUE (team_id, batch_id, attempt)
);
CREATE INDEX webhook_deliveries_team_idx ON webhook_deliveries (team_id, attempted_at);
