-- The tamper-evident chain (design §5): each event row holds
-- sha256(previous row's hash || canonical bytes of this event), per aggregate, written by the
-- command-service in the same statement as the event. ARCHITECTURE.md ("Hash chain") defines
-- the canonical bytes. NULL only for rows written before this migration (or by an older
-- binary during a rolling upgrade): the command-service hashes them at start.
ALTER TABLE events ADD COLUMN hash bytea CHECK (hash IS NULL OR octet_length(hash) = 32);

-- Finds the rows still to hash without scanning the table (empty once they are done).
CREATE INDEX events_unhashed ON events (aggregate_type, aggregate_id) WHERE hash IS NULL;
