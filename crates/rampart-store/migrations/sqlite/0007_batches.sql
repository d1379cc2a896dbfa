-- Message batches and the durable local queue, SQLite flavour (conventions as in 0001: ids of
-- users/teams/keys are 16-byte BLOBs, times INTEGER microseconds since the epoch, UTC).
--
-- message_batches: one row per batch, both execution modes. `id` is the public msgbatch_ id (in
-- upstream mode, the upstream's). `owner` is who may see it: 'team:<uuid>', 'key:<uuid>' or
-- 'cfg:<key label>'. Counts are kept here, updated in the transaction that settles an item;
-- `ended_at` is set in the transaction that makes the batch 'ended' (webhooks poll for it).
CREATE TABLE message_batches (
    id                  TEXT    NOT NULL PRIMARY KEY,
    owner               TEXT    NOT NULL,
    team_id             BLOB,
    key_id              BLOB,
    user_id             BLOB,
    key_label           TEXT,
    mode                TEXT    NOT NULL CHECK (mode IN ('local', 'upstream')),
    processing_status   TEXT    NOT NULL CHECK (processing_status IN ('in_progress', 'canceling', 'ended')),
    request_count       INTEGER NOT NULL CHECK (request_count >= 0),
    succeeded_count     INTEGER NOT NULL DEFAULT 0,
    errored_count       INTEGER NOT NULL DEFAULT 0,
    canceled_count      INTEGER NOT NULL DEFAULT 0,
    expired_count       INTEGER NOT NULL DEFAULT 0,
    reserved_micro_usd  INTEGER NOT NULL DEFAULT 0,
    created_at          INTEGER NOT NULL,
    expires_at          INTEGER NOT NULL,
    ended_at            INTEGER,
    cancel_initiated_at INTEGER,
    archived_at         INTEGER,
    results_until       INTEGER NOT NULL,
    upstream_synced_at  INTEGER
) STRICT;
CREATE INDEX message_batches_owner_idx ON message_batches (owner, created_at, id);
CREATE INDEX message_batches_open_idx ON message_batches (processing_status, mode);
CREATE INDEX message_batches_ended_idx ON message_batches (ended_at);

-- batch_items: the local queue. state: queued → running (claimed with a lease; attempts is
-- incremented at claim time) → succeeded | errored | canceled | expired, or back to queued with a
-- not_before (a retryable failure). A running item whose lease passed is claimable again and is
-- flagged maybe_duplicate (its upstream call may have run). team_key groups items for fair
-- sharing ('' for no team). counted_as: the count of message_batches the item is in (NULL while
-- unfinished; a replayed dead letter keeps its old count until it finishes again).
CREATE TABLE batch_items (
    batch_id        TEXT    NOT NULL REFERENCES message_batches (id) ON DELETE CASCADE,
    idx             INTEGER NOT NULL,
    custom_id       TEXT    NOT NULL,
    team_key        TEXT    NOT NULL,
    params          TEXT    NOT NULL,
    worst_micro_usd INTEGER NOT NULL DEFAULT 0,
    state           TEXT    NOT NULL CHECK (state IN ('queued', 'running', 'succeeded', 'errored', 'canceled', 'expired')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    not_before      INTEGER NOT NULL,
    lease_until     INTEGER,
    maybe_duplicate INTEGER NOT NULL DEFAULT 0 CHECK (maybe_duplicate IN (0, 1)),
    last_error      TEXT,
    result          TEXT,
    counted_as      TEXT,
    completed_at    INTEGER,
    CONSTRAINT batch_items_pkey PRIMARY KEY (batch_id, idx),
    CONSTRAINT batch_items_custom_id_key UNIQUE (batch_id, custom_id)
) STRICT;
CREATE INDEX batch_items_ready_idx ON batch_items (state, team_key, not_before);

-- batch_dead_letters: items that ran out of attempts on retryable failures, with the last error.
CREATE TABLE batch_dead_letters (
    id           BLOB    NOT NULL PRIMARY KEY,
    batch_id     TEXT    NOT NULL,
    idx          INTEGER NOT NULL,
    custom_id    TEXT    NOT NULL,
    team_id      BLOB,
    key_id       BLOB,
    attempts     INTEGER NOT NULL,
    last_status  INTEGER,
    last_error   TEXT    NOT NULL,
    created_at   INTEGER NOT NULL,
    replayed_at  INTEGER,
    replay_count INTEGER NOT NULL DEFAULT 0
) STRICT;
CREATE INDEX batch_dead_letters_created_idx ON batch_dead_letters (created_at, id);
CREATE INDEX batch_dead_letters_batch_idx ON batch_dead_letters (batch_id, created_at);
