-- pg_auto_failover monitor settings for Tally (run on the monitor, database pg_auto_failover):
--   psql "postgres://...@pg-monitor.tally.internal/pg_auto_failover?sslmode=verify-full" -f monitor-settings.sql
-- Defaults: checks every 5 s, unhealthy after 20 s, 30 s waiting for a lost primary to demote
-- itself: about 50 s from a crash to a writable standby. These halve it while keeping the
-- order that prevents two primaries: the monitor waits primary_demote_timeout (15 s) before
-- promoting, longer than a cut-off primary's keeper needs to demote itself
-- (timeout.network_partition_timeout = 10 s on the nodes, node-settings.sh).
-- The dev cluster (./dev up --cluster) uses far shorter values on loopback: 7 s measured.
ALTER SYSTEM SET pgautofailover.health_check_period = 2000;          -- ms between checks
ALTER SYSTEM SET pgautofailover.health_check_timeout = 2000;         -- ms to connect
ALTER SYSTEM SET pgautofailover.health_check_max_retries = 2;
ALTER SYSTEM SET pgautofailover.health_check_retry_delay = 1000;     -- ms
ALTER SYSTEM SET pgautofailover.node_considered_unhealthy_timeout = 10000;  -- ms without a keeper report
ALTER SYSTEM SET pgautofailover.primary_demote_timeout = 15000;      -- ms: > network_partition_timeout
ALTER SYSTEM SET pgautofailover.startup_grace_period = 10000;        -- ms after a monitor restart
SELECT pg_reload_conf();
