#!/usr/bin/env bash
# The main job on the embedded default, for a fresh machine: setup, build, then run
# SmolLM2-135M-Instruct with its hook points (chat, tokenizer, activations at a hook) and
# the embedded default dictionary (its description and quality on held-out text).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
bash scripts/setup.sh
echo "[demo] building loupe (release; the first build takes a while)" >&2
cargo build --release --locked -p loupe-cli
loupe="$CARGO_TARGET_DIR/release/loupe"

echo; echo "== loupe generate \"What is the capital of France?\""
"$loupe" generate "What is the capital of France?" --max-tokens 48
echo; echo "== loupe tokenize \"Call 555-0123 today\""
"$loupe" tokenize "Call 555-0123 today"
echo; echo "== loupe activations --hook blocks.9.hook_resid_post \"The cat sat on the mat\""
"$loupe" activations --hook blocks.9.hook_resid_post "The cat sat on the mat"
dictionary=dictionaries/smollm2-135m-instruct/blocks.9.hook_resid_post-topk-4608
echo; echo "== loupe dict info $dictionary"
"$loupe" dict info "$dictionary"
echo; echo "== loupe dict encode \"The cat sat on the mat\"   (features that fire, per token)"
"$loupe" dict encode "The cat sat on the mat" --top 4
echo; echo "== loupe dict eval $dictionary --tokens 4096   (held-out demo text)"
"$loupe" dict eval "$dictionary" --tokens 4096
cat <<TXT

Next: try your own prompts with $loupe generate "..." (add --temperature 0.7 --seed 1 to
sample), read any hook with --hook (e.g. blocks.20.hook_mlp_out), and measure this machine
with $loupe bench forward. See README.md for everything else.
TXT
