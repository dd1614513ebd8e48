-- The change feed (docs/feed.md): where each account change stands in its projection partition's
-- apply order, so a feed over many accounts can resume exactly where a client left it.
--
-- feed_position = the partition's count of applied events when the event was applied (1-based):
-- strictly increasing in the order one partition's single writer commits, so a reader that
-- sees a position sees every smaller one of that partition. NULL where the order is not known (rows
-- written by a rebuild, or by the release of a dead-lettered event): such rows are never replayed by
-- position, only delivered live.
ALTER TABLE accounts ADD COLUMN feed_partition integer, ADD COLUMN feed_position bigint;
ALTER TABLE account_entries ADD COLUMN feed_partition integer, ADD COLUMN feed_position bigint;
-- Resuming an owner's feed reads, per partition, the entries after the client's position.
CREATE INDEX account_entries_by_feed_position ON account_entries (feed_partition, feed_position)
    WHERE feed_position IS NOT NULL;
