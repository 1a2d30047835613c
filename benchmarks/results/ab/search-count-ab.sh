#!/bin/bash
# A/B: SearchFeatures with caches off on a separate `loupe serve` (1M store): ranking and
# counting in one scored pass (AB_ONE_PASS=1) against block-max WAND ranking plus an
# unscored count (the new default), alternated, closed loop at 64 clients then open loop at half.
# It ran on a build of store/src/search.rs with a temporary switch (not committed) in front of
# the new passes:  `if has_prefixes || (std::env::var_os("AB_ONE_PASS").is_some() &&
# match_bound(..)? <= page.exact_total_up_to as u64) { (TopDocs, Count) in one pass }`.
# Logs: 2026-12-01-search-count-ab-1.txt (full console lines), -2.txt (summary lines).
L=${LOUPE:-/work/target/release/loupe}; STORE=${STORE:-/work/target/bench-store-1m}
for round in 1 2 3 4; do
for cfg in "AB_ONE_PASS=1" "AB_TWO_PASS=1"; do
  pkill -f "serve --store" ; sleep 1
  env $cfg LOUPE_DASHBOARD_CACHE_BYTES=0 LOUPE_SEARCH_CACHE_BYTES=0 $L serve --store $STORE --no-model --addr 127.0.0.1:50077 > /tmp/serve.log 2>&1 &
  for i in $(seq 60); do grep -q serving /tmp/serve.log && break; sleep 0.5; done
  $L bench serve --server http://127.0.0.1:50077 --synthetic-only --calls search --clients 64 --open-loop 0.5 --seconds 5 2>&1 | grep -E "^server +(SearchFeatures) +([0-9]+ |open)" | tr -s ' ' | cut -c1-150 | sed "s/^/$round [$cfg] /"
done; done
pkill -f "serve --store"
