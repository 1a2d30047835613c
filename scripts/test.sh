#!/usr/bin/env bash
# The test command: one-time setup (idempotent), the deployment files validated offline,
# every test of the workspace, then the
# Python client's tests against a real `loupe serve` over a store indexed here.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
bash scripts/setup.sh
bash scripts/validate_deploy.sh
cargo test --workspace --locked
bash scripts/test_python_client.sh
