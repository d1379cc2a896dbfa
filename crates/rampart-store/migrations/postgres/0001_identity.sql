-- Identity and access, PostgreSQL flavour. Same tables, columns and constraint names as the SQLite
-- migration; native types where PostgreSQL has them (uuid, timestamptz, bytea, jsonb, boolean).

CREATE TABLE teams (
    id          uuid        NOT NULL PRIMARY KEY,
    name        text        NOT NULL,
    disabled    boolean     NOT NULL DEFAULT false,
    created_at  timestamptz NOT NULL,
    CONSTRAINT teams_name_key UNIQUE (name)
);

CREATE TABLE users (
    id            uuid        NOT NULL PRIMARY KEY,
    email         text        NOT NULL,
    password_hash text        NOT NULL,
    role          text        NOT NULL CHECK (role IN ('admin', 'team_admin', 'developer', 'viewer', 'auditor')),
    team_id       uuid        REFERENCES teams (id),
    disabled      boolean     NOT NULL DEFAULT false,
    created_at    timestamptz NOT NULL,
    updated_at    timestamptz NOT NULL
);
CREATE UNIQUE INDEX users_email_lower_key ON users (lower(email));
CREATE INDEX users_team_id_idx ON users (team_id);

CREATE TABLE api_keys (
    id                uuid        NOT NULL PRIMARY KEY,
    team_id           uuid        NOT NULL REFERENCES teams (id),
    user_id           uuid        REFERENCES users (id),
    name              text        NOT NULL,
    prefix            text        NOT NULL,
    key_hash          bytea       NOT NULL,
    allowed_models    jsonb       NOT NULL DEFAULT '[]' CHECK (jsonb_typeof(allowed_models) = 'array'),
    allowed_endpoints jsonb       NOT NULL DEFAULT '[]' CHECK (jsonb_typeof(allowed_endpoints) = 'array'),
    expires_at        timestamptz,
    enabled           boolean     NOT NULL DEFAULT true,
    created_at        timestamptz NOT NULL,
    last_used_at      timestamptz,
    rotated_from      uuid        REFERENCES api_keys (id),
    revoked_at        timestamptz,
    CONSTRAINT api_keys_key_hash_key UNIQUE (key_hash)
);
CREATE INDEX api_keys_team_id_idx ON api_keys (team_id);
CREATE INDEX api_keys_user_id_idx ON api_keys (user_id);

CREATE TABLE upstream_credentials (
    id          uuid        NOT NULL PRIMARY KEY,
    name        text        NOT NULL,
    ciphertext  bytea       NOT NULL,
    nonce       bytea       NOT NULL,
    key_id      text        NOT NULL,
    created_at  timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL,
    CONSTRAINT upstream_credentials_name_key UNIQUE (name)
);

CREATE TABLE refresh_tokens (
    id          uuid        NOT NULL PRIMARY KEY,
    family_id   uuid        NOT NULL,
    user_id     uuid        NOT NULL REFERENCES users (id),
    token_hash  bytea       NOT NULL,
    issued_at   timestamptz NOT NULL,
    expires_at  timestamptz NOT NULL,
    spent_at    timestamptz,
    revoked_at  timestamptz,
    CONSTRAINT refresh_tokens_token_hash_key UNIQUE (token_hash)
);
CREATE INDEX refresh_tokens_family_id_idx ON refresh_tokens (family_id);
CREATE INDEX refresh_tokens_user_id_idx ON refresh_tokens (user_id);

CREATE TABLE revoked_jti (
    jti         text        NOT NULL PRIMARY KEY,
    expires_at  timestamptz NOT NULL
);
CREATE INDEX revoked_jti_expires_at_idx ON revoked_jti (expires_at);

-- Tamper-evident audit chain (see rampart_store::chain). details is text, not jsonb, because the
-- hash covers its exact bytes and jsonb would reorder keys and normalise numbers.
CREATE TABLE audit_log (
    seq          bigint      NOT NULL PRIMARY KEY CHECK (seq > 0),
    at           timestamptz NOT NULL,
    actor        text        NOT NULL,
    action       text        NOT NULL,
    target       text        NOT NULL,
    outcome      text        NOT NULL CHECK (outcome IN ('success', 'failure', 'denied')),
    client_addr  text,
    request_id   text,
    details      text        NOT NULL,
    prev_hash    bytea       NOT NULL,
    hash         bytea       NOT NULL
);
CREATE INDEX audit_log_actor_idx ON audit_log (actor, seq);
CREATE INDEX audit_log_action_idx ON audit_log (action, seq);
CREATE INDEX audit_log_at_idx ON audit_log (at);
