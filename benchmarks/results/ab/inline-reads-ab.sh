#!/bin/bash
# A/B: GetFeature with caches off on a separate `loupe serve` (1M store): Lance's local reader
# on tokio's blocking pool (LOUPE_LOCAL_READS=blocking) against inline reads of page-cached
# bytes (inline, the default below 8 cores), alternated, closed loop at 64 clients, then
# open loop at half. Same binary; the setting is read once at start.
# Log: 2026-12-02-inline-reads-ab.txt.
L=${LOUPE:-/work/target/release/loupe}; STORE=${STORE:-/work/target/bench-store-1m}
for round in 1 2 3 4; do
for reads in blocking inline; do
  pkill -f "serve --store" ; sleep 1
  LOUPE_LOCAL_READS=$reads LOUPE_DASHBOARD_CACHE_BYTES=0 LOUPE_SEARCH_CACHE_BYTES=0 $L serve --store $STORE --no-model --addr 127.0.0.1:50077 > /tmp/serve.log 2>&1 &
  for i in $(seq 60); do grep -q serving /tmp/serve.log && break; sleep 0.5; done
  $L bench serve --server http://127.0.0.1:50077 --synthetic-only --calls feature --clients 64 --open-loop 0.5 --seconds 5 2>&1 | grep -E "^server +(GetFeature|health check) +(64 clients|open)" | tr -s ' ' | cut -c1-200 | sed "s/^/$round [$reads] /"
done; done
pkill -f "serve --store"
