#!/usr/bin/env python3
"""Loads SAELens-format folders with SAELens itself and compares its encode and
reconstruction with the expected values (the numpy reference fixtures), or with loupe's
output for a folder that `loupe train` wrote.

    pip install sae-lens
    python3 reference/saelens_check.py                      # every saelens_* fixture
    python3 reference/saelens_check.py DIR [--inputs X.npy] # one folder, e.g. a trained SAE
    python3 reference/saelens_check.py --default            # fixture for the default dictionary

--default runs SmolLM2 (transformers, from the GGUF that setup installs) on a few texts,
encodes its blocks.9.hook_resid_post activations with SAELens and the shipped default
dictionary, and writes engine/tests/fixtures/default_dictionary_saelens.safetensors.

For a folder without expected.safetensors, prints SAELens' encode of random inputs scaled
to the folder's d_in as JSON (for comparison with `loupe`), after checking that it loads.
"""
import json
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import load_file
from sae_lens import SAE

FIXTURES = Path(__file__).resolve().parent.parent / "engine" / "tests" / "fixtures" / "dictionaries"


def rel(a, b):
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def check_fixture(folder):
    sae = SAE.load_from_disk(str(folder), device="cpu")
    expected = load_file(str(folder / "expected.safetensors"))
    x = torch.from_numpy(expected["x"])
    with torch.no_grad():
        acts = sae.encode(x).numpy()
        recon = sae(x).numpy() if not hasattr(sae, "W_skip") else (sae.decode(sae.encode(x)) + x @ sae.W_skip.T).numpy()
    return type(sae).__name__, rel(acts, expected["acts"]), rel(recon, expected["reconstruction"])


DEFAULT_DICTIONARY = Path(__file__).resolve().parent.parent / "dictionaries" / "smollm2-135m-instruct" / "blocks.9.hook_resid_post-topk-4608"
TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "In the beginning God created the heaven and the earth.",
    "fn main() { println!(\"{}\", 40 + 2); }",
    "A fortune: you will be hungry again in one hour.",
]


def write_default_fixture():
    import os
    from transformers import AutoModelForCausalLM, AutoTokenizer
    home = Path(os.environ.get("LOUPE_HOME", Path.home() / ".cache" / "loupe"))
    gguf = "SmolLM2-135M-Instruct.Q4_1.gguf"
    tok = AutoTokenizer.from_pretrained(home / "models", gguf_file=gguf)
    model = AutoModelForCausalLM.from_pretrained(home / "models", gguf_file=gguf, dtype=torch.float32).eval()
    rows = []
    with torch.no_grad():
        for text in TEXTS:
            ids = tok(text, return_tensors="pt").input_ids
            hidden = model(ids, output_hidden_states=True).hidden_states[10][0]  # output of layer 9
            rows.append(hidden[1:])  # position 0 is the attention sink, left out as in training
    x = torch.cat(rows)
    sae = SAE.load_from_disk(str(DEFAULT_DICTIONARY), device="cpu", dtype="float32")
    with torch.no_grad():
        acts = sae.encode(x)
        recon = sae.decode(acts)
    out = FIXTURES.parent / "default_dictionary_saelens.safetensors"
    from safetensors.numpy import save_file
    save_file({"x": x.numpy(), "acts": acts.numpy(), "reconstruction": recon.numpy()}, str(out))
    print(f"wrote {out}: {x.shape[0]} tokens, L0 {(acts > 0).sum(1).float().mean():.1f}, "
          f"explained variance {1 - ((recon - x) ** 2).sum() / ((x - x.mean(0)) ** 2).sum():.3f}")


def main():
    args = sys.argv[1:]
    if args == ["--default"]:
        write_default_fixture()
        return
    if not args:
        worst = 0.0
        for folder in sorted(FIXTURES.glob("saelens_*")):
            try:
                kind, enc, rec = check_fixture(folder)
            except Exception as e:  # report and go on: one unsupported case should not hide the rest
                print(f"{folder.name}: SAELens could not load it: {e}")
                continue
            worst = max(worst, enc, rec)
            print(f"{folder.name}: {kind} encode {enc:.1e} reconstruction {rec:.1e}")
        print(f"worst relative error against the numpy reference: {worst:.1e}")
        return
    folder = Path(args[0])
    sae = SAE.load_from_disk(str(folder), device="cpu", dtype="float32")
    cfg = json.loads((folder / "cfg.json").read_text())
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, cfg["d_in"])).astype(np.float32) * 3
    if "--inputs" in args:
        x = np.load(args[args.index("--inputs") + 1]).astype(np.float32)
    with torch.no_grad():
        acts = sae.encode(torch.from_numpy(x)).numpy()
    print(json.dumps({"class": type(sae).__name__, "architecture": cfg["architecture"],
                      "active_per_token": [int(n) for n in (acts > 0).sum(axis=1)],
                      "indices": [np.nonzero(r)[0].tolist() for r in acts],
                      "values": [r[np.nonzero(r)[0]].tolist() for r in acts]}))


if __name__ == "__main__":
    main()
