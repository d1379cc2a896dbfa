-- Identity and access, SQLite flavour.
-- Conventions: ids are UUIDv7 stored as 16-byte BLOBs; timestamps are INTEGER microseconds since the
-- Unix epoch (UTC) so that comparisons are numeric; booleans are INTEGER 0/1; JSON is TEXT.
-- Tables are STRICT so a wrongly typed bind fails instead of being stored as something else.

CREATE TABLE teams (
    id          BLOB    NOT NULL PRIMARY KEY,
    name        TEXT    NOT NULL,
    disabled    INTEGER NOT NULL DEFAULT 0 CHECK (disabled IN (0, 1)),
    created_at  INTEGER NOT NULL,
    CONSTRAINT teams_name_key UNIQUE (name)
) STRICT;

CREATE TABLE users (
    id            BLOB    NOT NULL PRIMARY KEY,
    email         TEXT    NOT NULL,
    password_hash TEXT    NOT NULL,
    role          TEXT    NOT NULL CHECK (role IN ('admin', 'team_admin', 'developer', 'viewer', 'auditor')),
    team_id       BLOB    REFERENCES teams (id),
    disabled      INTEGER NOT NULL DEFAULT 0 CHECK (disabled IN (0, 1)),
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL
) STRICT;
CREATE UNIQUE INDEX users_email_lower_key ON users (lower(email));
CREATE INDEX users_team_id_idx ON users (team_id);

CREATE TABLE api_keys (
    id                BLOB    NOT NULL PRIMARY KEY,
    team_id           BLOB    NOT NULL REFERENCES teams (id),
    user_id           BLOB    REFERENCES users (id),
    name              TEXT    NOT NULL,
    prefix            TEXT    NOT NULL,
    key_hash          BLOB    NOT NULL,
    allowed_models    TEXT    NOT NULL DEFAULT '[]' CHECK (json_type(allowed_models) = 'array'),
    allowed_endpoints TEXT    NOT NULL DEFAULT '[]' CHECK (json_type(allowed_endpoints) = 'array'),
    expires_at        INTEGER,
    enabled           INTEGER NOT NULL DEFAULT 1 CHECK (enabled IN (0, 1)),
    created_at        INTEGER NOT NULL,
    last_used_at      INTEGER,
    rotated_from      BLOB    REFERENCES api_keys (id),
    revoked_at        INTEGER,
    CONSTRAINT api_keys_key_hash_key UNIQUE (key_hash)
) STRICT;
CREATE INDEX api_keys_team_id_idx ON api_keys (team_id);
CREATE INDEX api_keys_user_id_idx ON api_keys (user_id);

CREATE TABLE upstream_credentials (
    id          BLOB    NOT NULL PRIMARY KEY,
    name        TEXT    NOT NULL,
    ciphertext  BLOB    NOT NULL,
    nonce       BLOB    NOT NULL,
    key_id      TEXT    NOT NULL,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL,
    CONSTRAINT upstream_credentials_name_key UNIQUE (name)
) STRICT;

CREATE TABLE refresh_tokens (
    id          BLOB    NOT NULL PRIMARY KEY,
    family_id   BLOB    NOT NULL,
    user_id     BLOB    NOT NULL REFERENCES users (id),
    token_hash  BLOB    NOT NULL,
    issued_at   INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    spent_at    INTEGER,
    revoked_at  INTEGER,
    CONSTRAINT refresh_tokens_token_hash_key UNIQUE (token_hash)
) STRICT;
CREATE INDEX refresh_tokens_family_id_idx ON refresh_tokens (family_id);
CREATE INDEX refresh_tokens_user_id_idx ON refresh_tokens (user_id);

CREATE TABLE revoked_jti (
    jti         TEXT    NOT NULL PRIMARY KEY,
    expires_at  INTEGER NOT NULL
) STRICT;
CREATE INDEX revoked_jti_expires_at_idx ON revoked_jti (expires_at);

-- Tamper-evident audit chain: hash = SHA-256 over the canonical encoding of the row and prev_hash
-- (see rampart_store::chain). seq is assigned by the appender under the write lock, never by SQLite.
CREATE TABLE audit_log (
    seq          INTEGER NOT NULL PRIMARY KEY CHECK (seq > 0),
    at           INTEGER NOT NULL,
    actor        TEXT    NOT NULL,
    action       TEXT    NOT NULL,
    target       TEXT    NOT NULL,
    outcome      TEXT    NOT NULL CHECK (outcome IN ('success', 'failure', 'denied')),
    client_addr  TEXT,
    request_id   TEXT,
    details      TEXT    NOT NULL,
    prev_hash    BLOB    NOT NULL,
    hash         BLOB    NOT NULL
) STRICT;
CREATE INDEX audit_log_actor_idx ON audit_log (actor, seq);
CREATE INDEX audit_log_action_idx ON audit_log (action, seq);
CREATE INDEX audit_log_at_idx ON audit_log (at);
