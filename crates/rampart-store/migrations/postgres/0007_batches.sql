-- Message batches and the durable local queue, PostgreSQL flavour: the same tables, columns and
-- constraint names as the SQLite migration (see there for what each holds); times are timestamptz.
--
-- message_batches: one row per batch, both execution modes. `id` is the public msgbatch_ id (in
-- upstream mode, the upstream's). `owner` is who may see it: 'team:<uuid>', 'key:<uuid>' or
-- 'cfg:<key label>'. Counts are kept here, updated in the transaction that settles an item;
-- `ended_at` is set in the transaction that makes the batch 'ended' (webhooks poll for it).
CREATE TABLE message_batches (
    id                  text    NOT NULL PRIMARY KEY,
    owner               text    NOT NULL,
    team_id             uuid,
    key_id              uuid,
    user_id             uuid,
    key_label           text,
    mode                text    NOT NULL CHECK (mode IN ('local', 'upstream')),
    processing_status   text    NOT NULL CHECK (processing_status IN ('in_progress', 'canceling', 'ended')),
    request_count       bigint NOT NULL CHECK (request_count >= 0),
    succeeded_count     bigint NOT NULL DEFAULT 0,
    errored_count       bigint NOT NULL DEFAULT 0,
    canceled_count      bigint NOT NULL DEFAULT 0,
    expired_count       bigint NOT NULL DEFAULT 0,
    reserved_micro_usd  bigint NOT NULL DEFAULT 0,
    created_at          timestamptz NOT NULL,
    expires_at          timestamptz NOT NULL,
    ended_at            timestamptz,
    cancel_initiated_at timestamptz,
    archived_at         timestamptz,
    results_until       timestamptz NOT NULL,
    upstream_synced_at  timestamptz
);
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
    batch_id        text    NOT NULL REFERENCES message_batches (id) ON DELETE CASCADE,
    idx             bigint NOT NULL,
    custom_id       text    NOT NULL,
    team_key        text    NOT NULL,
    params          text    NOT NULL,
    worst_micro_usd bigint NOT NULL DEFAULT 0,
    state           text    NOT NULL CHECK (state IN ('queued', 'running', 'succeeded', 'errored', 'canceled', 'expired')),
    attempts        bigint NOT NULL DEFAULT 0,
    not_before      timestamptz NOT NULL,
    lease_until     timestamptz,
    maybe_duplicate boolean NOT NULL DEFAULT false,
    last_error      text,
    result          text,
    counted_as      text,
    completed_at    timestamptz,
    CONSTRAINT batch_items_pkey PRIMARY KEY (batch_id, idx),
    CONSTRAINT batch_items_custom_id_key UNIQUE (batch_id, custom_id)
);
CREATE INDEX batch_items_ready_idx ON batch_items (state, team_key, not_before);

-- batch_dead_letters: items that ran out of attempts on retryable failures, with the last error.
CREATE TABLE batch_dead_letters (
    id           uuid    NOT NULL PRIMARY KEY,
    batch_id     text    NOT NULL,
    idx          bigint NOT NULL,
    custom_id    text    NOT NULL,
    team_id      uuid,
    key_id       uuid,
    attempts     bigint NOT NULL,
    last_status  bigint,
    last_error   text    NOT NULL,
    created_at   timestamptz NOT NULL,
    replayed_at  timestamptz,
    replay_count bigint NOT NULL DEFAULT 0
);
CREATE INDEX batch_dead_letters_created_idx ON batch_dead_letters (created_at, id);
CREATE INDEX batch_dead_letters_batch_idx ON batch_dead_letters (batch_id, created_at);
