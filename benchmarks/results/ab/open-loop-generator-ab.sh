#!/bin/bash
# A/B: the open-loop load generator of `loupe bench serve`. Before (0d0d633): one OS thread
# paces the schedule and spawns a task per request on the clients' runtime. After: one driver
# task per connection releases its share on tokio's timer and polls its calls in flight
# itself. Both binaries, alternated, against one separate `loupe serve` on the 1M store
# (caches on by default; CACHES=off turns them off), closed loop at 64 clients, then open
# loop at half of that.
# Logs: 2026-12-02-open-loop-generator-ab-caches-{on,off}.txt.
set -u
BEFORE=${BEFORE:-/work/target/loupe-before}; AFTER=${AFTER:-/work/target/release/loupe}
STORE=${STORE:-/work/target/bench-store-1m}
find $STORE -type f -exec cat {} + > /dev/null
if [ "${CACHES:-on}" = off ]; then export LOUPE_DASHBOARD_CACHE_BYTES=0 LOUPE_SEARCH_CACHE_BYTES=0; fi
$AFTER serve --store $STORE --no-model --addr 127.0.0.1:50077 > /tmp/serve.log 2>&1 &
SERVER=$!
for i in $(seq 60); do grep -q serving /tmp/serve.log && break; sleep 0.5; done
for round in 1 2 3; do
  for side in before after; do
    bin=$AFTER; [ $side = before ] && bin=$BEFORE
    echo "== round $round $side"
    $bin bench serve --server http://127.0.0.1:50077 --synthetic-only --calls ${CALLS:-search,feature} --clients 64 --seconds 4 --open-loop 0.5 2>&1 | grep -E "open loop at|64 clients"
  done
done
kill $SERVER
