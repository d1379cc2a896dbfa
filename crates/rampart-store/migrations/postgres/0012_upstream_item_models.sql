-- The model each item of an upstream-mode batch asked, PostgreSQL flavour: the same table,
-- columns and constraint names as the SQLite migration (see there for what each row holds).
CREATE TABLE upstream_item_models (
    batch_id  text NOT NULL REFERENCES message_batches (id) ON DELETE CASCADE,
    custom_id text NOT NULL,
    model     text CHECK (length(model) <= 200),
    CONSTRAINT upstream_item_models_pkey PRIMARY KEY (batch_id, custom_id)
);
