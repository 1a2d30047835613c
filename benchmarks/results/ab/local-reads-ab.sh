#!/bin/bash
# The A/B of 2026-12-01 (logs beside it): alternates how a separate `loupe serve` reads the
# 1M store (caches off), closed loop at 64 clients then an open loop at half that rate.
# Run 1 (local-reads-ab-1.txt) had only the uring and blocking configurations, three rounds.
L=${LOUPE:-target/release/loupe}; STORE=${STORE:-target/bench-store-1m}
for round in 1 2; do
for cfg in "LOUPE_LOCAL_READS=uring" "LOUPE_LOCAL_READS=uring LANCE_URING_THREAD_COUNT=1" "LOUPE_LOCAL_READS=blocking"; do
  pkill -f "serve --store" ; sleep 1
  env $cfg LOUPE_DASHBOARD_CACHE_BYTES=0 $L serve --store $STORE --no-model --addr 127.0.0.1:50077 > /tmp/serve.log 2>&1 &
  for i in $(seq 60); do grep -q serving /tmp/serve.log && break; sleep 0.5; done
  $L bench serve --server http://127.0.0.1:50077 --synthetic-only --calls search,feature --clients 64 --open-loop 0.5 --seconds 5 2>&1 | grep -E "^server +(GetFeature|SearchFeatures) +(64|open)" | cut -c1-150 | sed "s/^/$round [$cfg] /"
done; done
pkill -f "serve --store"
