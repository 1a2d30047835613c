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
secure=""
cleanup() { [ -n "$server" ] && kill "$server" 2>/dev/null; [ -n "$secure" ] && kill "$secure" 2>/dev/null; rm -rf "$work"; }
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
LOUPE_TEST_SERVER="127.0.0.1:$port" python3 -m pytest -q clients/python/tests/test_client.py
# The same store behind mutual TLS and tokens (made by `loupe tls create` and `loupe token
# create`): the client's token, TLS and quota handling, and the CLI's flags.
secure_port=$((port + 1))
"$loupe" tls create "$work/certs" > /dev/null
export LOUPE_TOKENS_FILE="$work/tokens.json"
export LOUPE_TEST_READ_TOKEN=$("$loupe" token create --name py-reader --scope read 2> /dev/null)
export LOUPE_TEST_LABEL_TOKEN=$("$loupe" token create --name py-labeller --scope read,label --requests-per-second 5 2> /dev/null)
"$loupe" serve --store "$work/store" --addr "127.0.0.1:$secure_port" --no-model \
  --tls-cert "$work/certs/server.pem" --tls-key "$work/certs/server.key" --tls-client-ca "$work/certs/ca.pem" 2> "$work/secure.log" &
secure=$!
export LOUPE_TEST_SECURE_SERVER="https://localhost:$secure_port" LOUPE_TEST_CERTS="$work/certs" LOUPE_TEST_STORE="$work/store"
for _ in $(seq 1 300); do
  grep -q "callers need a token" "$work/secure.log" && break
  kill -0 "$secure" 2>/dev/null || { cat "$work/secure.log"; exit 1; }
  sleep 0.2
done
LOUPE_BINARY="$loupe" python3 -m pytest -q clients/python/tests/test_access.py
unset LOUPE_TOKENS_FILE
kill "$secure"; secure=""
# `loupe bench serve --server` against the same running server: every call measured, with its floor.
"$loupe" bench serve --server "$LOUPE_SERVER" --seconds 0.3 --clients 1,4 --calls search,feature --json > "$work/bench.json"
python3 - "$work/bench.json" <<'PY'
import json, sys
report = json.load(open(sys.argv[1]))
assert report["provenance"]["build_profile"] in ("dev", "release"), report["provenance"]
rows = report["rows"]
calls = {(r["call"], r["clients"]) for r in rows if r.get("qps", 0) > 0 and r["p99_ms"] >= r["p50_ms"] > 0}
want = {(c, n) for c in ("health check (floor)", "SearchFeatures", "GetFeature") for n in (1, 4)}
assert want <= calls, f"bench serve --server measured {sorted(calls)}, expected {sorted(want)}"
print(f"bench serve --server: {len(rows)} measurements")
PY
