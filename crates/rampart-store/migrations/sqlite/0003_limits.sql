-- Limits and budgets per key and per team (with the team's defaults for its keys), and a version
-- number that changes with every write the key directory cares about, so instances notice a
-- change with one cheap read instead of reloading every key.

CREATE TABLE key_limits (
    key_id         BLOB    NOT NULL PRIMARY KEY REFERENCES api_keys (id),
    rpm            INTEGER CHECK (rpm > 0),
    itpm           INTEGER CHECK (itpm > 0),
    otpm           INTEGER CHECK (otpm > 0),
    concurrency    INTEGER CHECK (concurrency > 0),
    budget_micros  INTEGER CHECK (budget_micros > 0),
    budget_period  TEXT    CHECK (budget_period IN ('day', 'month')),
    updated_at     INTEGER NOT NULL,
    CONSTRAINT key_limits_budget_pair CHECK ((budget_micros IS NULL) = (budget_period IS NULL))
) STRICT;

CREATE TABLE team_limits (
    team_id            BLOB    NOT NULL PRIMARY KEY REFERENCES teams (id),
    rpm                INTEGER CHECK (rpm > 0),
    itpm               INTEGER CHECK (itpm > 0),
    otpm               INTEGER CHECK (otpm > 0),
    concurrency        INTEGER CHECK (concurrency > 0),
    budget_micros      INTEGER CHECK (budget_micros > 0),
    budget_period      TEXT    CHECK (budget_period IN ('day', 'month')),
    key_rpm            INTEGER CHECK (key_rpm > 0),
    key_itpm           INTEGER CHECK (key_itpm > 0),
    key_otpm           INTEGER CHECK (key_otpm > 0),
    key_concurrency    INTEGER CHECK (key_concurrency > 0),
    key_budget_micros  INTEGER CHECK (key_budget_micros > 0),
    key_budget_period  TEXT    CHECK (key_budget_period IN ('day', 'month')),
    updated_at         INTEGER NOT NULL,
    CONSTRAINT team_limits_budget_pair CHECK ((budget_micros IS NULL) = (budget_period IS NULL)),
    CONSTRAINT team_limits_key_budget_pair CHECK ((key_budget_micros IS NULL) = (key_budget_period IS NULL))
) STRICT;

CREATE TABLE directory_version (
    id       INTEGER NOT NULL PRIMARY KEY CHECK (id = 1),
    version  INTEGER NOT NULL
) STRICT;
INSERT INTO directory_version (id, version) VALUES (1, 1);

CREATE TRIGGER teams_directory_insert AFTER INSERT ON teams
BEGIN UPDATE directory_version SET version = version + 1; END;
CREATE TRIGGER teams_directory_update AFTER UPDATE ON teams
BEGIN UPDATE directory_version SET version = version + 1; END;
CREATE TRIGGER teams_directory_delete AFTER DELETE ON teams
BEGIN UPDATE directory_version SET version = version + 1; END;
CREATE TRIGGER api_keys_directory_insert AFTER INSERT ON api_keys
BEGIN UPDATE directory_version SET version = version + 1; END;
-- Not last_used_at: recording key use must not make every instance reload.
CREATE TRIGGER api_keys_directory_update AFTER UPDATE OF team_id, user_id, name, prefix, key_hash,
    allowed_models, allowed_endpoints, expires_at, enabled, rotated_from, revoked_at ON api_keys
BEGIN UPDATE directory_version SET version = version + 1; END;
CREATE TRIGGER api_keys_directory_delete AFTER DELETE ON api_keys
BEGIN UPDATE directory_version SET version = version + 1; END;
CREATE TRIGGER key_limits_directory_insert AFTER INSERT ON key_limits
BEGIN UPDATE directory_version SET version = version + 1; END;
CREATE TRIGGER key_limits_directory_update AFTER UPDATE ON key_limits
BEGIN UPDATE directory_version SET version = version + 1; END;
CREATE TRIGGER key_limits_directory_delete AFTER DELETE ON key_limits
BEGIN UPDATE directory_version SET version = version + 1; END;
CREATE TRIGGER team_limits_directory_insert AFTER INSERT ON team_limits
BEGIN UPDATE directory_version SET version = version + 1; END;
CREATE TRIGGER team_limits_directory_update AFTER UPDATE ON team_limits
BEGIN UPDATE directory_version SET version = version + 1; END;
CREATE TRIGGER team_limits_directory_delete AFTER DELETE ON team_limits
BEGIN UPDATE directory_version SET version = version + 1; END;
