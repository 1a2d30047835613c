#!/usr/bin/env python3
"""Loads SAELens-format folders with SAELens itself and compares its encode and
reconstruction with the expected values (the numpy reference fixtures), or with loupe's
output for a folder that `loupe train` wrote.

    pip install sae-lens
    python3 reference/saelens_check.py                      # every saelens_* fixture
    python3 reference/saelens_check.py DIR [--inputs X.npy] # one folder, e.g. a trained SAE

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


def main():
    args = sys.argv[1:]
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
