#!/bin/bash
# A/B of the command path: the same stack (./dev up --detach) with the services' release
# binaries of the base commit (f024942) and of this change, alternating, the same load
# generator for both. Bounded: 3 rounds x 2 variants x (mix 10 s + hot 10 s).
set -u
cd /work/main
out=/tmp/ab; mkdir -p $out
PG_PORT=15432; NATS_PORT=14222; HTTP_ADDR=127.0.0.1:8480
run() { # variant round
  local v=$1 r=$2
  local attempt ok
  for attempt in 1 2; do
    ./dev down >/dev/null 2>&1
    for b in command-service projections process-manager query-service; do cp /tmp/$v-bin/$b target/release/$b; done
    ./dev up --detach > $out/up-$v-$r.log 2>&1 || { echo "up failed $v $r"; return; }
    ok=1
    for b in command-service projections process-manager query-service; do
      cmp -s /tmp/$v-bin/$b target/release/$b || ok=0
    done
    [ "$ok" = 1 ] && break
    echo "($v $r: cargo rebuilt a service; starting again with the $v binaries)"
  done
  [ "$ok" = 1 ] || { echo "SKIPPED $v $r: not the $v binaries"; return; }
  (
    eval "$(./dev env)"
    export TALLY_NATS_URL="nats://127.0.0.1:$NATS_PORT" TALLY_HTTP_URL="http://$HTTP_ADDR" \
      TALLY_DATABASE_URL="postgres://tally:tally@127.0.0.1:$PG_PORT/tally" TALLY_DEV_RUN_DIR="$PWD/.dev/run"
    timeout 600 /tmp/base-bin/tally-bench commands --hot
  ) > $out/bench-$v-$r.log 2>&1
  echo "$v $r done: $(grep -E 'commands/s|accepted' $out/bench-$v-$r.log | head -3 | tr '\n' ' ')"
}
for r in ${ROUNDS:-1 2 3}; do if [ "${NEW_FIRST:-0}" = 1 ]; then run new $r; run base $r; else run base $r; run new $r; fi; done
./dev down >/dev/null 2>&1
echo finished
