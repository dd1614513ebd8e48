# Sourced by ./dev: the cluster topology (./dev up --cluster, ./dev cluster; docs/cluster.md).
# Uses the variables and helpers ./dev defines before sourcing it.
# shellcheck shell=bash

topology() { cat "$RUN/topology" 2>/dev/null || true; }

nats_password_env() { # one NAME=value per NATS user, for deploy/nats-server.conf's $variables
    ensure_secrets
    local user
    for user in "${NATS_USERS[@]}"; do echo "$(nats_password_var "$user")=$(cat "$DEV/secrets/nats-$user")"; done
}

cluster_nats_urls() {
    local name urls=()
    for name in "${NATS_NODES[@]}"; do urls+=("nats://127.0.0.1:$(nats_node_port "$name")"); done
    (IFS=,; echo "${urls[*]}")
}

start_nats_node() { # $1 = nats-1|nats-2|nats-3; returns without waiting (wait_nats_node)
    local name="$1" pidf="$RUN/$1.pid" other routes=()
    if pid_alive "$pidf"; then return; fi
    mkdir -p "$DEV/$name" "$RUN" "$LOGS"
    for other in "${NATS_NODES[@]}"; do
        [ "$other" = "$name" ] || routes+=("nats://127.0.0.1:$(nats_node_route_port "$other")")
    done
    local -a env; mapfile -t env < <(nats_password_env)
    # Same users and permissions as a single server; the cluster by flags. Routes are plain text
    # and without route users: loopback dev only (deploy/nats/ has TLS and route credentials).
    env "${env[@]}" "$BIN/nats-server" -c "$ROOT/deploy/nats-server.conf" -js -a 127.0.0.1 \
        -n "$name" -p "$(nats_node_port "$name")" -m "$(nats_node_monitor_port "$name")" \
        -sd "$DEV/$name" --cluster_name tally \
        --cluster "nats://127.0.0.1:$(nats_node_route_port "$name")" \
        --routes "$(IFS=,; echo "${routes[*]}")" -P "$pidf" >>"$LOGS/$name.log" 2>&1 &
    echo $! >"$pidf"
}

wait_nats_node() { # $1 = name; ready once it is in the JetStream cluster and current
    wait_until 60 http_ok "http://127.0.0.1:$(nats_node_monitor_port "$1")/healthz" \
        || die "$1 did not become healthy; see $LOGS/$1.log"
}

# pg_auto_failover: a monitor and two keepers (`pg_autoctl run`), each supervising its
# PostgreSQL. Every pg_autoctl/psql call goes through pgaf: as `nobody` when we are root
# (setpriv execs, so a background job's $! is pg_autoctl itself), with pg_autoctl's HOME and XDG
# folders (its configuration and state) and the sockets under the state folder.
pgaf_dir() { echo "$(pg_dir)/cluster"; }
pgaf() {
    local c bindir; c="$(pgaf_dir)"; bindir="$(find_pg_bindir)"
    local -a pre=() as=()
    # A keeper leads its own process group (its PostgreSQL included): `cluster kill` kills it whole.
    if [ "$(id -u)" -eq 0 ]; then as=(setpriv --reuid=nobody --regid="$(id -g nobody)" --clear-groups); fi
    # Run in the background (`&`) with PGAF_SETSID=1, it execs: $! is then pg_autoctl's pid.
    if [ "${PGAF_SETSID:-0}" = 1 ]; then pre=(exec setsid); fi
    "${pre[@]}" "${as[@]}" env HOME="$c/home" XDG_CONFIG_HOME="$c/home/config" \
        XDG_DATA_HOME="$c/home/data" XDG_RUNTIME_DIR="$c/home/run" PG_CONFIG="$bindir/pg_config" \
        PATH="$bindir:$PATH" PG_REGRESS_SOCK_DIR="$c/sock" PGHOST="$c/sock" PGCONNECT_TIMEOUT=3 "$@"
}
pgaf_psql() { # $1 = port, $2 = database, then psql arguments (as the local superuser, by socket)
    local port="$1" db="$2"; shift 2
    pgaf "$(find_pg_bindir)/psql" -h "$(pgaf_dir)/sock" -p "$port" -d "$db" -v ON_ERROR_STOP=1 -qAt "$@"
}
pg_node_data() { if [ "$1" = pg-monitor ]; then echo "$(pgaf_dir)/monitor"; else echo "$(pgaf_dir)/$1"; fi; }
pg_node_port_of() { if [ "$1" = pg-monitor ]; then echo "$PG_MONITOR_PORT"; else pg_node_port "$1"; fi; }
pg_monitor_uri() { echo "postgres://autoctl_node@127.0.0.1:$PG_MONITOR_PORT/pg_auto_failover?sslmode=disable"; }
monitor_sql() { pgaf_psql "$PG_MONITOR_PORT" pg_auto_failover -c "$1"; }
pg_accepts() { pgaf_psql "$1" postgres -c 'SELECT 1' >/dev/null 2>&1; }

# The services' URL: libpq's multi-host form, the pool follows whichever node is primary.
cluster_db_url() {
    echo "postgres://tally:tally@127.0.0.1:$(pg_node_port pg-1),127.0.0.1:$(pg_node_port pg-2)/tally?target_session_attrs=read-write"
}

pgaf_prepare_dirs() {
    local c; c="$(pgaf_dir)"
    mkdir -p "$(pg_dir)" "$RUN" "$LOGS"
    if [ "$(id -u)" -eq 0 ]; then chown nobody "$(pg_dir)"; fi
    [ -d "$c/sock" ] || pgaf mkdir -p "$c/home/config" "$c/home/data" "$c/home/run" "$c/sock"
}

# Failover fast enough for dev and the chaos tests (defaults: 5 s checks, 20 s unhealthy, 30 s
# demote timeout, about 50 s in all). The monitor waits primary_demote_timeout for a lost
# primary before promoting; that must outlast the keeper's network_partition_timeout, after
# which a primary cut off from the monitor and its standby demotes itself: no two primaries.
PGAF_MONITOR_SETTINGS=(
    pgautofailover.health_check_period=1000 pgautofailover.health_check_timeout=1000
    pgautofailover.health_check_max_retries=1 pgautofailover.health_check_retry_delay=500
    pgautofailover.node_considered_unhealthy_timeout=2000
    pgautofailover.primary_demote_timeout=4000 pgautofailover.startup_grace_period=3000
)
PGAF_KEEPER_SETTINGS=(
    timeout.network_partition_timeout=2 timeout.prepare_promotion_catchup=10
    timeout.prepare_promotion_walreceiver=2 timeout.postgresql_restart_failure_timeout=5
)

start_pg_monitor() {
    local c pidf="$RUN/pg-monitor.pid" log="$LOGS/pg-monitor.log"; c="$(pgaf_dir)"
    if pid_alive "$pidf"; then return; fi
    kill_pg_node pg-monitor quiet # a PostgreSQL a killed keeper left behind
    pgaf_prepare_dirs
    if [ ! -f "$c/monitor.created" ]; then
        say "creating the pg_auto_failover monitor ($c/monitor)"
        # --auth trust and --no-ssl: ONLY for this loopback dev topology. Production uses TLS
        # and passwords or certificates (deploy/postgres/README.md).
        pgaf pg_autoctl create monitor --pgdata "$c/monitor" --pgport "$PG_MONITOR_PORT" \
            --listen 127.0.0.1 --hostname 127.0.0.1 --auth trust --no-ssl >>"$log" 2>&1 \
            || die "pg_autoctl create monitor failed; see $log"
        touch "$c/monitor.created"
    fi
    PGAF_SETSID=1 pgaf pg_autoctl run --pgdata "$c/monitor" >>"$log" 2>&1 &
    echo $! >"$pidf"
    wait_until 30 pg_accepts "$PG_MONITOR_PORT" || die "the pg_auto_failover monitor did not start; see $log"
    local setting sql=()
    for setting in "${PGAF_MONITOR_SETTINGS[@]}"; do sql+=(-c "ALTER SYSTEM SET ${setting%%=*} = ${setting#*=}"); done
    pgaf_psql "$PG_MONITOR_PORT" pg_auto_failover "${sql[@]}" -c 'SELECT pg_reload_conf()' >/dev/null
}

start_pg_node() { # $1 = pg-1|pg-2; returns once its keeper runs (wait_pg_nodes waits for roles)
    local name="$1" c pidf="$RUN/$1.pid" log="$LOGS/$1.log" data port
    c="$(pgaf_dir)"; data="$c/$name"; port="$(pg_node_port "$name")"
    if pid_alive "$pidf"; then return; fi
    kill_pg_node "$name" quiet
    pgaf_prepare_dirs
    if [ ! -f "$c/$name.created" ]; then
        say "creating PostgreSQL node $name ($data)"
        # The first node initialises the database, the second clones it (pg_basebackup) and
        # becomes its standby. --auth trust / --no-ssl: loopback dev only, as for the monitor.
        pgaf pg_autoctl create postgres --pgdata "$data" --pgport "$port" --pghost "$c/sock" \
            --listen 127.0.0.1 --hostname 127.0.0.1 --name "$name" --dbname tally \
            --monitor "$(pg_monitor_uri)" --auth trust --no-ssl >>"$log" 2>&1 \
            || die "pg_autoctl create postgres ($name) failed; see $log"
        touch "$c/$name.created"
    fi
    local setting
    for setting in "${PGAF_KEEPER_SETTINGS[@]}"; do
        pgaf pg_autoctl config set --pgdata "$data" "${setting%%=*}" "${setting#*=}" >>"$log" 2>&1
    done
    PGAF_SETSID=1 pgaf pg_autoctl run --pgdata "$data" >>"$log" 2>&1 &
    echo $! >"$pidf"
}

pg_node_state() { # $1 = pg-1|pg-2 -> "<reported> <goal>" from the monitor
    monitor_sql "SELECT reportedstate || ' ' || goalstate FROM pgautofailover.node WHERE nodename = '$1'" 2>/dev/null
}

pg_nodes_settled() { # every node reached its goal and is what the monitor says; one primary
    local name state recovery primaries=0
    for name in "${PG_NODES[@]}"; do
        state="$(pg_node_state "$name")" || return 1
        [ -n "$state" ] && [ "${state% *}" = "${state#* }" ] || return 1
        # The monitor keeps the last reported state across restarts: ask the node too.
        recovery="$(pgaf_psql "$(pg_node_port "$name")" postgres -c 'SELECT pg_is_in_recovery()' 2>/dev/null)" || return 1
        case "${state% *}/$recovery" in
            primary/f|wait_primary/f|single/f) primaries=$((primaries + 1)) ;;
            secondary/t) ;;
            *) return 1 ;;
        esac
    done
    [ "$primaries" -eq 1 ]
}

pg_primary() { # the name of the node that is primary now, by asking each node
    local name
    for name in "${PG_NODES[@]}"; do
        [ "$(pgaf_psql "$(pg_node_port "$name")" postgres -c 'SELECT pg_is_in_recovery()' 2>/dev/null)" = f ] \
            && { echo "$name"; return 0; }
    done
    return 1
}

start_pg_cluster() {
    start_pg_monitor
    local c; c="$(pgaf_dir)"
    # The first node must be primary before the second can clone it.
    if [ ! -f "$c/pg-1.created" ]; then
        start_pg_node pg-1
        wait_until 120 pg_accepts "$(pg_node_port pg-1)" || die "pg-1 did not start; see $LOGS/pg-1.log"
        ensure_tally_role pg-1
    fi
    local name
    for name in "${PG_NODES[@]}"; do start_pg_node "$name"; done
    wait_until 180 pg_nodes_settled \
        || die "the PostgreSQL pair did not settle (primary + secondary); see $LOGS/pg-1.log, $LOGS/pg-2.log and: ./dev cluster ps"
    local primary; primary="$(pg_primary)" || die "no PostgreSQL node is primary"
    ensure_tally_role "$primary"
    say "PostgreSQL pair up: primary $primary; $(pgaf_psql "$(pg_node_port "$primary")" postgres -c 'SHOW synchronous_standby_names' || true) is synchronous"
}

ensure_tally_role() { # $1 = the primary; the role and the database's owner (both replicate)
    local p; p="$(pg_node_port "$1")"
    if [ "$(pgaf_psql "$p" postgres -c "SELECT 1 FROM pg_roles WHERE rolname='tally'")" != 1 ]; then
        pgaf_psql "$p" postgres -c "CREATE ROLE tally LOGIN PASSWORD 'tally'"
    fi
    # pg_autoctl created the database (--dbname tally); the services migrate it as its owner.
    pgaf_psql "$p" postgres -c "ALTER DATABASE tally OWNER TO tally"
}

kill_pg_node() { # $1 = pg-1|pg-2|pg-monitor [quiet]: kill -9 the keeper, its group, the postmaster
    local name="$1" pidf="$RUN/$1.pid" data keeper pm pids=()
    data="$(pg_node_data "$name")"
    if pid_alive "$pidf"; then
        keeper="$(cat "$pidf")"
        # Only a group our keeper leads (started with setsid), never another.
        if [ "$(ps -o pgid= -p "$keeper" 2>/dev/null | tr -d ' ')" = "$keeper" ]; then
            kill -KILL -- "-$keeper" 2>/dev/null || true
        fi
        kill -KILL "$keeper" 2>/dev/null || true
        pids+=("$keeper")
    fi
    # The postmaster, by its own pid file, if it still runs on this data folder, and its children.
    pm="$(head -n1 "$data/postmaster.pid" 2>/dev/null || true)"
    if [[ "$pm" =~ ^[0-9]+$ ]] && ps -o args= -p "$pm" 2>/dev/null | grep -qF -- "$data"; then
        local child
        for child in $(ps -o pid= --ppid "$pm" 2>/dev/null); do kill -KILL "$child" 2>/dev/null || true; pids+=("$child"); done
        kill -KILL "$pm" 2>/dev/null || true
        pids+=("$pm")
    fi
    local pid
    for pid in "${pids[@]}"; do
        for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    done
    rm -f "$pidf"
    if [ "${#pids[@]}" -gt 0 ] && [ "${2:-}" != quiet ]; then say "killed $name (pids ${pids[*]})"; fi
}

stop_pg_node() { # $1 = name: the keeper stops its PostgreSQL (fast shutdown); forced after 30 s
    local name="$1" pidf="$RUN/$1.pid"
    if [ -f "$pidf" ]; then
        local pid; pid="$(cat "$pidf")"
        if pid_alive "$pidf"; then kill -TERM "$pid" 2>/dev/null || true; fi
        for _ in $(seq 1 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        say "stopped $name (pid $pid)"
    fi
    kill_pg_node "$name" quiet
}

stop_pg_cluster() {
    [ -d "$(pgaf_dir)" ] || return 0
    # The monitor first, so that it does not fail over while the nodes go down; then both nodes
    # at once (a primary left alone would demote itself after network_partition_timeout).
    stop_pg_node pg-monitor
    local name pid
    for name in "${PG_NODES[@]}"; do
        pid_alive "$RUN/$name.pid" || continue
        pid="$(cat "$RUN/$name.pid")"
        kill -TERM "$pid" 2>/dev/null || true
    done
    for name in "${PG_NODES[@]}"; do stop_pg_node "$name"; done
}

# Services: instance 1 on the single-node ports, instance 2 ten above.
service_addr() { # $1 = service, $2 = instance -> its ops address (the query-service: HTTP)
    local base
    case "$1" in
        command-service) base=9181 ;; projections) base=9182 ;;
        process-manager) base=9183 ;; query-service) base=8480 ;;
    esac
    echo "127.0.0.1:$(port $((base + ($2 - 1) * 10)))"
}
service_addr_var() {
    case "$1" in
        command-service) echo TALLY_COMMAND_OPS_ADDR ;; projections) echo TALLY_PROJECTIONS_OPS_ADDR ;;
        process-manager) echo TALLY_PROCESS_MANAGER_OPS_ADDR ;; query-service) echo TALLY_HTTP_ADDR ;;
    esac
}

start_cluster_service() { # $1 = service, $2 = instance, $3 = cargo profile; no wait
    local svc="$1" i="$2" pidf="$RUN/$1-$2.pid"
    if pid_alive "$pidf"; then return; fi
    mkdir -p "$RUN" "$LOGS"
    # 8 processes share PostgreSQL's max_connections (100): 10 connections each leave room for
    # pg_autoctl, replication and the CLI.
    env TALLY_DATABASE_URL="$(cluster_db_url)" TALLY_NATS_URL="$(cluster_nats_urls)" \
        TALLY_STREAM_REPLICAS=3 TALLY_DB_POOL_MAX=10 \
        TALLY_AUTH_HS256_SECRET_FILE="$DEV/secrets/jwt-hs256" \
        "$(service_addr_var "$svc")=$(service_addr "$svc" "$i")" \
        TALLY_NATS_USER="$svc" TALLY_NATS_PASSWORD="$(cat "$DEV/secrets/nats-$svc")" \
        "$ROOT/target/$3/$svc" >>"$LOGS/$svc-$i.log" 2>&1 &
    echo $! >"$pidf"
}

wait_cluster_service() { # $1 = service, $2 = instance [quiet]
    local url; url="http://$(service_addr "$1" "$2")/readyz"
    wait_until 90 http_ok "$url" || die "$1-$2 did not become ready; see $LOGS/$1-$2.log"
    [ "${3:-}" = quiet ] || say "$1-$2 ready ($url)"
}

start_cluster() { # $1 = cargo profile
    ensure_secrets
    local name svc i
    for name in "${NATS_NODES[@]}"; do start_nats_node "$name"; done
    for name in "${NATS_NODES[@]}"; do wait_nats_node "$name"; done
    say "NATS cluster up: $(cluster_nats_urls)"
    start_pg_cluster
    # The command-service creates the streams (R3) the others check: it goes first.
    for i in "${INSTANCES[@]}"; do start_cluster_service command-service "$i" "$1"; done
    wait_cluster_service command-service 1 quiet
    for svc in "${SERVICES[@]}"; do for i in "${INSTANCES[@]}"; do start_cluster_service "$svc" "$i" "$1"; done; done
    for svc in "${SERVICES[@]}"; do for i in "${INSTANCES[@]}"; do wait_cluster_service "$svc" "$i"; done; done
}

stop_cluster() {
    local svc i name
    for svc in query-service process-manager projections command-service; do
        for i in "${INSTANCES[@]}"; do stop_pidfile "$svc-$i" "$RUN/$svc-$i.pid"; done
    done
    for name in "${NATS_NODES[@]}"; do stop_pidfile "$name" "$RUN/$name.pid"; done
    stop_pg_cluster
}

cluster_names() { # every process of the cluster, on one line
    local svc i names=("${NATS_NODES[@]}" pg-monitor "${PG_NODES[@]}")
    for svc in "${SERVICES[@]}"; do for i in "${INSTANCES[@]}"; do names+=("$svc-$i"); done; done
    echo "${names[*]}"
}

nats_role() { # $1 = node: leader of the events stream TALLY_EVENTS, or follower (down if it does not answer)
    python3 -c '
import json, sys, urllib.request
name, url = sys.argv[1], sys.argv[2]
with urllib.request.urlopen(url, timeout=2) as response:
    data = json.load(response)
for account in data.get("account_details") or []:
    for stream in account.get("stream_detail") or []:
        if stream.get("name") == "TALLY_EVENTS":
            print("leader" if (stream.get("cluster") or {}).get("leader") == name else "follower")
            sys.exit(0)
print("follower")' "$1" "http://127.0.0.1:$(nats_node_monitor_port "$1")/jsz?accounts=true&streams=true" 2>/dev/null \
        || echo down
}

cluster_role() { # $1 = name
    case "$1" in
        nats-*) if pid_alive "$RUN/$1.pid"; then nats_role "$1"; else echo down; fi ;;
        pg-monitor) if pid_alive "$RUN/$1.pid" && pg_accepts "$PG_MONITOR_PORT"; then echo up; else echo down; fi ;;
        pg-*)
            case "$(pgaf_psql "$(pg_node_port "$1")" postgres -c 'SELECT pg_is_in_recovery()' 2>/dev/null)" in
                f) echo primary ;; t) echo standby ;; *) echo down ;;
            esac ;;
        *)
            local svc="${1%-*}" i="${1##*-}"
            if pid_alive "$RUN/$1.pid" && http_ok "http://$(service_addr "$svc" "$i")/readyz"; then echo up; else echo down; fi ;;
    esac
}

cmd_cluster() {
    local action="${1:-ps}" name="${2:-}"
    [ "$(topology)" = cluster ] || die "no cluster is running (./dev up --cluster)"
    if [ "$action" != ps ]; then
        [ -n "$name" ] || die "usage: ./dev cluster $action <name>   (names: $(cluster_names))"
        [[ " $(cluster_names) " == *" $name "* ]] || die "unknown name $name (names: $(cluster_names))"
    fi
    case "$action" in
        ps)
            for name in $(cluster_names); do
                local pid=-; pid_alive "$RUN/$name.pid" && pid="$(cat "$RUN/$name.pid")"
                echo "$name $pid $(cluster_role "$name")"
            done ;;
        kill)
            case "$name" in
                pg-*) kill_pg_node "$name" ;;
                *)
                    if pid_alive "$RUN/$name.pid"; then
                        local pid; pid="$(cat "$RUN/$name.pid")"
                        kill -KILL "$pid" 2>/dev/null || true
                        for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
                        say "killed $name (pid $pid)"
                    fi
                    rm -f "$RUN/$name.pid" ;;
            esac ;;
        start)
            case "$name" in
                nats-*) start_nats_node "$name"; wait_nats_node "$name" ;;
                pg-monitor) start_pg_monitor ;;
                pg-*)
                    start_pg_node "$name"
                    # A returning node rejoins as standby (pg_rewind if it was the primary).
                    wait_until 120 pg_nodes_settled \
                        || say "warning: $name has not settled yet; see $LOGS/$name.log" ;;
                *)
                    local profile; profile="$(cat "$RUN/profile" 2>/dev/null || echo release)"
                    start_cluster_service "${name%-*}" "${name##*-}" "$profile"
                    wait_cluster_service "${name%-*}" "${name##*-}" ;;
            esac
            echo "$name $(cat "$RUN/$name.pid" 2>/dev/null || echo -) $(cluster_role "$name")" ;;
        *) die "usage: ./dev cluster ps|kill <name>|start <name>" ;;
    esac
}

