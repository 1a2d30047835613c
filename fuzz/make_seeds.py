"""Writes the fuzz targets' seed corpora (fuzz/corpus/<target>/) from the repository's own
fixtures and a few hand-made inputs. Run from the repository root:
    python3 fuzz/make_seeds.py        (needs numpy and pyarrow for the Parquet seeds)
libFuzzer adds what it finds to these folders when run by scripts/fuzz.sh; inputs that once
crashed a parser are kept here as regression cases."""

import io
import json
import pathlib
import struct

SEP = b"\n--8<--\n"
ROOT = pathlib.Path("fuzz/corpus")
FIX = pathlib.Path("engine/tests/fixtures")
DICTS = FIX / "dictionaries"


def put(target, name, data):
    folder = ROOT / target
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(data)


def gguf_string(s):
    b = s.encode()
    return struct.pack("<Q", len(b)) + b


def minimal_gguf():
    # GGUF v3: one metadata pair (general.architecture = "llama", type 8 = string), one f32
    # tensor "token_embd.weight" of shape [4, 2], aligned to 32 bytes.
    kv = gguf_string("general.architecture") + struct.pack("<I", 8) + gguf_string("llama")
    info = gguf_string("token_embd.weight") + struct.pack("<I", 2) + struct.pack("<QQ", 4, 2) + struct.pack("<I", 0) + struct.pack("<Q", 0)
    head = b"GGUF" + struct.pack("<IQQ", 3, 1, 1) + kv + info
    head += b"\0" * ((32 - len(head) % 32) % 32)
    return head + struct.pack("<8f", *range(8))


def main():
    # Seeds are (over)written; inputs that once crashed a parser (crash-*) stay.
    put("gguf", "quants", (FIX / "quants.gguf").read_bytes())
    put("gguf", "minimal", minimal_gguf())
    tokenizer = json.dumps({"version": "1.0", "model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2}, "merges": ["a b"]}}).encode()
    put("hf_model", "tiny_llama", (FIX / "tiny_llama/config.json").read_bytes() + SEP + (FIX / "tiny_llama/model.safetensors").read_bytes() + SEP + tokenizer)
    for name in ["saelens_topk", "saelens_jumprelu", "saelens_gated", "saelens_transcoder", "saelens_standard"]:
        put("saelens", name, (DICTS / name / "cfg.json").read_bytes() + SEP + (DICTS / name / "sae_weights.safetensors").read_bytes())
    for name, sub in [("sparsify_topk", "layers.1"), ("sparsify_groupmax", "layers.1")]:
        folder = DICTS / name / sub
        put("sparsify", name, (folder / "cfg.json").read_bytes() + SEP + (folder / "sae.safetensors").read_bytes())
    put("gemma_scope_npz", "tiny.npz", (DICTS / "gemma_scope/gemma-scope-tiny-res/layer_1/width_80/average_l0_9/params.npz").read_bytes())
    for monitor in sorted(pathlib.Path("monitors").glob("*.json")):
        put("monitor_json", monitor.name, monitor.read_bytes())
    put("monitor_json", "feature.json", json.dumps({"name": "f", "description": "one feature", "detectors": [
        {"signal": {"feature": {"dictionary_id": "default", "feature": 12}}, "aggregation": "max", "threshold": 3.0, "severity": "high", "action": "block"}]}).encode())
    put("corpus_jsonl", "lines.jsonl", b'{"text": "The cat sat on the mat."}\n{"text": "Caf\\u00e9 \xe2\x9c\x93"}\n{"id": 3}\n\n{"text": ""}\n{"text": "end"}')
    put("corpus_jsonl", "bad_utf8.jsonl", b'{"text": "ok"}\n{"text": "\xff\xfe"}\n')
    put("corpus_text", "paragraphs.txt", b"First paragraph, two\nlines.\n\nSecond paragraph.\n\n\n\nThird \xe2\x80\x94 with a dash.\n")
    import pyarrow as pa
    import pyarrow.parquet as pq
    for name, table in [("text.parquet", pa.table({"text": ["a small document", "another one", None, ""], "id": [1, 2, 3, 4]})),
                        ("content.parquet", pa.table({"content": ["only a content column"]}))]:
        sink = io.BytesIO()
        pq.write_table(table, sink)
        put("corpus_parquet", name, sink.getvalue())
    put("job_config", "job.toml", b'store = "/tmp/store"\ncontext = 128\ntop_k = 32\nbatch_size = 8\n\n[[corpus]]\npath = "demo.jsonl"\n\n[[dictionary]]\npath = "dictionaries/sae"\nid = "default"\n')
    put("job_config", "minimal.toml", b'store = "s"\n')
    for i, query in enumerate(["kalo", '"kalo temira"', "kal*", "kalo AND -temira", "label:cats", "kalo OR (temira AND zuri)", "hook:blocks.9", "density:[0 TO 0.1]"]):
        put("search_query", f"q{i}", query.encode())


if __name__ == "__main__":
    main()
