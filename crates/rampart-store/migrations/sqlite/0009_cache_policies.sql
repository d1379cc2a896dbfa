-- Caching policy per key and per team (the response cache and prompt-cache breakpoints), set
-- through the admin API and the CLI. A NULL field inherits: a key's from its team, a team's from
-- the server's configuration. A row with every field NULL is never kept (the repository deletes
-- it). Writes move directory_version so every instance reloads its key directory.
CREATE TABLE cache_policies (
    scope               TEXT    NOT NULL CHECK (scope IN ('key', 'team')),
    scope_id            BLOB    NOT NULL,
    response_enabled    INTEGER CHECK (response_enabled IN (0, 1)),
    ttl_secs            INTEGER CHECK (ttl_secs BETWEEN 1 AND 2592000),
    breakpoints_enabled INTEGER CHECK (breakpoints_enabled IN (0, 1)),
    updated_at          INTEGER NOT NULL,
    CONSTRAINT cache_policies_pkey PRIMARY KEY (scope, scope_id)
) STRICT, WITHOUT ROWID;

CREATE TRIGGER cache_policies_directory_insert AFTER INSERT ON cache_policies
BEGIN UPDATE directory_version SET version = version + 1; END;
CREATE TRIGGER cache_policies_directory_update AFTER UPDATE ON cache_policies
BEGIN UPDATE directory_version SET version = version + 1; END;
CREATE TRIGGER cache_policies_directory_delete AFTER DELETE ON cache_policies
BEGIN UPDATE directory_version SET version = version + 1; END;
