-- Webhooks on batch end, SQLite flavour (conventions as in 0001: ids 16-byte BLOBs, times INTEGER
-- microseconds since the epoch, UTC).
--
-- team_webhooks: at most one per team. The signing secret (whsec_…) is sealed with the master key
-- like upstream credentials (AES-256-GCM, bound to 'rampart:team_webhook:<team id>'); it is shown
-- once, when made. Batches that end before the webhook was set are not announced.
CREATE TABLE team_webhooks (
    team_id           BLOB    NOT NULL PRIMARY KEY REFERENCES teams (id) ON DELETE CASCADE,
    url               TEXT    NOT NULL,
    secret_ciphertext BLOB    NOT NULL,
    secret_nonce      BLOB    NOT NULL,
    secret_key_id     TEXT    NOT NULL,
    enabled           INTEGER NOT NULL DEFAULT 1 CHECK (enabled IN (0, 1)),
    created_at        INTEGER NOT NULL,
    updated_at        INTEGER NOT NULL
) STRICT;

-- webhook_deliveries: one row per delivery attempt of one batch's end to one team. Inserting the
-- row is the claim: (team_id, batch_id, attempt) is unique, so of several instances exactly one
-- sends attempt N. next_attempt_at is the lease while the attempt runs (an instance that dies
-- mid-attempt leaves it to expire), then when attempt N+1 may run, or NULL once delivered or
-- given up.
CREATE TABLE webhook_deliveries (
    id              BLOB    NOT NULL PRIMARY KEY,
    team_id         BLOB    NOT NULL REFERENCES teams (id) ON DELETE CASCADE,
    batch_id        TEXT    NOT NULL,
    attempt         INTEGER NOT NULL CHECK (attempt >= 1),
    url             TEXT    NOT NULL,
    attempted_at    INTEGER NOT NULL,
    finished_at     INTEGER,
    status_code     INTEGER,
    error           TEXT,
    next_attempt_at INTEGER,
    delivered       INTEGER NOT NULL DEFAULT 0 CHECK (delivered IN (0, 1)),
    CONSTRAINT webhook_deliveries_attempt_key UNIQUE (team_id, batch_id, attempt)
) STRICT;
CREATE INDEX webhook_deliveries_team_idx ON webhook_deliveries (team_id, attempted_at);
