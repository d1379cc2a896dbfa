-- Caching policy per key and per team, PostgreSQL flavour (see the SQLite migration).
CREATE TABLE cache_policies (
    scope               text        NOT NULL CHECK (scope IN ('key', 'team')),
    scope_id            uuid        NOT NULL,
    response_enabled    boolean,
    ttl_secs            bigint      CHECK (ttl_secs BETWEEN 1 AND 2592000),
    breakpoints_enabled boolean,
    updated_at          timestamptz NOT NULL,
    CONSTRAINT cache_policies_pkey PRIMARY KEY (scope, scope_id)
);

CREATE TRIGGER cache_policies_directory AFTER INSERT OR UPDATE OR DELETE ON cache_policies
    FOR EACH STATEMENT EXECUTE FUNCTION bump_directory_version();
