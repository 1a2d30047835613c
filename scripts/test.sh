#!/usr/bin/env bash
# The test command: one-time setup (idempotent), then every test of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
bash scripts/setup.sh
cargo test --workspace --locked
