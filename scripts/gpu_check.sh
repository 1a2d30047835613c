#!/usr/bin/env bash
# The GPU checks of the CUDA build (issue 20), run ON the GPU machine from the repository root,
# with what scripts/gpu_carry.sh packed into target/gpu (the CUDA binary, the model, the demo
# corpus and the CPU reference, compressed and split to fit the device tool's calls). Nothing
# is built or downloaded there.
#
#   bash scripts/gpu_check.sh                     # on the GPU machine, after the carry calls
#   bash scripts/gpu_check.sh --reference DIR     # here: only the CPU side, into DIR
#                                                 # (gpu_carry.sh runs this; the GPU machine
#                                                 # then spends no time on the CPU reference)
#   GPU_CHECK_DEVICE=cpu GPU_CHECK_LOUPE=... GPU_CHECK_MODEL=... GPU_CHECK_CORPUS=... \
#     bash scripts/gpu_check.sh                   # dry run of every step on a machine without a GPU
#
# Checks (each prints PASS/FAIL with its figure; the script exits non-zero if one fails):
#   1. hidden states at hook_embed and blocks 0, 9, 20, 29 (resid_post) for the 10 fixture
#      prompts against transformers (engine/tests/fixtures/smollm2_hidden.safetensors): f32 on
#      the GPU within 1e-3 of each position's norm; bf16 within 5e-2 (embed, 0, 9) and 1e-1
#      (20, 29): bf16 keeps 8 significant bits (relative rounding 2^-9 per operation) and the
#      residual stream sums 30 blocks of such rounding.
#   2. greedy generation in f32 on the GPU: the same completion ids as transformers for the
#      fixture's chat prompt.
#   3. dictionary encode on the GPU against the CPU, for the default TopK dictionary and its
#      weights as a JumpReLU and a ReLU SAE (the selection kernel's packed and dense-row
#      paths): the same active features per token, except where the two activations of the
#      differing features are within 1e-2 of the k-th or the threshold (ties under rounding).
#   4. an index job of 1M tokens on the GPU against the same job on the CPU: every feature's
#      density and max activation within 1e-2 relative, and the top examples' (window,
#      position) sets equal up to activation ties within 1e-2.
#   5. benchmarks: `loupe bench forward --device cuda --encode` (to layer 9, alone, with the
#      default dictionary and with a random 65,536-latent one: tokens/s and MFU against the
#      bf16 matmul peak measured in the same run), `loupe bench index --device cuda`, and
#      PyTorch on the same batches (reference/bench_torch_gpu.py), as ratios.
#   6. where the GPU time goes: Nsight Compute's kernel durations over one lens run per case,
#      by kind of kernel (matmul, attention softmax, selection, element-wise, ...).
#
# $OUT receives at most 8 files (what the device tool brings back): summary.txt (written as
# the checks go, so a run cut short still reports), gpu_check.json, results.tar.xz (every
# output and log, small enough to come back) and the benchmark JSONs.
set -uo pipefail
cd "$(dirname "$0")/.."
GPU=target/gpu
DEVICE="${GPU_CHECK_DEVICE:-cuda}"
LOUPE="${GPU_CHECK_LOUPE:-$GPU/loupe}"
MODEL="${GPU_CHECK_MODEL:-$GPU/SmolLM2-135M-Instruct.Q4_1.gguf}"
CORPUS="${GPU_CHECK_CORPUS:-$GPU/demo.jsonl}"
TOKENS="${GPU_CHECK_TOKENS:-1000000}"
DICTIONARY=dictionaries/smollm2-135m-instruct/blocks.9.hook_resid_post-topk-4608
PROMPTS=engine/tests/fixtures/smollm2_prompts.json
export LOUPE_MODEL="$MODEL" LOUPE_LOG=warn

if [ "${1:-}" = --reference ]; then
  MODE=reference
  REFERENCE="${2:?--reference takes the folder to write the CPU reference into}"
  WORK="$REFERENCE"
  OUT="$REFERENCE"
else
  MODE=check
  OUT="${OUT:-target/gpu-out}"
  WORK=target/gpu-work
  REFERENCE="${GPU_CHECK_REFERENCE:-$GPU/reference}"
fi
mkdir -p "$OUT" "$WORK" "$GPU"
export LOUPE_HOME="$WORK/home"
started=$(date +%s)

# Unpacks what was carried: NAME.xz, or NAME.xz.part-* (each call carries at most 64 MiB).
unpack() { # NAME DEST
  [ -s "$2" ] && return 0
  local parts=("$GPU/$1".xz*)
  [ -e "${parts[0]}" ] || return 0
  cat "${parts[@]}" | python3 -c "import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.stdin.buffer), open(sys.argv[1], 'wb'))" "$2"
}
if [ "$MODE" = check ]; then
  unpack loupe "$LOUPE"
  unpack SmolLM2-135M-Instruct.Q4_1.gguf "$MODEL"
  unpack demo.jsonl "$CORPUS"
  if [ ! -f "$GPU/reference.tar.xz" ] && [ -e "$GPU/reference.tar.xz.part-00" ]; then
    cat "$GPU"/reference.tar.xz.part-* >"$GPU/reference.tar.xz"
  fi
  if [ -f "$GPU/reference.tar.xz" ] && [ ! -d "$REFERENCE" ]; then
    python3 -c "import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2], filter='data')" "$GPU/reference.tar.xz" "$GPU"
  fi
fi
chmod +x "$LOUPE" 2>/dev/null
for f in "$LOUPE" "$MODEL" "$CORPUS"; do
  [ -f "$f" ] || { echo "FAIL: $f is missing (scripts/gpu_carry.sh packs it)" | tee -a "$OUT/summary.txt"; exit 1; }
done
# transformers reads the GGUF model through `gguf` (carried as a wheel).
if ! python3 -c "import gguf" 2>/dev/null && ls "$GPU"/wheels/gguf-*.whl >/dev/null 2>&1; then
  python3 -m pip install --quiet --no-deps --target "$GPU/py" "$GPU"/wheels/gguf-*.whl
  export PYTHONPATH="$GPU/py${PYTHONPATH:+:$PYTHONPATH}"
fi
# PyTorch's CUDA 13 libraries (cuBLAS, cuRAND, NVRTC, the runtime) for the binary.
TORCH_NVIDIA=$(python3 -c "import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], 'cu13', 'lib'))" 2>/dev/null || true)
export LD_LIBRARY_PATH="${TORCH_NVIDIA}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

status=0
record() { # name pass(0/1) figure
  echo "$([ "$2" = 0 ] && echo PASS || echo FAIL) $1: $3" | tee -a "$OUT/summary.txt"
  [ "$2" = 0 ] || status=1
}
# Runs one step under a time limit and notes how long it took (steps.tsv).
step() { # NAME SECONDS COMMAND...
  local name=$1 limit=$2 t0 rc
  shift 2
  t0=$(date +%s%N)
  timeout --kill-after=10 "$limit" "$@"
  rc=$?
  printf '%s\t%s\t%s\n' "$name" "$(( ($(date +%s%N) - t0) / 1000000 ))ms" "$rc" >>"$WORK/steps.tsv"
  [ "$rc" = 124 ] && echo "step $name ran past its $limit s" | tee -a "$OUT/summary.txt"
  return $rc
}
json_field() { # FILE PYTHON-EXPRESSION-ON-r
  python3 -c "import json, sys; r = json.load(open(sys.argv[1])); print($2)" "$1" 2>/dev/null
}

python3 -c "
import json, sys
for p in json.load(open('$PROMPTS'))['prompts']:
    print(json.dumps({'text': p['text']}))" >"$WORK/prompts.jsonl"

# The dictionary variants of check 3: the default weights as a JumpReLU (threshold 1.0: the GPU
# packs each token's active latents) and as a ReLU SAE (thousands active a token: rows past the
# selection kernel's room of 1,024 are read densely).
variants="$WORK/dictionary-variants"
python3 - "$DICTIONARY" "$variants" <<'EOF'
import json, os, sys
import numpy as np
from safetensors.numpy import load_file, save_file
source, out = sys.argv[1], sys.argv[2]
cfg = json.load(open(f"{source}/cfg.json"))
weights = load_file(f"{source}/sae_weights.safetensors")
for name, architecture, extra in [("jumprelu", "jumprelu", {"threshold": np.full(cfg["d_sae"], 1.0, dtype=weights["b_enc"].dtype)}), ("relu", "standard", {})]:
    os.makedirs(f"{out}/{name}", exist_ok=True)
    save_file({**weights, **extra}, f"{out}/{name}/sae_weights.safetensors")
    json.dump({**{k: v for k, v in cfg.items() if k != "k"}, "architecture": architecture}, open(f"{out}/{name}/cfg.json", "w"))
EOF
ENCODES="topk:$DICTIONARY jumprelu:$variants/jumprelu relu:$variants/relu"

encode() { # DEVICE NAME DICTIONARY OUT_FILE
  step "encode-$2-$1" 300 "$LOUPE" dict encode --texts "$WORK/prompts.jsonl" --dictionary "$3" --top 4608 --json --device "$1" >"$4" 2>"$4.log"
}
# The index job, its features (without decoders) and its top examples, compact (the fields
# check 4 compares).
index_and_export() { # DEVICE DIR
  rm -rf "$2/store"
  mkdir -p "$2"
  step "index-$1" 900 "$LOUPE" index --corpus "$CORPUS" --store "$2/store" --max-tokens "$TOKENS" --json --device "$1" >"$2/index.json" 2>"$2/index.log"
  step "export-$1" 300 "$LOUPE" export --store "$2/store" --table features --no-decoders --out "$2/features-full.jsonl" 2>>"$2/index.log"
  step "export-examples-$1" 300 "$LOUPE" export --store "$2/store" --table examples --out "$2/examples-full.jsonl" 2>>"$2/index.log"
  python3 - "$2" <<'EOF'
import json, sys
d = sys.argv[1]
with open(f"{d}/features.jsonl", "w") as out:
    for line in open(f"{d}/features-full.jsonl"):
        r = json.loads(line)
        out.write(json.dumps({k: r[k] for k in ("dictionary_id", "feature", "density", "max_activation")}) + "\n")
with open(f"{d}/examples.jsonl", "w") as out:
    for line in open(f"{d}/examples-full.jsonl"):
        r = json.loads(line)
        if r.get("kind") == "Top":
            out.write(json.dumps({k: r[k] for k in ("dictionary_id", "feature", "window", "max_position", "max_activation")}) + "\n")
EOF
  rm -rf "$2/store" "$2/features-full.jsonl" "$2/examples-full.jsonl"
}
binary_id() { sha256sum "$LOUPE" | cut -c1-16; }

# --reference: the CPU side of checks 3 and 4, for the same binary and token count.
if [ "$MODE" = reference ]; then
  for variant in $ENCODES; do
    encode cpu "${variant%%:*}" "${variant#*:}" "$REFERENCE/encode-${variant%%:*}.jsonl"
  done
  index_and_export cpu "$REFERENCE/index"
  rm -rf "$variants" "$WORK/home" "$WORK/prompts.jsonl"
  printf '{"binary": "%s", "tokens": %s, "corpus_bytes": %s}\n' "$(binary_id)" "$TOKENS" "$(stat -c %s "$CORPUS")" >"$REFERENCE/reference.json"
  echo "CPU reference in $REFERENCE ($(du -sh "$REFERENCE" | cut -f1)); steps:"
  cat "$REFERENCE/steps.tsv"
  exit 0
fi

{ nvidia-smi; ldd "$LOUPE" | grep -E "cuda|cublas|curand|nvrtc|not found"; } >"$WORK/environment.txt" 2>&1
if ldd "$LOUPE" | grep -q "not found"; then
  cat "$WORK/environment.txt" >>"$OUT/summary.txt"
  echo "FAIL: libraries missing (see above)" | tee -a "$OUT/summary.txt"
  exit 1
fi
# The carried reference serves when it was made by this binary on this corpus and token count;
# otherwise this machine's CPU makes it (minutes more).
want=$(printf '{"binary": "%s", "tokens": %s, "corpus_bytes": %s}' "$(binary_id)" "$TOKENS" "$(stat -c %s "$CORPUS")")
if [ "$(cat "$REFERENCE/reference.json" 2>/dev/null)" != "$want" ]; then
  echo "no carried CPU reference for this binary, corpus and token count: computing it here" | tee -a "$OUT/summary.txt"
  REFERENCE="$WORK/reference"
  mkdir -p "$REFERENCE"
  (
    for variant in $ENCODES; do encode cpu "${variant%%:*}" "${variant#*:}" "$REFERENCE/encode-${variant%%:*}.jsonl"; done
    index_and_export cpu "$REFERENCE/index"
  ) &
  reference_job=$!
fi

# 1. Hidden states.
PRECISIONS="f32 bf16"
[ "$DEVICE" = cpu ] && PRECISIONS="f32"
hook_flags=()
for hook in hook_embed blocks.0.hook_resid_post blocks.9.hook_resid_post blocks.20.hook_resid_post blocks.29.hook_resid_post; do hook_flags+=(--hook "$hook"); done
for precision in $PRECISIONS; do
  step "activations-$precision" 300 "$LOUPE" activations --texts "$WORK/prompts.jsonl" "${hook_flags[@]}" --json --values --device "$DEVICE" --precision "$precision" \
    >"$WORK/activations-$precision.jsonl" 2>"$WORK/activations-$precision.log"
done
python3 - "$WORK" "$PRECISIONS" <<'EOF' >"$WORK/hidden.json"
import json, sys
import numpy as np
from safetensors.numpy import load_file
work, precisions = sys.argv[1], sys.argv[2].split()
ref = load_file("engine/tests/fixtures/smollm2_hidden.safetensors")
hooks = ["hook_embed", "blocks.0.hook_resid_post", "blocks.9.hook_resid_post", "blocks.20.hook_resid_post", "blocks.29.hook_resid_post"]
bounds = {"f32": dict.fromkeys(hooks, 1e-3), "bf16": dict(zip(hooks, [5e-2, 5e-2, 5e-2, 1e-1, 1e-1]))}
result = {}
for precision in precisions:
    bound = bounds[precision]
    runs = [json.loads(line) for line in open(f"{work}/activations-{precision}.jsonl")]
    worst = dict.fromkeys(bound, 0.0)
    if len(runs) != 10:  # a failed run fails the check
        worst = dict.fromkeys(bound, float("inf"))
    for i, run in enumerate(runs if len(runs) == 10 else []):
        for hook in bound:
            got = np.array(run["hooks"][hook]["values"], dtype=np.float64)
            want = ref[f"{i}/{hook}"].astype(np.float64).reshape(got.shape)
            rel = np.linalg.norm(got - want, axis=-1) / np.maximum(np.linalg.norm(want, axis=-1), 1e-12)
            worst[hook] = max(worst[hook], float(rel.max()))
    result[precision] = {h: {"max_relative_error": worst[h], "bound": bound[h], "pass": worst[h] <= bound[h]} for h in bound}
print(json.dumps(result, indent=1))
EOF
for precision in $PRECISIONS; do
  ok=$(json_field "$WORK/hidden.json" "0 if all(v['pass'] for v in r['$precision'].values()) else 1" || echo 1)
  figure=$(json_field "$WORK/hidden.json" "', '.join(f\"{h} {v['max_relative_error']:.2e}\" for h, v in r['$precision'].items())" || echo "no result")
  record "hidden states ($precision)" "${ok:-1}" "$figure"
done

# 2. Greedy generation in f32.
user=$(python3 -c "import json; print(json.load(open('$PROMPTS'))['chat']['user'])")
n=$(python3 -c "import json; print(len(json.load(open('$PROMPTS'))['chat']['greedy_completion_ids']))")
step generate 120 "$LOUPE" generate "$user" --max-tokens "$n" --json --device "$DEVICE" --precision f32 >"$WORK/generate.json" 2>"$WORK/generate.log"
ok=$(python3 -c "
import json
want = json.load(open('$PROMPTS'))['chat']['greedy_completion_ids']
got = json.load(open('$WORK/generate.json'))['completion_ids']
print(0 if got[:len(want)] == want else 1)" 2>/dev/null || echo 1)
record "greedy generation (f32)" "$ok" "$n tokens"

# 3. Dictionary encode on the device (the CPU side is the reference's).
for variant in $ENCODES; do
  encode "$DEVICE" "${variant%%:*}" "${variant#*:}" "$WORK/encode-${variant%%:*}-$DEVICE.jsonl"
done
# 4. The index job on the device.
index_and_export "$DEVICE" "$WORK/index-$DEVICE"
[ -n "${reference_job:-}" ] && wait "$reference_job"

for variant in $ENCODES; do
  name=${variant%%:*}
  python3 - "$REFERENCE/encode-$name.jsonl" "$WORK/encode-$name-$DEVICE.jsonl" <<'EOF' >"$WORK/encode-$name.json"
import json, sys
def runs(path):
    try:
        return [json.loads(line) for line in open(path)]
    except (OSError, ValueError):
        return []
cpu_runs, gpu_runs = runs(sys.argv[1]), runs(sys.argv[2])
tokens = differing = unexplained = active = 0
if len(cpu_runs) != 10 or len(gpu_runs) != 10:
    unexplained = 1  # a failed run fails the check
for cpu, gpu in zip(cpu_runs, gpu_runs):
    if len(cpu["tokens"]) != len(gpu["tokens"]):
        unexplained += 1
        continue
    for a, b in zip(cpu["tokens"], gpu["tokens"]):
        tokens += 1
        fa = {f["feature"]: f["activation"] for f in a["features"]}
        fb = {f["feature"]: f["activation"] for f in b["features"]}
        active += len(fa)
        if set(fa) == set(fb):
            continue
        differing += 1
        # A swap at the edge of the active set (the k-th value, or the threshold) is a tie
        # under rounding when the features that differ are within 1e-2 of the smallest
        # active value.
        edge = min(list(fa.values()) + list(fb.values()) or [0.0])
        for f in set(fa) ^ set(fb):
            value = fa.get(f, fb.get(f))
            if abs(value - edge) > 1e-2 * max(1.0, abs(edge)):
                unexplained += 1
                break
print(json.dumps({"tokens": tokens, "mean_active": round(active / max(tokens, 1), 1), "differing_active_sets": differing, "not_ties": unexplained}))
EOF
  ok=$(json_field "$WORK/encode-$name.json" "0 if r['not_ties'] == 0 and r['tokens'] > 0 else 1" || echo 1)
  record "dictionary encode, $name (GPU vs CPU)" "${ok:-1}" "$(cat "$WORK/encode-$name.json" 2>/dev/null)"
done

python3 - "$REFERENCE/index" "$WORK/index-$DEVICE" <<'EOF' >"$WORK/index-compare.json"
import json, sys
from collections import defaultdict
def rows(path):
    try:
        return [json.loads(line) for line in open(path)]
    except OSError:
        return []
cpu = {(r["dictionary_id"], r["feature"]): r for r in rows(f"{sys.argv[1]}/features.jsonl")}
gpu = {(r["dictionary_id"], r["feature"]): r for r in rows(f"{sys.argv[2]}/features.jsonl")}
bad_stats = [k for k in cpu if k not in gpu or any(abs(cpu[k][f] - gpu[k][f]) > 1e-2 * max(abs(cpu[k][f]), 1e-6) for f in ("density", "max_activation"))]
def tops(path):
    by = defaultdict(list)
    for r in rows(path):
        by[(r["dictionary_id"], r["feature"])].append(r)
    return by
tc, tg = tops(f"{sys.argv[1]}/examples.jsonl"), tops(f"{sys.argv[2]}/examples.jsonl")
bad_examples = 0
for k, a in tc.items():
    b = tg.get(k, [])
    sa = {(r["window"], r["max_position"]) for r in a}
    sb = {(r["window"], r["max_position"]) for r in b}
    if sa == sb:
        continue
    floor = min(r["max_activation"] for r in a) if a else 0.0
    extra = [r for r in a + b if (r["window"], r["max_position"]) in sa ^ sb]
    if any(abs(r["max_activation"] - floor) > 1e-2 * max(abs(floor), 1e-6) for r in extra):
        bad_examples += 1
print(json.dumps({"features": len(cpu), "features_on_device": len(gpu), "features_off": len(bad_stats), "features_with_other_top_examples": bad_examples}))
EOF
ok=$(json_field "$WORK/index-compare.json" "0 if r['features'] > 0 and r['features_off'] == 0 and r['features_with_other_top_examples'] == 0 else 1" || echo 1)
record "index of $TOKENS tokens (GPU vs CPU store)" "${ok:-1}" "$(cat "$WORK/index-compare.json" 2>/dev/null); $(json_field "$WORK/index-$DEVICE/index.json" "f\"{r['tokens']} tokens at {r['tokens'] / r['seconds']['wall']:.0f} tok/s in the pass\"" || true)"

# 5. Benchmarks (absolute figures hold on this machine only). GPU_CHECK_BENCH=1 runs them in
# a dry run too, at the sizes GPU_CHECK_BATCHES, _SEQ, _WIDE and _BENCH_TOKENS give.
if [ "$DEVICE" = cuda ] || [ "${GPU_CHECK_BENCH:-0}" = 1 ]; then
  # At 1,024 x 128 tokens the wide dictionary's f32 pre-activations alone take 34 GB, twice
  # that while the bias is added (in PyTorch too): the H200 holds it, an 80 GB card not.
  BATCHES=64,256,1024
  [ "$DEVICE" = cuda ] && [ "$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits | head -1)" -lt 120000 ] 2>/dev/null && BATCHES=64,256,512
  BATCHES="${GPU_CHECK_BATCHES:-$BATCHES}" SEQ="${GPU_CHECK_SEQ:-128}" WIDE="${GPU_CHECK_WIDE:-65536}"
  step bench-forward 240 "$LOUPE" bench forward --device "$DEVICE" --batch "$BATCHES" --seq "$SEQ" --layer 9 --encode --wide "$WIDE" --no-reference --json \
    >"$OUT/bench-forward-$DEVICE.json" 2>"$WORK/bench-forward.log" || status=1
  step bench-torch 240 python3 reference/bench_torch_gpu.py --device "$DEVICE" --model "$MODEL" --dictionary "$DICTIONARY" --batch "$BATCHES" --seq "$SEQ" --layer 9 --wide "$WIDE" \
    --json "$OUT/bench-torch-$DEVICE.json" >"$WORK/bench-torch.log" 2>&1 || status=1
  step bench-index 300 "$LOUPE" bench index --device "$DEVICE" --corpus "$CORPUS" --tokens "${GPU_CHECK_BENCH_TOKENS:-262144}" --scale 4 --json \
    >"$OUT/bench-index-$DEVICE.json" 2>"$WORK/bench-index.log" || status=1
  python3 - "$OUT" "$DEVICE" <<'EOF' | tee "$WORK/bench.txt" >>"$OUT/summary.txt"
import json, sys
out, device = sys.argv[1:3]
loupe, torch = json.load(open(f"{out}/bench-forward-{device}.json")), json.load(open(f"{out}/bench-torch-{device}.json"))
peak = loupe["matmul_peak_gflops"] / 1e3
print(f"bench forward on {torch['device']}: {loupe['dtype']} matmul peak {peak:.1f} TFLOP/s (loupe/candle), {torch['matmul_peak_tflops']:.1f} (torch)")
print(f"{'batch':>6} {'case':<48} {'loupe tok/s':>12} {'MFU':>6} {'torch tok/s':>12} {'ratio':>6}")
for row in loupe["results"]:
    t = next((r for r in torch["results"] if r["batch"] == row["batch"]), {})
    case = row["case"]
    key = "forward_tokens_per_second" if case.startswith("to layer") else None
    if "random latents" in case:
        key = next((k for k in t if k.startswith("wide-")), None)
    elif case.endswith(" latents"):
        key = "default_tokens_per_second"
    reference = t.get(key) if key else None
    ratio = f"{row['tokens_per_second'] / reference:.2f}x" if reference else "-"
    torch_figure = f"{reference:>12.0f}" if reference else f"{'-':>12}"
    print(f"{row['batch']:>6} {case:<48} {row['tokens_per_second']:>12.0f} {100 * row['fraction_of_peak']:>5.1f}% {torch_figure} {ratio:>6}")
index = json.load(open(f"{out}/bench-index-{device}.json"))
for run in index["runs"]:
    sec = run["seconds"]
    shares = ", ".join(f"{k} {100 * sec[k] / sec['pass']:.0f}%" for k in ("forward", "encode", "reduce", "tokenize") if k in sec)
    print(f"bench index: {run['tokens']} tokens at {run['tokens_per_s']:.0f} tok/s, {run['batch_windows']} windows a batch; of the pass: {shares}; commit {sec['commit']:.1f} s")
EOF
fi

# 6. Where the GPU time goes: each kernel's duration (Nsight Compute, clocks as found) over a
# short bench forward at the indexer's batch shape, grouped by kind.
if [ "$DEVICE" = cuda ] && command -v ncu >/dev/null; then
  step profile 240 ncu --clock-control none --metrics gpu__time_duration.sum --csv --print-units base --log-file "$WORK/ncu.csv" \
    "$LOUPE" bench forward --device cuda --batch 256 --layer 9 --encode --no-reference --repeats 1 --min-seconds 0 --no-peak --json >"$WORK/profile-bench.json" 2>"$WORK/profile.log"
  python3 - "$WORK/ncu.csv" "$OUT/bench-forward-cuda.json" <<'EOF' | tee "$WORK/profile.txt" >>"$OUT/summary.txt"
import csv, collections, sys
rows = [r for r in csv.DictReader(line for line in open(sys.argv[1]) if line.startswith('"')) if r.get("Metric Name") == "gpu__time_duration.sum"]
def kind(name):
    n = name.lower()
    for label, keys in [("matmul", ("gemm", "xmma", "cutlass", "sm90", "cublas")), ("attention softmax (loupe)", ("loupe_masked_softmax",)),
                        ("selection (loupe)", ("loupe_select",)), ("reduce/norm/softmax", ("reduce", "rmsnorm", "softmax", "fast_sum", "fast_max", "argmax")),
                        ("copy/cast/index", ("copy", "cast", "index", "gather", "where", "fill")), ("element-wise", ("unary", "binary", "affine", "bmul", "badd", "bsub", "bdiv", "usilu", "uexp", "powf", "relu"))]:
        if any(k in n for k in keys):
            return label
    return "other"
by = collections.defaultdict(lambda: [0, 0.0])
for r in rows:
    k = kind(r["Kernel Name"])
    by[k][0] += 1
    unit = {"nsecond": 1e-9, "usecond": 1e-6, "msecond": 1e-3, "second": 1.0}.get(r.get("Metric Unit"), 1e-9)
    by[k][1] += float(r["Metric Value"].replace(",", "")) * unit
total = sum(v[1] for v in by.values()) or 1.0
# 8 passes: 4 cases (to layer 9, all layers + logits, + each dictionary), a warm-up and a run each.
print(f"GPU time by kernel kind (ncu, batch 256 x 128, 8 passes: {len(rows)} kernels, {total * 1e3:.1f} ms of kernel time):")
for k, (n, s) in sorted(by.items(), key=lambda kv: -kv[1][1]):
    print(f"  {k:<28} {n:>6} launches {s * 1e3:>9.2f} ms {100 * s / total:>5.1f}%")
# The rest of a pass's wall time (unprofiled, bench forward at the same batch) is launch gaps,
# host-device copies and host work.
try:
    import json
    wall = sum(r["seconds"] for r in json.load(open(sys.argv[2]))["results"] if r["batch"] == 256)
    print(f"  the 4 passes' wall time at batch 256 (bench forward): {wall * 1e3:.1f} ms; their kernel time: {total / 2 * 1e3:.1f} ms ({100 * total / 2 / wall:.0f}%)")
except (OSError, ValueError, KeyError, ZeroDivisionError):
    pass
EOF
fi

# The report: every figure in one JSON, the outputs packed (without the stores and the raw
# activations, which hidden.json sums up).
python3 - "$WORK" "$OUT" "$DEVICE" "$(( $(date +%s) - started ))" <<'EOF'
import glob, json, os, sys
work, out, device, seconds = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
def load(path):
    try:
        return json.load(open(path))
    except (OSError, ValueError):
        return None
report = {"device": device, "seconds": seconds, "summary": open(f"{out}/summary.txt").read().splitlines(),
          "hidden": load(f"{work}/hidden.json"), "index": load(f"{work}/index-compare.json"),
          "encode": {os.path.basename(p)[7:-5]: load(p) for p in glob.glob(f"{work}/encode-*.json")},
          "steps": [line.split("\t") for line in open(f"{work}/steps.tsv").read().splitlines()] if os.path.exists(f"{work}/steps.tsv") else []}
json.dump(report, open(f"{out}/gpu_check.json", "w"), indent=1)
EOF
tar -C "$WORK" --exclude='activations-*.jsonl' --exclude=home --exclude=dictionary-variants --exclude=store -cJf "$OUT/results.tar.xz" .
echo "steps (name, seconds, exit code):"
column -t "$WORK/steps.tsv" 2>/dev/null || cat "$WORK/steps.tsv"
echo "results in $OUT ($(( $(date +%s) - started )) s)"
exit $status
