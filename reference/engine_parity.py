#!/usr/bin/env python3
"""Reference fixtures for the engine, written by Hugging Face transformers + torch.

Run once after `scripts/setup.sh` (needs `pip install torch transformers gguf accelerate`):

    python3 reference/engine_parity.py

Writes, under engine/tests/fixtures/ (small; committed):
  smollm2_hidden.safetensors  hidden states of SmolLM2-135M-Instruct (the GGUF that setup
                              fetches, dequantized to f32 by transformers) at hook_embed and
                              the outputs of layers 0, 9, 20, 29, plus top-5 logits, per prompt
  smollm2_prompts.json        the prompts, their token ids, and a greedy chat completion
  tokenizer_cases.json        >= 200 strings with transformers' encode ids and decode text
  tiny_llama/                 a random 2-layer Llama in Hugging Face safetensors form (untied
                              lm_head) with its own hidden states, for the safetensors loader
"""
import json
import os
import random
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "engine" / "tests" / "fixtures"
LOUPE_HOME = Path(os.environ.get("LOUPE_HOME", Path.home() / ".cache" / "loupe"))
GGUF_DIR = LOUPE_HOME / "models"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
LAYERS = [0, 9, 20, 29]

PROMPTS = [
    "The quick brown fox jumps over the lazy dog.",
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)",
    "In 1969, 3 astronauts flew 384,400 km to the Moon.",
    "Paris is the capital of France, and Berlin is the capital of",
    "Les élèves ont étudié l'histoire médiévale à l'université — très intéressant! 🎉",
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
    "   leading spaces, trailing tabs\t\t and\nnew\n\nlines",
    "Once upon a time",
    "SELECT name, COUNT(*) FROM users WHERE age > 30 GROUP BY name ORDER BY 2 DESC;",
    "日本語のテキストと English mixed together.",
]

CHAT_PROMPT = "What is the capital of France?"
CHAT_NEW_TOKENS = 24


def chat_text(user: str) -> str:
    # The instruct model's template (from the GGUF's tokenizer.chat_template): a default
    # system turn when the conversation does not start with one.
    return (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        f"<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"
    )


def capture(model, ids):
    """Hidden states at hook_embed and the outputs of LAYERS, plus logits."""
    captured = {}
    handles = [model.model.embed_tokens.register_forward_hook(lambda m, i, o: captured.__setitem__("hook_embed", o))]
    for layer in LAYERS:
        def hook(m, i, o, layer=layer):
            out = o[0] if isinstance(o, tuple) else o
            captured[f"blocks.{layer}.hook_resid_post"] = out
        handles.append(model.model.layers[layer].register_forward_hook(hook))
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits
    for h in handles:
        h.remove()
    return captured, logits[0]


def smollm2(tok, model):
    tensors, prompts = {}, []
    for p, text in enumerate(PROMPTS):
        ids = tok.encode(text, add_special_tokens=False)
        captured, logits = capture(model, ids)
        for name, value in captured.items():
            tensors[f"{p}/{name}"] = value[0].contiguous().float()
        top = torch.topk(logits, 6, dim=-1)
        tensors[f"{p}/top_logits.values"] = top.values.contiguous()
        tensors[f"{p}/top_logits.indices"] = top.indices.to(torch.int64).contiguous()
        prompts.append({"text": text, "ids": ids})
    save_file(tensors, OUT / "smollm2_hidden.safetensors")

    chat_ids = tok.encode(chat_text(CHAT_PROMPT), add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(torch.tensor([chat_ids]), max_new_tokens=CHAT_NEW_TOKENS, do_sample=False)
    completion = out[0, len(chat_ids):].tolist()
    meta = {
        "model": GGUF_NAME,
        "hooks": ["hook_embed"] + [f"blocks.{l}.hook_resid_post" for l in LAYERS],
        "prompts": prompts,
        "chat": {
            "user": CHAT_PROMPT,
            "prompt_ids": chat_ids,
            "greedy_completion_ids": completion,
            "greedy_completion_text": tok.decode(completion),
        },
    }
    (OUT / "smollm2_prompts.json").write_text(json.dumps(meta, indent=1, ensure_ascii=False))
    print("greedy chat completion:", repr(meta["chat"]["greedy_completion_text"]))


def hub_pre_tokenizer(tok):
    """transformers' GGUF converter keeps only the ByteLevel pre-tokenizer and drops
    `tokenizer.ggml.pre = smollm`. SmolLM2's own tokenizer.json (and llama.cpp's `smollm`
    pre-type) splits every digit first: Sequence[Digits(individual_digits), ByteLevel]. The two
    differ only where a whitespace run precedes a digit ("\n 4" -> "\n", " 4" vs "\n ", "4").
    We restore the model's declared pre-tokenizer so the reference is SmolLM2's tokenizer."""
    from tokenizers import pre_tokenizers

    tok.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
    ])
    return tok


def tokenizer_cases(tok):
    fixed = PROMPTS + [
        "", " ", "  ", "\n", "\n\n\n", "\t", " \t \n ", "a", "A", "0", "00", "007", "1234567890",
        "3.14159", "1,000,000", "-42", "+1e-9", "x1y2z3", "version 2.0.11-rc3",
        "héllo wörld", "naïve café résumé", "Ελληνικά", "Русский текст", "中文字符", "한국어",
        "emoji 😀😃😄 👍🏽 🏳️‍🌈 👨‍👩‍👧‍👦", "math ∑∫√∞ ≤ ≥ ≠", "arrows → ← ↑ ↓", "\u00a0nbsp\u00a0",
        "zero\u200bwidth", "tab\tseparated\tvalues", "trailing space ", " leading space",
        "multiple     spaces     here", "line\r\nwindows", "don't can't won't I'm you're",
        "CamelCaseIdentifierName", "snake_case_identifier_name", "kebab-case-name",
        "https://example.com/path?query=1&x=y#frag", "user@example.com", "#include <stdio.h>",
        "int main() { return 0; }", "for (let i = 0; i < 10; i++) { console.log(i); }",
        "    indented code\n        more indented", "<html><body><p>Hi</p></body></html>",
        '{"key": [1, 2, 3], "nested": {"a": null}}', "$x = 5; echo \"$x\";", "a+b=c", "!!!???...",
        "<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|im_start|>system\nBe brief.<|im_end|>\n",
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n",
        "text<|im_end|>more", "<|im_start|><|im_start|>", "<repo_name>loupe<file_sep>main.rs",
        "ÀÁÂÃÄÅ", "ß ẞ ſ", "\u0301combining", "ｆｕｌｌｗｉｄｔｈ", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢", "🙂" * 5,
    ]
    rng = random.Random(1234)
    alphabet = list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 \n\t.,;:!?'\"()[]{}<>-_=+*/\\|@#$%^&~`")
    alphabet += list("éèêàçñöüßøå€£¥©®™°±§¶•…—–“”‘’«»") + ["😀", "🚀", "中", "文", "日", "本", "ü", "\u00a0"]
    words = ["the", "model", "feature", " sparse", " autoencoder", "123", " 4567", "  ", "\n", "<|im_end|>", "🎉", "é"]
    cases = list(fixed)
    while len(cases) < 240:
        if rng.random() < 0.5:
            cases.append("".join(rng.choice(alphabet) for _ in range(rng.randint(1, 40))))
        else:
            cases.append("".join(rng.choice(words) for _ in range(rng.randint(1, 12))))
    converter_ids = [tok.encode(text, add_special_tokens=False) for text in cases]
    tok = hub_pre_tokenizer(tok)
    out = []
    for text, plain in zip(cases, converter_ids):
        ids = tok.encode(text, add_special_tokens=False)
        out.append({"text": text, "ids": ids, "decoded": tok.decode(ids)})
    differ = sum(1 for case, plain in zip(out, converter_ids) if case["ids"] != plain)
    print(f"tokenizer: {len(out)} cases; {differ} tokenize differently with the GGUF converter's plain ByteLevel split")
    (OUT / "tokenizer_cases.json").write_text(json.dumps(out, indent=0, ensure_ascii=False))


def tiny_llama():
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
        rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False,
        bos_token_id=1, eos_token_id=2,
    )
    model = LlamaForCausalLM(cfg).float().eval()
    # Random init gives tiny weights; scale up so that every layer matters in the comparison.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            else:
                p.normal_(0.0, 0.1)
    target = OUT / "tiny_llama"
    target.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(target, safe_serialization=True)
    # transformers writes extra generation files we do not need.
    for extra in ["generation_config.json"]:
        (target / extra).unlink(missing_ok=True)
    ids = [1, 17, 99, 3, 200, 45, 45, 7, 128, 255, 0, 64]
    captured = {}
    hooks = [model.model.embed_tokens.register_forward_hook(lambda m, i, o: captured.__setitem__("hook_embed", o))]
    for layer in range(2):
        hooks.append(model.model.layers[layer].register_forward_hook(
            lambda m, i, o, layer=layer: captured.__setitem__(f"blocks.{layer}.hook_resid_post", o[0] if isinstance(o, tuple) else o)))
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits
    tensors = {k: v[0].contiguous() for k, v in captured.items()}
    tensors["logits"] = logits[0].contiguous()
    tensors["ids"] = torch.tensor(ids, dtype=torch.int64)
    save_file(tensors, OUT / "tiny_llama_hidden.safetensors")


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    tok = AutoTokenizer.from_pretrained(GGUF_DIR, gguf_file=GGUF_NAME)
    model = AutoModelForCausalLM.from_pretrained(GGUF_DIR, gguf_file=GGUF_NAME, dtype=torch.float32).eval()
    smollm2(tok, model)
    tokenizer_cases(tok)  # last: it changes the tokenizer's pre-tokenizer
    tiny_llama()
    print("fixtures written to", OUT)


if __name__ == "__main__":
    main()
