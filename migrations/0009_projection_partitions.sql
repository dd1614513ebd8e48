-- Partitioned projections (docs/design/partitioned-projections.md): each projection's work is
-- split by aggregate id into partitions of the events stream, each with its own durable
-- consumer, apply lock and checkpoint. The checkpoint moves to one row per (projection,
-- partition), advanced in the same transaction as the rows that partition applied, so
-- partitions commit in parallel without contending on one checkpoint row.
ALTER TABLE projection_checkpoints RENAME TO projection_partition_checkpoints;
ALTER TABLE projection_partition_checkpoints RENAME CONSTRAINT projection_checkpoints_pkey
    TO projection_partition_checkpoints_pkey;
-- The one row a projection had so far becomes its partition 0: its counts still add up.
ALTER TABLE projection_partition_checkpoints ADD COLUMN partition integer NOT NULL DEFAULT 0
    CHECK (partition >= 0);
ALTER TABLE projection_partition_checkpoints DROP CONSTRAINT projection_partition_checkpoints_pkey;
ALTER TABLE projection_partition_checkpoints ADD PRIMARY KEY (projection, partition);

-- Per projection, as readers (figures, `tally projections status`, the lag in seconds) knew
-- it: the counts summed over partitions, the furthest stream position any partition reached,
-- and the latest commit.
CREATE VIEW projection_checkpoints AS
SELECT projection,
       max(stream_sequence)         AS stream_sequence,
       sum(events_applied)::bigint  AS events_applied,
       max(updated_at)              AS updated_at,
       sum(events_dropped)::bigint  AS events_dropped
FROM projection_partition_checkpoints
GROUP BY projection;
