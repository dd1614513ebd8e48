-- The tamper-evident chain (design §5): each event row holds
-- sha256(previous row's hash || canonical bytes of this event), per aggregate, written by the
-- command-service in the same statement as the event. ARCHITECTURE.md ("Hash chain") defines
-- the canonical bytes. NULL only for rows written before this migration; `tally audit verify`
-- reports such rows as unchained.
ALTER TABLE events ADD COLUMN hash bytea CHECK (hash IS NULL OR octet_length(hash) = 32);
