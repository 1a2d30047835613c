#!/usr/bin/env bash
# Runs every libFuzzer target (fuzz/libfuzzer, cargo fuzz on nightly Rust) for SECONDS each,
# starting from and adding to the committed corpora in fuzz/corpus/<target>; prints
# executions and crashes per target. A crash leaves its input in
# fuzz/libfuzzer/artifacts/<target>/: add it to fuzz/corpus/<target>, fix the parser, and the
# stable replay test (cargo test -p loupe-fuzz, run by CI) keeps it fixed.
#   scripts/fuzz.sh [SECONDS=60] [TARGET...]
# Needs: rustup's nightly toolchain and `cargo install cargo-fuzz`. The build leaves Lance out
# (loupe-store and loupe-indexer without default features): no target needs it.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-60}"
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(gguf hf_model saelens sparsify gemma_scope_npz monitor_json corpus_jsonl corpus_parquet corpus_text job_config search_query)
export CARGO_TARGET_DIR="${FUZZ_TARGET_DIR:-${CARGO_TARGET_DIR:-/work/target}-fuzz}"
cargo +nightly fuzz build --fuzz-dir fuzz/libfuzzer -O
# New inputs go to a working corpus beside the build; the committed seeds stay small.
work="$CARGO_TARGET_DIR/fuzz-corpus"
printf '%-18s %12s %8s %s\n' target executions crashes "corpus (seeds + found)"
for t in "${targets[@]}"; do
  mkdir -p "$work/$t"
  log=$(mktemp)
  set +e
  cargo +nightly fuzz run --fuzz-dir fuzz/libfuzzer -O "$t" "$work/$t" "fuzz/corpus/$t" -- \
    -max_total_time="$seconds" -rss_limit_mb=4096 -max_len=1048576 -timeout=20 -print_final_stats=1 > "$log" 2>&1
  status=$?
  set -e
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
  crashes=$([ $status -eq 0 ] && echo 0 || echo 1)
  printf '%-18s %12s %8s %s\n' "$t" "${runs:-?}" "$crashes" "$(ls "fuzz/corpus/$t" | wc -l) + $(ls "$work/$t" | wc -l)"
  [ $status -eq 0 ] || { grep -E "ERROR|panicked|SUMMARY|Test unit written" "$log" | head -10; }
  rm -f "$log"
done
