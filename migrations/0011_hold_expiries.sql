-- The hold expiry worker's range scan (event_store::holds::lapsed): holds by expiry, as the
-- text of their first event's `expires_at` (stored to the second, so text order is time order).
CREATE INDEX events_hold_expiry
    ON events ((payload->'HoldPlaced'->>'expires_at'))
    WHERE aggregate_type = 'hold' AND event_type = 'HoldPlaced';
