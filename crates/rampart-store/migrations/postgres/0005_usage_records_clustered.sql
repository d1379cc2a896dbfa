-- No index on request_id (see the SQLite migration): one B-tree fewer per ledger insert. A
-- PostgreSQL table is a heap with its primary-key index already, so nothing else changes.
DROP INDEX usage_records_request_id_idx;
