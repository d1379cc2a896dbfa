-- The model each item of an upstream-mode batch asked (its `params.model` as written), kept from
-- the batch's creation (written in the transaction that inserts its message_batches row) until it
-- ends, so the usage records of its results name the model asked as well as the model that
-- answered. Compact for the usual batch of one model: the row with custom_id '' (never a valid
-- custom_id, which is 1-64 characters) holds the model most items asked, and only items that
-- asked another (model NULL: none, or not a string) have rows of their own. A batch without rows
-- (created before this table, or whose items named no model) falls back to the answering model.
-- Rows go with their batch: deleted when it ends, and by the cascade should its row go first.
CREATE TABLE upstream_item_models (
    batch_id  TEXT NOT NULL REFERENCES message_batches (id) ON DELETE CASCADE,
    custom_id TEXT NOT NULL,
    model     TEXT CHECK (length(model) <= 200),
    CONSTRAINT upstream_item_models_pkey PRIMARY KEY (batch_id, custom_id)
) STRICT;
