#!/bin/bash
# A/B: `limits.pin_workers` (LOUPE_PIN_WORKERS). A fresh separate `loupe serve` on the 1M
# store per side and round, pinned and not alternated, each measured by the same `loupe bench
# serve` on the same two cores: closed loop at 64 clients, then open loop at half of that
# (caches on by default; CACHES=off turns them off). What is compared is the open loop's p99
# and p99.9: the stalls of a server whose two async workers the kernel left on one vCPU.
# SIDES gives the values compared (default "false true"; "unset false" compares the default,
# auto since the second run, with pinning off). Logs: 2026-12-02-pin-workers-ab-caches-{on,off}.txt and
# 2026-12-02-pin-workers-auto-ab-caches-{on,off}.txt (SIDES="unset false"), STORE=target/bench-store-1m
# of `loupe bench store --shape wide`.
set -u
BIN=${BIN:-/work/target/release/loupe}
STORE=${STORE:-/work/target/bench-store-1m}
ROUNDS=${ROUNDS:-5}
find $STORE -type f -exec cat {} + > /dev/null
if [ "${CACHES:-on}" = off ]; then export LOUPE_DASHBOARD_CACHE_BYTES=0 LOUPE_SEARCH_CACHE_BYTES=0; fi
for round in $(seq $ROUNDS); do
  for pin in ${SIDES:-false true}; do
    if [ "$pin" = unset ]; then unset LOUPE_PIN_WORKERS; else export LOUPE_PIN_WORKERS=$pin; fi
    $BIN serve --store $STORE --no-model --addr 127.0.0.1:50077 > /tmp/serve.log 2>&1 &
    server=$!
    for i in $(seq 120); do grep -q "async workers" /tmp/serve.log && break; sleep 0.5; done
    echo "== round $round pin_workers=$pin: $(grep "async workers" /tmp/serve.log)"
    $BIN bench serve --server http://127.0.0.1:50077 --synthetic-only --calls ${CALLS:-search,feature} --clients 64 --seconds ${SECONDS_EACH:-6} --open-loop 0.5 2>&1 | grep -E "open loop at|64 clients"
    kill $server; wait $server 2>/dev/null
  done
done
