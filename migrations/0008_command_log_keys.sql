-- A command id is bound to the sender that used it first and to that command (issue 21): the
-- token subject (`actor`) and `fingerprint` = sha256 of the canonical command (aggregate, name,
-- canonical JSON body; see `command-service/src/repository/idempotency.rs`). A later use of
-- the id gets the logged reply only when both match, else `idempotency_mismatch`.
--
-- Nullable and without default, so adding them rewrites nothing and rows logged before keep
-- their meaning: a row without a fingerprint answers any later use of its id, as it always did.
ALTER TABLE command_log
    ADD COLUMN actor text,
    ADD COLUMN fingerprint bytea;
