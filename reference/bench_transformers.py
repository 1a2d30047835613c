#!/usr/bin/env python3
"""Times transformers (torch, f32, CPU) on the forward pass that `loupe bench forward` times:
batches of `--batch` (a comma-separated list) x `--seq` tokens, each once stopped after
`--layer` and once through every layer with logits.

Two modes:
- by hand (default): best of `--repeats` timed runs per case after one warm-up; prints JSON
  with tokens/s for each batch size.
- `--serve` (what `loupe bench forward` runs): loads the model, prints `{"ready": true}`,
  then answers one request per stdin line, `BATCH CASE` (CASE is `to_layer` or `logits`), by
  running that pass once and printing `{"seconds": S}`. The bench alternates loupe's runs
  and these, so that both see the same state of a shared machine (on a VM whose speed moves
  by 10-40% from minute to minute, runs of one side after the other compared two machines).
"""
import argparse
import json
import os
import sys
import time

import torch
from transformers import AutoModelForCausalLM


class Reference:
    def __init__(self, model_path, batches, seq, layer):
        folder, name = os.path.split(model_path)
        self.model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32).eval()
        torch.manual_seed(0)
        self.inputs = {b: torch.randint(100, self.model.config.vocab_size, (b, seq)) for b in batches}
        self.layers = self.model.model.layers
        self.layer = layer

    def run_once(self, batch, case):
        """Seconds for one pass of `case` over the batch of `batch` sequences."""
        ids = self.inputs[batch]
        with torch.inference_mode():
            if case == "logits":
                self.model.model.layers = self.layers
                start = time.perf_counter()
                self.model(ids).logits
            elif case == "to_layer":
                # Stop after --layer: keep only the first layer+1 blocks of the decoder stack.
                self.model.model.layers = self.layers[: self.layer + 1]
                start = time.perf_counter()
                self.model.model(ids).last_hidden_state
            else:
                raise ValueError(f"case {case!r}: expected to_layer or logits")
            return time.perf_counter() - start


def serve(reference):
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        batch, case = line.split()
        print(json.dumps({"seconds": reference.run_once(int(batch), case)}), flush=True)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True, help="GGUF file")
    p.add_argument("--batch", default="32", help="batch sizes, comma-separated")
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--layer", type=int, default=15)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--serve", action="store_true", help="answer timing requests on stdin (see above)")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    batches = [int(b) for b in a.batch.split(",")]
    reference = Reference(a.model, batches, a.seq, a.layer)
    if a.serve:
        serve(reference)
        return
    results = []
    for b in batches:
        best = {}
        for case in ("logits", "to_layer"):
            reference.run_once(b, case)  # warm-up
            best[case] = min(reference.run_once(b, case) for _ in range(a.repeats))
        tokens = b * a.seq
        results.append({
            "batch": b,
            "to_layer_tokens_per_second": tokens / best["to_layer"],
            "logits_tokens_per_second": tokens / best["logits"],
        })
    print(json.dumps({"threads": a.threads, "results": results}))


if __name__ == "__main__":
    main()
