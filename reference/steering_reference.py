#!/usr/bin/env python3
"""Reference fixtures for steering, written by Hugging Face transformers forward hooks on the
same weights loupe runs (the GGUF that setup fetches, dequantized to f32 by transformers) and
numpy for the default SAE (blocks.9.hook_resid_post TopK, from its safetensors file).

    pip install torch transformers gguf numpy safetensors
    python3 reference/steering_reference.py

The operations, as published (x: the residual stream at blocks.9.hook_resid_post, every
position; d = W_dec[f]; d̂ = d/|d|; f(x) the SAE's encoded activation of feature f):
  ADD         x' = x + s·d
  CLAMP       x' = x + (v - f(x))·d          (Anthropic: the SAE's error term is kept)
  ORTHOGONAL  x' = x - (x·d̂)d̂ + s·d̂          (Neuronpedia's orthogonal decomposition)
  SAE (SAELens TopK): h = (x - b_dec)·W_enc + b_enc; f = ReLU(top-k(h, 32)).

Writes engine/tests/fixtures/steering_reference.safetensors: for each prompt and case
(none, add, clamp, orthogonal) the logits at every position for a fixed set of token ids
(every position's reference top-32 under every case, and 512 seeded random ids), plus the
prompts' ids; and steering_reference.json: the prompts, features, strengths, token ids.
"""
import json
import os
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import load_file, save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "engine" / "tests" / "fixtures"
LOUPE_HOME = Path(os.environ.get("LOUPE_HOME", Path.home() / ".cache" / "loupe"))
GGUF_DIR = LOUPE_HOME / "models"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
SAE_DIR = ROOT / "dictionaries" / "smollm2-135m-instruct" / "blocks.9.hook_resid_post-topk-4608"
LAYER = 9
K = 32

PROMPTS = [
    "The old sailor looked at the sea and said",
    "In the kitchen, my grandmother was baking bread while",
    "The stock market fell sharply today after the central bank",
]


class Sae:
    def __init__(self):
        w = load_file(str(SAE_DIR / "sae_weights.safetensors"))
        self.W_enc = w["W_enc"].astype(np.float64)
        self.b_enc = w["b_enc"].astype(np.float64)
        self.W_dec = w["W_dec"].astype(np.float64)
        self.b_dec = w["b_dec"].astype(np.float64)

    def encode(self, x):
        h = (x - self.b_dec) @ self.W_enc + self.b_enc
        f = np.zeros_like(h)
        top = np.argsort(-h, axis=-1, kind="stable")[..., :K]
        np.put_along_axis(f, top, np.maximum(np.take_along_axis(h, top, axis=-1), 0.0), axis=-1)
        return f


def run(model, ids, edit):
    """Logits [seq, vocab] with `edit` (numpy float64 [seq, d] -> [seq, d]) at layer 9's output."""
    def hook(module, inputs, output):
        hidden = output[0] if isinstance(output, tuple) else output
        x = hidden[0].detach().double().numpy()
        edited = torch.from_numpy(edit(x)).to(hidden.dtype).unsqueeze(0)
        return (edited,) + tuple(output[1:]) if isinstance(output, tuple) else edited
    handle = model.model.layers[LAYER].register_forward_hook(hook)
    try:
        with torch.no_grad():
            return model(torch.tensor([ids])).logits[0].double().numpy()
    finally:
        handle.remove()


def main():
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    tok = AutoTokenizer.from_pretrained(GGUF_DIR, gguf_file=GGUF_NAME)
    model = AutoModelForCausalLM.from_pretrained(GGUF_DIR, gguf_file=GGUF_NAME, dtype=torch.float32).eval()
    sae = Sae()
    cases = {}
    meta = {"prompts": [], "layer": LAYER, "hook": f"blocks.{LAYER}.hook_resid_post"}
    for p, prompt in enumerate(PROMPTS):
        ids = tok(prompt, add_special_tokens=False)["input_ids"]
        clean = []

        def keep_clean(x):
            clean.append(x)
            return x
        run(model, ids, keep_clean)
        acts = sae.encode(clean[0])
        # The feature strongest at the last position: it is active there, so CLAMP has work
        # to do; ADD and ORTHOGONAL use another feature, the strongest at position 1.
        clamp_feature = int(np.argmax(acts[-1]))
        add_feature = int(np.argmax(acts[1]))
        d_add = sae.W_dec[add_feature]
        unit = d_add / np.linalg.norm(d_add)
        d_clamp = sae.W_dec[clamp_feature]
        add_s, clamp_v, orth_s = 12.0, 3.0 * float(acts[-1, clamp_feature]), 25.0
        edits = {
            "none": lambda x: x,
            "add": lambda x: x + add_s * d_add,
            "clamp": lambda x: x + (clamp_v - sae.encode(x)[:, clamp_feature:clamp_feature + 1]) * d_clamp,
            "orthogonal": lambda x: x - (x @ unit)[:, None] * unit + orth_s * unit,
        }
        for name, edit in edits.items():
            cases[f"p{p}.{name}"] = run(model, ids, edit)
        cases[f"p{p}.ids"] = np.array(ids, dtype=np.int64)
        meta["prompts"].append({"text": prompt, "ids": ids, "add_feature": add_feature, "add_strength": add_s,
                                "clamp_feature": clamp_feature, "clamp_value": clamp_v, "orthogonal_feature": add_feature,
                                "orthogonal_strength": orth_s})
    rng = np.random.default_rng(7)
    vocab = next(v for k, v in cases.items() if not k.endswith(".ids")).shape[1]
    keep = set(rng.choice(vocab, 512, replace=False).tolist())
    for k, v in cases.items():
        if not k.endswith(".ids"):
            keep.update(np.argsort(-v, axis=1)[:, :32].ravel().tolist())
    keep = np.array(sorted(keep), dtype=np.int64)
    tensors = {"token_ids": keep}
    for k, v in cases.items():
        tensors[k] = v if k.endswith(".ids") else np.ascontiguousarray(v[:, keep], dtype=np.float32)
    save_file(tensors, str(OUT / "steering_reference.safetensors"))
    (OUT / "steering_reference.json").write_text(json.dumps(meta, indent=1) + "\n")
    print("wrote", OUT / "steering_reference.safetensors", "with", len(keep), "token ids per position")


if __name__ == "__main__":
    main()
