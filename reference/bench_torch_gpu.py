#!/usr/bin/env python3
"""The PyTorch peer of `loupe bench forward/index --device cuda` (issue 20): transformers'
SmolLM2 (from the GGUF file) run to layer `--layer`, then a TopK SAE encode (x - b_dec) @ W_enc
+ b_enc, top-k, ReLU, on the same batches of `--seq` tokens, in bf16 with f32 accumulation
(as loupe computes on a GPU; the SAE in f32). Timed with CUDA events after warm-ups; prints
JSON with tokens/s per batch size for the default dictionary and for a random dictionary of
`--wide` latents, and the bf16 matmul peak measured in the same run.

    python3 reference/bench_torch_gpu.py --model SmolLM2-135M-Instruct.Q4_1.gguf \
        --dictionary dictionaries/smollm2-135m-instruct/blocks.9.hook_resid_post-topk-4608

Runs on the CPU too (`--device cpu`, f32) so that it can be checked where there is no GPU.
"""
import argparse
import json
import os
import time

import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM


def timer(device):
    """Best seconds of `fn` over `repeats` runs after two warm-ups, synchronised."""
    def best(fn, repeats):
        for _ in range(2):
            fn()
        times = []
        for _ in range(repeats):
            if device.type == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                torch.cuda.synchronize()
                times.append(start.elapsed_time(end) / 1e3)
            else:
                t = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t)
        return min(times)
    return best


def matmul_peak_tflops(device, dtype, size, best):
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    return 2 * size**3 / best(lambda: a @ b, 10) / 1e12


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True, help="GGUF file")
    p.add_argument("--dictionary", required=True, help="a SAELens TopK folder (cfg.json + sae_weights.safetensors)")
    p.add_argument("--batch", default="64,256,1024", help="batch sizes, comma-separated")
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--layer", type=int, default=9)
    p.add_argument("--wide", type=int, default=65536, help="latents of the random wide dictionary")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--device", default="cuda")
    p.add_argument("--json", help="also write the JSON here")
    a = p.parse_args()
    device = torch.device(a.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    best = timer(device)
    folder, name = os.path.split(a.model)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=dtype).to(device).eval()
    model.model.layers = model.model.layers[: a.layer + 1]
    cfg = json.load(open(os.path.join(a.dictionary, "cfg.json")))
    weights = load_file(os.path.join(a.dictionary, "sae_weights.safetensors"))
    k = int(cfg["k"])
    d_in = int(cfg["d_in"])
    saes = {"default": {name: weights[name].to(device, torch.float32) for name in ("W_enc", "b_enc", "b_dec")}}
    g = torch.Generator(device="cpu").manual_seed(0)
    saes[f"wide-{a.wide}"] = {
        "W_enc": (torch.randn(d_in, a.wide, generator=g) / d_in**0.5).to(device),
        "b_enc": torch.zeros(a.wide).to(device),
        "b_dec": torch.zeros(d_in).to(device),
    }

    def encode(x, sae):
        pre = (x.float() - sae["b_dec"]) @ sae["W_enc"] + sae["b_enc"]
        values, indices = pre.topk(k, dim=-1)
        return values.relu(), indices

    peak = matmul_peak_tflops(device, dtype, 8192 if device.type == "cuda" else 1024, best)
    results = []
    with torch.inference_mode():
        for batch in [int(b) for b in a.batch.split(",")]:
            ids = torch.randint(100, model.config.vocab_size, (batch, a.seq), generator=g).to(device)
            tokens = batch * a.seq
            forward = best(lambda: model.model(ids).last_hidden_state, a.repeats)
            row = {"batch": batch, "seq": a.seq, "forward_tokens_per_second": tokens / forward}
            for label, sae in saes.items():
                both = best(lambda: encode(model.model(ids).last_hidden_state.reshape(-1, d_in), sae), a.repeats)
                row[f"{label}_tokens_per_second"] = tokens / both
            results.append(row)
            print(json.dumps(row), flush=True)
    report = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "dtype": str(dtype),
        "torch": torch.__version__,
        "layer": a.layer,
        "k": k,
        "matmul_peak_tflops": peak,
        "results": results,
    }
    print(json.dumps(report))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
