#!/usr/bin/env bash
# Packs what scripts/gpu_check.sh needs on the GPU machine into bundles that the `device` tool
# carries one per call: target/gpu-carry/1, 2, ... Each call sends the working tree too, and
# the whole call holds at most 64 MiB, so a bundle holds 64 MiB less the tree's size.
#
# What it packs, compressed (xz) and cut into parts across the bundles:
#   - the CUDA binary (scripts/build_cuda.sh), stripped;
#   - the default model and the demo corpus (scripts/setup.sh);
#   - the CPU reference of checks 3 and 4 (`gpu_check.sh --reference`, made here with the same
#     binary on the CPU and kept in target/gpu-reference for reuse: the 1M-token index takes
#     ~9 minutes on 2 cores, the whole script ~15), so that the GPU machine spends its minutes
#     on the GPU;
#   - the `gguf` wheel (transformers reads the GGUF model through it; the image lacks it).
#
# Then, with the device tool (a machine goes back 30 s after a call: make the calls back to
# back; the issue asks for the H200, so name kind "nvidia-h200" in the first):
#   for N in 1 .. last-1: run carry ["target/gpu-carry/N"], timeout_s 120,
#       command "mkdir -p target/gpu && cp -r target/gpu-carry/N/. target/gpu/ && ls target/gpu"
#   last:                 run carry ["target/gpu-carry/LAST"], timeout_s 600,
#       command "mkdir -p target/gpu && cp -r target/gpu-carry/LAST/. target/gpu/ && bash scripts/gpu_check.sh"
#   then give_back. $OUT brings back summary.txt, gpu_check.json, results.tar.xz and the bench JSONs.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
BIN="${LOUPE_CUDA_BINARY:-target/release/loupe-cuda}"
MODEL="$LOUPE_HOME/models/SmolLM2-135M-Instruct.Q4_1.gguf"
CORPUS="$LOUPE_HOME/corpora/demo.jsonl"
TOKENS="${GPU_CHECK_TOKENS:-1000000}"
for f in "$BIN" "$MODEL" "$CORPUS"; do
  [ -f "$f" ] || { echo "missing $f (build_cuda.sh builds the binary, setup.sh fetches the model and corpus)" >&2; exit 1; }
done

# What travels with every call: tracked files and untracked ones git does not ignore.
tree=$( { git ls-files -z; git ls-files -z --others --exclude-standard; } | xargs -0 stat -c %s 2>/dev/null | awk '{s += $1} END {print s + 0}')
ROOM=$((64 * 1024 * 1024 - tree - 1024 * 1024))
[ "$ROOM" -gt $((8 * 1024 * 1024)) ] || { echo "the working tree ($tree bytes) leaves no room in a 64 MiB call" >&2; exit 1; }

work=target/gpu-carry
all="$work/all"
rm -rf "$work" && mkdir -p "$all"

# The binary, stripped, with a dictionary as large as it (xz -9's 64 MiB window finds less).
strip -o "$all/loupe" "$BIN"
echo "compressing the binary ($(du -h "$all/loupe" | cut -f1))..."
xz -T1 --lzma2=preset=9e,dict=256MiB -c "$all/loupe" >"$all/loupe.xz"
xz -T0 -9 -c "$MODEL" >"$all/SmolLM2-135M-Instruct.Q4_1.gguf.xz"
xz -T0 -9 -c "$CORPUS" >"$all/demo.jsonl.xz"
python3 -m pip download --quiet --no-deps --dest "$all/wheels" gguf==0.19.0

# The CPU reference, made by the binary that runs on the GPU (the driver stub lets it start
# here; it only uses the CPU).
cu="${LOUPE_CUDA_HOME:-$HOME/.cache/loupe/cuda13}/python/nvidia/cu13/lib"
stub_dir="$work/driver-stub"
mkdir -p "$stub_dir" && ln -sf "$(realpath "$cu/stubs/libcuda.so")" "$stub_dir/libcuda.so.1"
reference="target/gpu-reference/$(sha256sum "$all/loupe" | cut -c1-16)-$TOKENS"
want=$(printf '{"binary": "%s", "tokens": %s, "corpus_bytes": %s}' "$(sha256sum "$all/loupe" | cut -c1-16)" "$TOKENS" "$(stat -c %s "$CORPUS")")
if [ "$(cat "$reference/reference.json" 2>/dev/null)" != "$want" ]; then
  echo "making the CPU reference ($TOKENS tokens) in $reference..."
  rm -rf "$reference"
  LD_LIBRARY_PATH="$cu:$stub_dir" GPU_CHECK_LOUPE="$all/loupe" GPU_CHECK_MODEL="$MODEL" GPU_CHECK_CORPUS="$CORPUS" GPU_CHECK_TOKENS="$TOKENS" \
    bash scripts/gpu_check.sh --reference "$reference"
fi
tar -C "$(dirname "$reference")" --transform "s|^$(basename "$reference")|reference|" --exclude=steps.tsv -cJf "$all/reference.tar.xz" "$(basename "$reference")"
rm "$all/loupe"

# Fill the bundles in order, cutting a file where a bundle is full (gpu_check.sh joins the
# parts, NAME.xz.part-00, -01, ..., in name order).
n=1
mkdir -p "$work/$n"
used=0
for f in "$all/loupe.xz" "$all/SmolLM2-135M-Instruct.Q4_1.gguf.xz" "$all/reference.tar.xz" "$all/demo.jsonl.xz" "$all"/wheels/*.whl; do
  name=$(basename "$f")
  [ "${f%/*}" = "$all/wheels" ] && name="wheels/$name"
  size=$(stat -c %s "$f")
  # Whole where it fits (a wheel always: pip takes it whole), else in parts.
  if [ $((used + size)) -gt "$ROOM" ] && [ "${name#wheels/}" != "$name" ]; then
    n=$((n + 1)) && mkdir -p "$work/$n" && used=0
  fi
  if [ $((used + size)) -le "$ROOM" ]; then
    mkdir -p "$work/$n/$(dirname "$name")" && mv "$f" "$work/$n/$name"
    used=$((used + size))
    continue
  fi
  part=0 offset=0
  while [ "$offset" -lt "$size" ]; do
    [ "$used" -ge "$ROOM" ] && { n=$((n + 1)); mkdir -p "$work/$n"; used=0; }
    take=$((size - offset < ROOM - used ? size - offset : ROOM - used))
    dd if="$f" of="$work/$n/$name.part-$(printf %02d "$part")" bs=1M iflag=skip_bytes,count_bytes skip="$offset" count="$take" status=none
    offset=$((offset + take)) used=$((used + take)) part=$((part + 1))
  done
  rm "$f"
done
rm -rf "$all" "$stub_dir"
echo "each call sends the working tree ($((tree / 1024 / 1024)) MiB) and one bundle (at most $((ROOM / 1024 / 1024)) MiB):"
for b in $(seq 1 "$n"); do
  echo "  bundle $b: $(du -sh "$work/$b" | cut -f1) ($(cd "$work/$b" && find . -type f | sed 's|^\./||' | sort | tr '\n' ' '))"
done
echo "$n calls, back to back: carry target/gpu-carry/N with 'mkdir -p target/gpu && cp -r target/gpu-carry/N/. target/gpu/', the last one followed by 'bash scripts/gpu_check.sh'"
