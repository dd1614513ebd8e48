#!/bin/sh
# Keeper timeouts for a Tally PostgreSQL node, matching monitor-settings.sql. Run as the user
# pg_autoctl runs as, once after `pg_autoctl create postgres`, then restart the keeper:
#   PGDATA=/var/lib/postgresql/15/tally sh node-settings.sh
set -eu
: "${PGDATA:?set PGDATA to the node's data directory}"
# A primary that reaches neither the monitor nor its standby for this long demotes itself;
# the monitor waits longer (primary_demote_timeout 15 s) before promoting the standby.
pg_autoctl config set --pgdata "$PGDATA" timeout.network_partition_timeout 10
pg_autoctl config set --pgdata "$PGDATA" timeout.prepare_promotion_catchup 30
pg_autoctl config set --pgdata "$PGDATA" timeout.prepare_promotion_walreceiver 5
pg_autoctl config set --pgdata "$PGDATA" timeout.postgresql_restart_failure_timeout 20
