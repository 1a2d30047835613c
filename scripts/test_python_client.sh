#!/usr/bin/env bash
# The Python client's tests: index a small store with the debug `loupe` that `cargo test`
# built, serve it on a loopback port, pip-install clients/python and run pytest against it.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
loupe="$CARGO_TARGET_DIR/debug/loupe"
[ -x "$loupe" ] || cargo build --locked -p loupe-cli
work=$(mktemp -d)
port="${LOUPE_TEST_PORT:-50561}"
server=""
cleanup() { [ -n "$server" ] && kill "$server" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
"$loupe" index --store "$work/store" --max-tokens 6000 --context 64 --top-k 8 > /dev/null
"$loupe" serve --store "$work/store" --addr "127.0.0.1:$port" 2> "$work/serve.log" &
server=$!
export LOUPE_SERVER="http://127.0.0.1:$port"
for _ in $(seq 1 300); do
  "$loupe" dictionaries > /dev/null 2>&1 && break
  kill -0 "$server" 2>/dev/null || { cat "$work/serve.log"; exit 1; }
  sleep 0.2
done
python3 -m pip install -q --disable-pip-version-check "./clients/python[test]"
LOUPE_TEST_SERVER="127.0.0.1:$port" python3 -m pytest -q clients/python/tests
