#!/usr/bin/env bash
# Packs what scripts/gpu_check.sh needs on the GPU machine into bundles the `device` tool can
# carry (64 MiB per call): target/gpu-carry/1, 2, ... Each call moves its bundle into
# target/gpu there (kept between calls while the machine stays warm); the last call runs the
# checks. Needs the CUDA binary (scripts/build_cuda.sh) and the default model (setup.sh).
#
#   scripts/gpu_carry.sh      # then, per bundle N, with carry ["target/gpu-carry/N"]:
#     mkdir -p target/gpu && cp -r target/gpu-carry/N/. target/gpu/
#   and last: bash scripts/gpu_check.sh   (OUT is set by the device tool)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
BIN="${LOUPE_CUDA_BINARY:-target/release/loupe-cuda}"
MODEL="$LOUPE_HOME/models/SmolLM2-135M-Instruct.Q4_1.gguf"
CORPUS="$LOUPE_HOME/corpora/demo.jsonl"
LIMIT=$((60 * 1024 * 1024))
for f in "$BIN" "$MODEL" "$CORPUS"; do
  [ -f "$f" ] || { echo "missing $f (build_cuda.sh builds the binary, setup.sh fetches the model and corpus)" >&2; exit 1; }
done
work=target/gpu-carry
rm -rf "$work" && mkdir -p "$work/all"
strip -o "$work/all/loupe" "$BIN"
xz -T0 -9 -c "$work/all/loupe" >"$work/all/loupe.xz" && rm "$work/all/loupe"
split -b 48M -d "$MODEL" "$work/all/model.part-"
cp "$CORPUS" "$work/all/demo.jsonl"
# transformers reads GGUF through the `gguf` package, which the GPU machine's image lacks.
python3 -m pip download --quiet --no-deps --dest "$work/all/wheels" gguf==0.19.0
# First fit, largest first, into bundles under the limit.
n=0
for f in $(ls -S "$work/all"/* "$work/all/wheels"/* | grep -v '/wheels$'); do
  size=$(stat -c %s "$f")
  [ "$size" -le "$LIMIT" ] || { echo "$f is larger than one call carries" >&2; exit 1; }
  placed=""
  for b in $(seq 1 "$n"); do
    used=$(du -sb "$work/$b" | cut -f1)
    if [ $((used + size)) -le "$LIMIT" ]; then placed=$b; break; fi
  done
  if [ -z "$placed" ]; then n=$((n + 1)); placed=$n; mkdir -p "$work/$n"; fi
  case "$f" in */wheels/*) mkdir -p "$work/$placed/wheels"; mv "$f" "$work/$placed/wheels/" ;; *) mv "$f" "$work/$placed/" ;; esac
done
rm -rf "$work/all"
for b in $(seq 1 "$n"); do
  echo "bundle $b: $(du -sh "$work/$b" | cut -f1) ($(ls "$work/$b" | tr '\n' ' '))"
done
echo "$n calls: carry target/gpu-carry/N and run 'mkdir -p target/gpu && cp -r target/gpu-carry/N/. target/gpu/', the last one followed by 'bash scripts/gpu_check.sh'"
