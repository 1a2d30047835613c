#!/usr/bin/env python3
"""Times transformers (torch, f32, CPU) on the forward pass that `loupe bench forward` times:
batches of `--batch` (a comma-separated list) x `--seq` tokens, each once stopped after
`--layer` and once through every layer with logits. Prints JSON with tokens/s for each batch
size. Called by `loupe bench forward`.
"""
import argparse
import json
import os
import time

import torch
from transformers import AutoModelForCausalLM


def best_time(fn, repeats):
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True, help="GGUF file")
    p.add_argument("--batch", default="32", help="batch sizes, comma-separated")
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--layer", type=int, default=15)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    folder, name = os.path.split(a.model)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32).eval()
    torch.manual_seed(0)
    batches = [int(b) for b in a.batch.split(",")]
    inputs = {b: torch.randint(100, model.config.vocab_size, (b, a.seq)) for b in batches}
    layers = model.model.layers
    results = []
    with torch.inference_mode():
        for b in batches:
            ids = inputs[b]
            model.model.layers = layers
            full = best_time(lambda: model(ids).logits, a.repeats)
            # Stop after --layer: keep only the first layer+1 blocks of the decoder stack.
            model.model.layers = layers[: a.layer + 1]
            to_layer = best_time(lambda: model.model(ids).last_hidden_state, a.repeats)
            tokens = b * a.seq
            results.append({
                "batch": b,
                "to_layer_tokens_per_second": tokens / to_layer,
                "logits_tokens_per_second": tokens / full,
            })
    print(json.dumps({"threads": a.threads, "results": results}))


if __name__ == "__main__":
    main()
