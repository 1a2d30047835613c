#!/usr/bin/env bash
# The main job on the embedded default, for a fresh machine: setup, build, index the demo
# corpus with the default dictionary (SmolLM2-135M-Instruct, layer 9 TopK SAE), serve the
# store over gRPC on loopback, and answer a search and a dashboard query.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
bash scripts/setup.sh
echo "[demo] building loupe (the first build takes a while; tests share it)" >&2
# The dev profile optimises dependencies and loupe's hot crates (see Cargo.toml) and shares
# its artifacts with scripts/test.sh; --workspace keeps one set of features for both.
cargo build --workspace --locked
loupe="$CARGO_TARGET_DIR/debug/loupe"
store="${LOUPE_DEMO_STORE:-$LOUPE_HOME/demo-store}"
tokens="${LOUPE_DEMO_TOKENS:-100000}"
addr="127.0.0.1:${LOUPE_DEMO_PORT:-50551}"
export LOUPE_SERVER="http://$addr"

echo; echo "== loupe index --store $store --max-tokens $tokens   (demo corpus, default dictionary; resumable)"
"$loupe" index --store "$store" --max-tokens "$tokens"

echo; echo "== loupe serve --store $store --addr $addr   (in the background)"
"$loupe" serve --store "$store" --addr "$addr" 2> "$LOUPE_HOME/demo-serve.log" &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
for _ in $(seq 1 300); do
  "$loupe" dictionaries > /dev/null 2>&1 && break
  kill -0 $server 2>/dev/null || { cat "$LOUPE_HOME/demo-serve.log"; exit 1; }
  sleep 0.2
done
"$loupe" dictionaries

echo; echo "== loupe search \"lord\"   (features whose examples, logits or labels match)"
"$loupe" search "lord" --limit 5
feature=$("$loupe" search "lord" --limit 1 --json | python3 -c 'import json,sys; f=json.load(sys.stdin)["hits"][0]["feature"]; print("%s/%s" % (f["dictionary_id"], f["feature"]))')

echo; echo "== loupe show $feature   (the dashboard)"
"$loupe" show "$feature" --examples 6

echo; echo "== loupe text \"And the LORD said unto Moses\"   (features per token, run on the server)"
"$loupe" text "And the LORD said unto Moses" --k 2

cat <<TXT

Next: search your own words ($loupe search "war OR battle", "\"thou shalt\"", "sea*"),
label what you find ($loupe label $feature "..."), index more with
$loupe index --store $store --max-tokens 1000000 (or --append --corpus YOUR.jsonl), and
serve it yourself with $loupe serve --store $store. See README.md for everything else.
TXT
