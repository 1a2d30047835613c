#!/usr/bin/env python3
"""A small GGUF with one tensor of every type the engine dequantizes, and the f32 values
that gguf-py (llama.cpp's own Python package) dequantizes them to.

    python3 reference/gguf_quant_fixture.py   # needs: pip install gguf numpy safetensors

Writes engine/tests/fixtures/quants.gguf and quants_reference.safetensors (committed).
Types gguf-py can quantize are quantized from random values; for the K-quants, which it can
only dequantize, blocks are random bytes with their f16 scale fields set to sane values.
"""
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType as T, GGML_QUANT_SIZES, GGUFWriter
from gguf.quants import dequantize, quantize
from safetensors.numpy import save_file

OUT = Path(__file__).resolve().parent.parent / "engine" / "tests" / "fixtures"
ROWS, COLS = 4, 512

QUANTIZABLE = [T.F16, T.BF16, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0]
# Byte offsets of the f16 super-block scales (d, and dmin where present) in each K block.
K_SCALES = {T.Q2_K: [80, 82], T.Q3_K: [108], T.Q4_K: [0, 2], T.Q5_K: [0, 2], T.Q6_K: [208]}


def main():
    rng = np.random.default_rng(2024)
    writer = GGUFWriter(OUT / "quants.gguf", arch="llama")
    reference = {}
    values = rng.standard_normal((ROWS, COLS)).astype(np.float32)
    writer.add_tensor("f32", values)
    reference["f32"] = values
    for qtype in QUANTIZABLE:
        raw = quantize(values, qtype)
        name = qtype.name.lower()
        writer.add_tensor(name, raw, raw_dtype=qtype)
        reference[name] = dequantize(raw, qtype).astype(np.float32).reshape(ROWS, COLS)
    for qtype, offsets in K_SCALES.items():
        block_elems, block_bytes = GGML_QUANT_SIZES[qtype]
        blocks = ROWS * COLS // block_elems
        raw = rng.integers(0, 256, size=(blocks, block_bytes), dtype=np.uint8)
        for off in offsets:
            scales = rng.uniform(0.01, 0.1, size=blocks).astype(np.float16)
            raw[:, off:off + 2] = scales.view(np.uint8).reshape(blocks, 2)
        raw = raw.reshape(ROWS, COLS // block_elems * block_bytes)
        name = qtype.name.lower()
        writer.add_tensor(name, raw, raw_dtype=qtype)
        reference[name] = dequantize(raw, qtype).astype(np.float32).reshape(ROWS, COLS)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    save_file(reference, OUT / "quants_reference.safetensors")
    print("wrote", sorted(reference))


if __name__ == "__main__":
    main()
