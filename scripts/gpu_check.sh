#!/usr/bin/env bash
# The GPU checks of the CUDA build, run ON the GPU machine (issue 20), from the repository
# root, with what scripts/gpu_carry.sh packed here (the CUDA binary, the model, the demo
# corpus). Writes every result under $OUT (default target/gpu-out): gpu_check.json plus the
# raw outputs and logs. Nothing is built or downloaded there.
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
#   5. benchmarks: `loupe bench forward --device cuda` and `loupe bench index --device cuda`
#      (tokens/s, MFU against the bf16 matmul peak measured in the same run) and PyTorch on
#      the same batches (reference/bench_torch_gpu.py), as ratios.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-target/gpu-out}"
mkdir -p "$OUT"
GPU=target/gpu
# A dry run of the whole script on a machine without a GPU: GPU_CHECK_DEVICE=cpu with
# GPU_CHECK_LOUPE, GPU_CHECK_MODEL and GPU_CHECK_CORPUS pointing at local files (f32 only).
DEVICE="${GPU_CHECK_DEVICE:-cuda}"
LOUPE="${GPU_CHECK_LOUPE:-$GPU/loupe}"
MODEL="${GPU_CHECK_MODEL:-$GPU/SmolLM2-135M-Instruct.Q4_1.gguf}"
CORPUS="${GPU_CHECK_CORPUS:-$GPU/demo.jsonl}"
TOKENS="${GPU_CHECK_TOKENS:-1000000}"
PRECISIONS="f32 bf16"
[ "$DEVICE" = cpu ] && PRECISIONS="f32"
mkdir -p "$GPU"
export LOUPE_HOME="$GPU/home" LOUPE_MODEL="$MODEL" LOUPE_LOG=warn

# Unpack what was carried (the binary compressed, the model in parts: each call carries
# at most 64 MiB).
[ -x "$LOUPE" ] || python3 -c "import lzma,shutil,sys; shutil.copyfileobj(lzma.open('$GPU/loupe.xz'), open('$LOUPE','wb'))"
chmod +x "$LOUPE"
[ -f "$MODEL" ] || cat "$GPU"/model.part-* >"$MODEL"
# transformers reads the GGUF model through `gguf` (carried as a wheel).
if ! python3 -c "import gguf" 2>/dev/null; then
  python3 -m pip install --quiet --no-deps --target "$GPU/py" "$GPU"/wheels/gguf-*.whl
  export PYTHONPATH="$GPU/py${PYTHONPATH:+:$PYTHONPATH}"
fi
# PyTorch's CUDA 13 libraries (cuBLAS, cuRAND, NVRTC, the runtime) for the binary.
TORCH_NVIDIA=$(python3 -c "import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], 'cu13', 'lib'))" 2>/dev/null || true)
export LD_LIBRARY_PATH="${TORCH_NVIDIA}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
{ nvidia-smi; ldd "$LOUPE" | grep -E "cuda|cublas|curand|nvrtc|not found"; } >"$OUT/environment.txt" 2>&1
if ldd "$LOUPE" | grep -q "not found"; then
  echo "FAIL: libraries missing (see $OUT/environment.txt)"; exit 1
fi

status=0
record() { # name pass(0/1) figure
  echo "$([ "$2" = 0 ] && echo PASS || echo FAIL) $1: $3" | tee -a "$OUT/summary.txt"
  [ "$2" = 0 ] || status=1
}

# Runs `COMMAND... -- TEXT` for each fixture prompt (prompts hold newlines and tabs, so they
# go through Python, not `read`) and writes one compact JSON value per prompt to OUT_FILE
# ({"error": ...} where a run failed), its stderr to OUT_FILE's .log.
each_prompt() { # OUT_FILE COMMAND...
  python3 - "$@" <<'EOF'
import json, subprocess, sys
out, command = sys.argv[1], sys.argv[2:]
prompts = [p["text"] for p in json.load(open("engine/tests/fixtures/smollm2_prompts.json"))["prompts"]]
with open(out, "w") as values, open(out[: -len(".jsonl")] + ".log", "w") as log:
    for text in prompts:
        run = subprocess.run(command + ["--", text], capture_output=True, text=True)
        log.write(run.stderr)
        try:
            value = json.loads(run.stdout)
        except ValueError:
            value = {"error": run.stderr.strip()[-500:] or f"exit {run.returncode}"}
        values.write(json.dumps(value) + "\n")
EOF
}

# 1. Hidden states.
HOOKS=(hook_embed blocks.0.hook_resid_post blocks.9.hook_resid_post blocks.20.hook_resid_post blocks.29.hook_resid_post)
hook_flags=()
for hook in "${HOOKS[@]}"; do hook_flags+=(--hook "$hook"); done
for precision in $PRECISIONS; do
  each_prompt "$OUT/activations-$precision.jsonl" "$LOUPE" activations "${hook_flags[@]}" --json --values --device "$DEVICE" --precision "$precision"
done
python3 - "$OUT" <<'EOF' >>"$OUT/hidden.txt"
import json, sys
import numpy as np
from safetensors.numpy import load_file
out = sys.argv[1]
ref = load_file("engine/tests/fixtures/smollm2_hidden.safetensors")
bounds = {"f32": {h: 1e-3 for h in ["hook_embed", "blocks.0.hook_resid_post", "blocks.9.hook_resid_post", "blocks.20.hook_resid_post", "blocks.29.hook_resid_post"]},
          "bf16": {"hook_embed": 5e-2, "blocks.0.hook_resid_post": 5e-2, "blocks.9.hook_resid_post": 5e-2, "blocks.20.hook_resid_post": 1e-1, "blocks.29.hook_resid_post": 1e-1}}
result = {}
for precision, bound in bounds.items():
    if not __import__("os").path.exists(f"{out}/activations-{precision}.jsonl"):
        continue
    worst = {}
    for i, line in enumerate(open(f"{out}/activations-{precision}.jsonl")):
        run = json.loads(line)
        if "hooks" not in run:  # the run failed: the check fails
            worst = {h: float("inf") for h in bound}
            break
        for hook, b in bound.items():
            got = np.array(run["hooks"][hook]["values"], dtype=np.float64)
            want = ref[f"{i}/{hook}"].astype(np.float64).reshape(got.shape)
            rel = np.linalg.norm(got - want, axis=-1) / np.maximum(np.linalg.norm(want, axis=-1), 1e-12)
            worst[hook] = max(worst.get(hook, 0.0), float(rel.max()))
    result[precision] = {h: {"max_relative_error": worst[h], "bound": bound[h], "pass": worst[h] <= bound[h]} for h in bound}
json.dump(result, open(f"{out}/hidden.json", "w"), indent=1)
print(json.dumps(result))
EOF
for precision in $PRECISIONS; do
  ok=$(python3 -c "import json; r=json.load(open('$OUT/hidden.json'))['$precision']; print(0 if all(v['pass'] for v in r.values()) else 1)" 2>/dev/null || echo 1)
  figure=$(python3 -c "import json; r=json.load(open('$OUT/hidden.json'))['$precision']; print(', '.join(f\"{h} {v['max_relative_error']:.2e}\" for h, v in r.items()))" 2>/dev/null || echo "no result")
  record "hidden states ($precision)" "$ok" "$figure"
done

# 2. Greedy generation in f32.
user=$(python3 -c "import json; print(json.load(open('engine/tests/fixtures/smollm2_prompts.json'))['chat']['user'])")
n=$(python3 -c "import json; print(len(json.load(open('engine/tests/fixtures/smollm2_prompts.json'))['chat']['greedy_completion_ids']))")
"$LOUPE" generate "$user" --max-tokens "$n" --json --device "$DEVICE" --precision f32 >"$OUT/generate.json" 2>"$OUT/generate.log"
ok=$(python3 -c "
import json
want = json.load(open('engine/tests/fixtures/smollm2_prompts.json'))['chat']['greedy_completion_ids']
got = json.load(open('$OUT/generate.json'))['completion_ids']
print(0 if got[:len(want)] == want else 1)" 2>/dev/null || echo 1)
record "greedy generation (f32)" "$ok" "$n tokens"

# 3. Dictionary encode, GPU against CPU: the default TopK dictionary, and the same weights as
# a JumpReLU (threshold 1.0: the GPU packs each token's active latents) and as a ReLU SAE
# (thousands active a token: rows past the kernel's room of 1,024 are read densely).
variants="$GPU/dictionary-variants"
python3 - dictionaries/smollm2-135m-instruct/blocks.9.hook_resid_post-topk-4608 "$variants" <<'EOF'
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
encode_check() { # NAME DICTIONARY
  for device in cpu "$DEVICE"; do
    each_prompt "$OUT/encode-$1-$device.jsonl" "$LOUPE" dict encode --dictionary "$2" --top 4608 --json --device "$device"
  done
  python3 - "$OUT" "$DEVICE" "$1" <<'EOF' >"$OUT/encode-$1.txt"
import json, sys
out, device, name = sys.argv[1:4]
tokens = differing = unexplained = active = 0
for cpu, gpu in zip(open(f"{out}/encode-{name}-cpu.jsonl"), open(f"{out}/encode-{name}-{device}.jsonl")):
    cpu, gpu = json.loads(cpu), json.loads(gpu)
    if "tokens" not in cpu or "tokens" not in gpu or len(cpu["tokens"]) != len(gpu["tokens"]):
        unexplained += 1  # a failed run or another tokenization fails the check
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
  ok=$(python3 -c "import json; r = json.load(open('$OUT/encode-$1.txt')); print(0 if r['not_ties'] == 0 and r['tokens'] > 0 else 1)" 2>/dev/null || echo 1)
  record "dictionary encode, $1 (GPU vs CPU)" "$ok" "$(cat "$OUT/encode-$1.txt" 2>/dev/null)"
}
encode_check topk dictionaries/smollm2-135m-instruct/blocks.9.hook_resid_post-topk-4608
encode_check jumprelu "$variants/jumprelu"
encode_check relu "$variants/relu"

# 4. An index job of $TOKENS tokens, GPU against CPU.
for device in cpu "$DEVICE"; do
  rm -rf "$GPU/store-$device"
  /usr/bin/time -v "$LOUPE" index --corpus "$CORPUS" --store "$GPU/store-$device" --max-tokens "$TOKENS" --json --device "$device" \
    >"$OUT/index-$device.json" 2>"$OUT/index-$device.log"
  "$LOUPE" export --store "$GPU/store-$device" --table features --no-decoders --out "$GPU/features-$device.jsonl" 2>>"$OUT/index-$device.log"
  "$LOUPE" export --store "$GPU/store-$device" --table examples --out "$GPU/examples-$device.jsonl" 2>>"$OUT/index-$device.log"
done
python3 - "$GPU" "$DEVICE" <<'EOF' >"$OUT/index-compare.txt"
import json, sys
from collections import defaultdict
d = sys.argv[1]
def rows(path):
    return [json.loads(line) for line in open(path)]
cpu = {(r["dictionary_id"], r["feature"]): r for r in rows(f"{d}/features-cpu.jsonl")}
gpu = {(r["dictionary_id"], r["feature"]): r for r in rows(f"{d}/features-{sys.argv[2]}.jsonl")}
bad_stats = [k for k in cpu if k not in gpu or any(abs(cpu[k][f] - gpu[k][f]) > 1e-2 * max(abs(cpu[k][f]), 1e-6) for f in ("density", "max_activation"))]
def tops(path):
    by = defaultdict(list)
    for r in rows(path):
        if r.get("kind") == "Top":
            by[(r["dictionary_id"], r["feature"])].append(r)
    return by
tc, tg = tops(f"{d}/examples-cpu.jsonl"), tops(f"{d}/examples-{sys.argv[2]}.jsonl")
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
print(json.dumps({"features": len(cpu), "features_off": len(bad_stats), "features_with_other_top_examples": bad_examples}))
EOF
ok=$(python3 -c "import json; r=json.load(open('$OUT/index-compare.txt')); print(0 if r['features_off'] == 0 and r['features_with_other_top_examples'] == 0 else 1)" 2>/dev/null || echo 1)
record "index of $TOKENS tokens (GPU vs CPU store)" "$ok" "$(cat "$OUT/index-compare.txt" 2>/dev/null)"

# 5. Benchmarks (absolute figures hold on this machine only).
if [ "$DEVICE" = cuda ]; then
  "$LOUPE" bench forward --device cuda --batch 64,256,1024 --layer 9 --no-reference --json >"$OUT/bench-forward-cuda.json" 2>"$OUT/bench-forward-cuda.log" || status=1
  "$LOUPE" bench index --device cuda --corpus "$CORPUS" --tokens 262144 --scale 4 --json >"$OUT/bench-index-cuda.json" 2>"$OUT/bench-index-cuda.log" || status=1
  python3 reference/bench_torch_gpu.py --model "$MODEL" --dictionary dictionaries/smollm2-135m-instruct/blocks.9.hook_resid_post-topk-4608 \
    --json "$OUT/bench-torch-gpu.json" >"$OUT/bench-torch-gpu.log" 2>&1 || status=1
fi
echo "results in $OUT"
exit $status
