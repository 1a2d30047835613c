#!/usr/bin/env bash
# The soak test's long form: SECONDS of mixed load from CLIENTS clients against a `loupe serve`
# that is killed with SIGKILL every 1-3 s (and an index job killed and resumed), then a
# check that no acknowledged write was lost. CI runs the short form (20 s, 6 clients).
#   scripts/soak.sh [SECONDS=600] [CLIENTS=12]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
LOUPE_SOAK_SECONDS="${1:-600}" LOUPE_SOAK_CLIENTS="${2:-12}" \
  cargo test --locked --workspace --test e2e -- soak --nocapture
