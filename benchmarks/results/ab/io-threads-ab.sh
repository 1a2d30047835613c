#!/bin/bash
# The A/B of 2026-12-01 (logs beside it): a separate `loupe serve` on the 1M store (caches off,
# reads on the blocking pool) with its blocking pool capped at LOUPE_IO_THREADS (0: tokio default),
# closed loop at 64 clients then an open loop at half that rate. Run 1 (io-threads-ab-1.txt):
# caps 0, 2, 4 and 8, three rounds; run 2: caps 0, 8 and 16, two rounds.
L=${LOUPE:-target/release/loupe}; STORE=${STORE:-target/bench-store-1m}
for round in 1 2; do
for cfg in "LOUPE_IO_THREADS=0" "LOUPE_IO_THREADS=8" "LOUPE_IO_THREADS=16"; do
  pkill -f "serve --store" ; sleep 1
  env $cfg LOUPE_DASHBOARD_CACHE_BYTES=0 $L serve --store $STORE --no-model --addr 127.0.0.1:50077 > /tmp/serve.log 2>&1 &
  for i in $(seq 60); do grep -q serving /tmp/serve.log && break; sleep 0.5; done
  $L bench serve --server http://127.0.0.1:50077 --synthetic-only --calls feature --clients ${CLIENTS:-64} --open-loop 0.5 --seconds 5 2>&1 | grep -E "^server +(GetFeature) +([0-9]+ |open)" | tr -s ' ' | cut -c1-150 | sed "s/^/$round [$cfg] /"
done; done
pkill -f "serve --store"
