-- Limits and budgets per key and per team (with the team's defaults for its keys), and a version
-- number that changes with every write the key directory cares about, so instances notice a
-- change with one cheap read instead of reloading every key. Same tables, columns and constraint
-- names as the SQLite migration.

CREATE TABLE key_limits (
    key_id         uuid        NOT NULL PRIMARY KEY REFERENCES api_keys (id),
    rpm            bigint      CHECK (rpm > 0),
    itpm           bigint      CHECK (itpm > 0),
    otpm           bigint      CHECK (otpm > 0),
    concurrency    bigint      CHECK (concurrency > 0),
    budget_micros  bigint      CHECK (budget_micros > 0),
    budget_period  text        CHECK (budget_period IN ('day', 'month')),
    updated_at     timestamptz NOT NULL,
    CONSTRAINT key_limits_budget_pair CHECK ((budget_micros IS NULL) = (budget_period IS NULL))
);

CREATE TABLE team_limits (
    team_id            uuid        NOT NULL PRIMARY KEY REFERENCES teams (id),
    rpm                bigint      CHECK (rpm > 0),
    itpm               bigint      CHECK (itpm > 0),
    otpm               bigint      CHECK (otpm > 0),
    concurrency        bigint      CHECK (concurrency > 0),
    budget_micros      bigint      CHECK (budget_micros > 0),
    budget_period      text        CHECK (budget_period IN ('day', 'month')),
    key_rpm            bigint      CHECK (key_rpm > 0),
    key_itpm           bigint      CHECK (key_itpm > 0),
    key_otpm           bigint      CHECK (key_otpm > 0),
    key_concurrency    bigint      CHECK (key_concurrency > 0),
    key_budget_micros  bigint      CHECK (key_budget_micros > 0),
    key_budget_period  text        CHECK (key_budget_period IN ('day', 'month')),
    updated_at         timestamptz NOT NULL,
    CONSTRAINT team_limits_budget_pair CHECK ((budget_micros IS NULL) = (budget_period IS NULL)),
    CONSTRAINT team_limits_key_budget_pair CHECK ((key_budget_micros IS NULL) = (key_budget_period IS NULL))
);

CREATE TABLE directory_version (
    id       integer NOT NULL PRIMARY KEY CHECK (id = 1),
    version  bigint  NOT NULL
);
INSERT INTO directory_version (id, version) VALUES (1, 1);

CREATE FUNCTION bump_directory_version() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE directory_version SET version = version + 1;
    RETURN NULL;
END
$$;

CREATE TRIGGER teams_directory AFTER INSERT OR UPDATE OR DELETE ON teams
    FOR EACH STATEMENT EXECUTE FUNCTION bump_directory_version();
CREATE TRIGGER api_keys_directory_insert AFTER INSERT OR DELETE ON api_keys
    FOR EACH STATEMENT EXECUTE FUNCTION bump_directory_version();
-- Not last_used_at: recording key use must not make every instance reload.
CREATE TRIGGER api_keys_directory_update AFTER UPDATE OF team_id, user_id, name, prefix, key_hash,
    allowed_models, allowed_endpoints, expires_at, enabled, rotated_from, revoked_at ON api_keys
    FOR EACH STATEMENT EXECUTE FUNCTION bump_directory_version();
CREATE TRIGGER key_limits_directory AFTER INSERT OR UPDATE OR DELETE ON key_limits
    FOR EACH STATEMENT EXECUTE FUNCTION bump_directory_version();
CREATE TRIGGER team_limits_directory AFTER INSERT OR UPDATE OR DELETE ON team_limits
    FOR EACH STATEMENT EXECUTE FUNCTION bump_directory_version();
