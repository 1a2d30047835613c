#!/usr/bin/env python3
"""Small random dictionaries in every supported format, and what they compute, from the
published formulas written out in numpy (float64), independently of loupe.

    python3 reference/dictionary_reference.py   # needs: pip install numpy safetensors

Writes engine/tests/fixtures/dictionaries/<case>/ with the format's own files plus
expected.safetensors: x (inputs), acts (encode(x), dense), probe (other sparse codes),
decoded (decode(probe) for the same inputs: normalisation undone, skip added) and
reconstruction (decode(encode(x))). Widths match engine/tests/fixtures/tiny_llama (d_model 64).

Formulas (SAELens v6 sae_lens/saes, Gemma Scope tutorials, EleutherAI sparsify):
  SAELens:   x' = norm_in(x) - b_dec·apply_b_dec_to_input;  h = x'·W_enc + b_enc
             standard f = ReLU(h); jumprelu f = ReLU(h)·1[h > θ]; topk f = ReLU(topk(h))
             gated: f = 1[x'·W_enc + b_gate > 0] · ReLU(x'·(W_enc ⊙ exp(r_mag)) + b_mag)
             rescale_acts_by_decoder_norm: h ← h·‖W_dec[i]‖ before top-k (f keeps that scale),
             and decode uses f/‖W_dec[i]‖
             decode: norm_out(f·W_dec + b_dec) (+ x·W_skipᵀ for skip transcoders)
             constant_norm_rescale: c = √d/‖x‖, in x·c, out y/c
             layer_norm: in (x-μ)/(σ+1e-5) (σ unbiased), out y·σ + μ
             transcoders: no b_dec subtraction; legacy finetuning_scaling_factor: f·s before W_dec
  Gemma Scope 1/2: h = x·W_enc + b_enc (no b_dec subtraction), f = ReLU(h)·1[h > θ],
             decode f·W_dec + b_dec (+ x·affine_skip_connection)
  sparsify:  h = ReLU((x - b_dec)·encoderᵀ + bias) (no subtraction when transcoding);
             topk(h, k) or group max over k contiguous groups; decode f·W_dec + b_dec (+ x·W_skipᵀ)
"""
import json
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

OUT = Path(__file__).resolve().parent.parent / "engine" / "tests" / "fixtures" / "dictionaries"
D_IN, D_SAE, TOKENS, K = 64, 80, 12, 6
RNG = np.random.default_rng(1234)


def f32(a):
    # Contiguous: safetensors writes the raw buffer, so a transposed view would be saved wrongly.
    return np.ascontiguousarray(a, dtype=np.float32)


def randn(*shape, scale=1.0):
    return f32(RNG.standard_normal(shape) * scale)


def relu(h):
    return np.maximum(h, 0.0)


def topk_dense(h, k):
    out = np.zeros_like(h)
    idx = np.argsort(-h, axis=-1, kind="stable")[:, :k]
    rows = np.arange(h.shape[0])[:, None]
    out[rows, idx] = relu(h[rows, idx])
    return out


def groupmax_dense(h, k):
    n, m = h.shape
    g = m // k
    out = np.zeros_like(h)
    grouped = h.reshape(n, k, g)
    arg = grouped.argmax(axis=-1)
    for t in range(n):
        for group in range(k):
            j = group * g + arg[t, group]
            out[t, j] = max(h[t, j], 0.0)
    return out


def probe_codes(d_sae):
    probe = np.zeros((TOKENS, d_sae))
    for t in range(TOKENS):
        idx = RNG.choice(d_sae, size=K, replace=False)
        probe[t, idx] = RNG.uniform(0.1, 3.0, size=K)
    return probe


class Norm:
    """SAELens run-time normalisation, per token."""

    def __init__(self, kind, x):
        self.kind = kind
        if kind == "constant_norm_rescale":
            self.c = np.sqrt(x.shape[1]) / np.linalg.norm(x, axis=1, keepdims=True)
        elif kind == "layer_norm":
            self.mu = x.mean(axis=1, keepdims=True)
            self.std = (x - self.mu).std(axis=1, ddof=1, keepdims=True)

    def into(self, x):
        if self.kind == "constant_norm_rescale":
            return x * self.c
        if self.kind == "layer_norm":
            return (x - self.mu) / (self.std + 1e-5)
        return x

    def out(self, y):
        if self.kind == "constant_norm_rescale":
            return y / self.c
        if self.kind == "layer_norm":
            return y * self.std + self.mu
        return y


def write_case(name, files, x, encode, decode):
    """`encode(x64) -> acts`, `decode(acts, x64) -> full output`; both in float64."""
    folder = OUT / name
    folder.mkdir(parents=True, exist_ok=True)
    for filename, content in files.items():
        path = folder / filename
        path.parent.mkdir(parents=True, exist_ok=True)
        if filename.endswith(".json"):
            path.write_text(json.dumps(content, indent=2) + "\n")
        elif filename.endswith(".npz"):
            np.savez(path, **content)
        else:
            save_file(content, str(path))
    x64 = x.astype(np.float64)
    acts = encode(x64)
    probe = probe_codes(acts.shape[1])
    save_file(
        {
            "x": x,
            "acts": f32(acts),
            "probe": f32(probe),
            "decoded": f32(decode(probe, x64)),
            "reconstruction": f32(decode(acts, x64)),
        },
        str(folder / "expected.safetensors"),
    )
    l0 = (acts > 0).sum(axis=1).mean()
    print(f"{name}: L0 {l0:.1f}")


def weights(d_in=D_IN, d_sae=D_SAE, d_out=None, enc_bias=-0.5):
    d_out = d_out or d_in
    return {
        "W_enc": randn(d_in, d_sae, scale=1 / np.sqrt(d_in)),
        "b_enc": randn(d_sae, scale=0.3) + f32(enc_bias),
        "W_dec": randn(d_sae, d_out, scale=1 / np.sqrt(d_sae)),
        "b_dec": randn(d_out, scale=0.2),
    }


def saelens_cfg(architecture, hook="blocks.1.hook_resid_post", **extra):
    metadata = {"model_name": "tiny-llama", "hook_name": hook, "hook_head_index": None, "prepend_bos": True,
                "context_size": 16, "sae_lens_version": "6.18.0", "dataset_path": "random"}
    metadata.update(extra.pop("metadata", {}))
    cfg = {"d_in": D_IN, "d_sae": D_SAE, "dtype": "float32", "device": "cpu", "apply_b_dec_to_input": True,
           "normalize_activations": "none", "reshape_activations": "none", "metadata": metadata,
           "architecture": architecture}
    cfg.update(extra)
    return cfg


def saelens_case(name, architecture, activation, norm="none", apply_b_dec=True, extra_tensors=None,
                 transcoder=False, skip=False, decoder_input=lambda acts, W: acts, **cfg_extra):
    w = weights()
    w.update(extra_tensors(w) if extra_tensors else {})
    x = randn(TOKENS, D_IN, scale=2.0) + randn(D_IN, scale=1.0)
    metadata = {}
    hook = "blocks.1.hook_resid_post"
    if transcoder:
        hook = "blocks.1.ln2.hook_normalized"
        metadata = {"hook_name_out": "blocks.1.hook_mlp_out", "hook_head_index_out": None}
        cfg_extra["d_out"] = D_IN
        apply_b_dec = False
    if skip:
        w["W_skip"] = randn(D_IN, D_IN, scale=0.1)
    cfg = saelens_cfg(architecture, hook, normalize_activations=norm, apply_b_dec_to_input=apply_b_dec,
                      metadata=metadata, **cfg_extra)
    W = {k: v.astype(np.float64) for k, v in w.items()}

    def encode(x64):
        normed = Norm(norm, x64).into(x64)
        xin = normed - W["b_dec"] * apply_b_dec
        return activation(xin, W)

    def decode(acts, x64):
        y = Norm(norm, x64).out(decoder_input(acts, W) @ W["W_dec"] + W["b_dec"])
        if skip:
            y = y + x64 @ W["W_skip"].T
        return y

    write_case(name, {"cfg.json": cfg, "sae_weights.safetensors": w}, x, encode, decode)


def jumprelu(xin, W):
    h = xin @ W["W_enc"] + W["b_enc"]
    return relu(h) * (h > W["threshold"])


def thresholds(w):
    return {"threshold": f32(np.abs(RNG.standard_normal(D_SAE)) * 0.3)}


def main():
    standard = lambda xin, W: relu(xin @ W["W_enc"] + W["b_enc"])
    topk = lambda xin, W: topk_dense(xin @ W["W_enc"] + W["b_enc"], K)

    saelens_case("saelens_standard", "standard", standard)
    saelens_case("saelens_jumprelu", "jumprelu", jumprelu, extra_tensors=thresholds)
    saelens_case("saelens_batchtopk_as_jumprelu", "jumprelu", jumprelu,
                 extra_tensors=lambda w: {"threshold": f32(np.full(D_SAE, 0.35))})
    saelens_case("saelens_topk", "topk", topk, k=K, rescale_acts_by_decoder_norm=False)

    def rescaled_topk(xin, W):
        norms = np.linalg.norm(W["W_dec"], axis=1)
        return topk_dense((xin @ W["W_enc"] + W["b_enc"]) * norms, K)

    saelens_case("saelens_topk_rescaled", "topk", rescaled_topk, k=K, rescale_acts_by_decoder_norm=True,
                 decoder_input=lambda acts, W: acts / np.linalg.norm(W["W_dec"], axis=1))

    def gated(xin, W):
        gate = (xin @ W["W_enc"] + W["b_gate"]) > 0
        magnitude = relu(xin @ (W["W_enc"] * np.exp(W["r_mag"])) + W["b_mag"])
        return gate * magnitude

    def gated_tensors(w):
        del w["b_enc"]
        return {"b_gate": randn(D_SAE, scale=0.3) - 0.3, "r_mag": randn(D_SAE, scale=0.2), "b_mag": randn(D_SAE, scale=0.3)}

    saelens_case("saelens_gated", "gated", gated, extra_tensors=gated_tensors)
    saelens_case("saelens_constant_norm_rescale", "standard", standard, norm="constant_norm_rescale")
    saelens_case("saelens_layer_norm", "standard", standard, norm="layer_norm")
    saelens_case("saelens_no_b_dec_input", "standard", standard, apply_b_dec=False)
    saelens_case("saelens_transcoder", "transcoder", standard, transcoder=True)
    saelens_case("saelens_skip_transcoder", "skip_transcoder", standard, transcoder=True, skip=True)
    saelens_case("saelens_jumprelu_transcoder", "jumprelu_transcoder", jumprelu, transcoder=True, extra_tensors=thresholds)
    legacy_topk()
    gemma_scope_v1()
    gemma_scope_v2("gemma_scope2_sae", transcoder=False)
    gemma_scope_v2("gemma_scope2_transcoder", transcoder=True)
    sparsify_case("sparsify_topk/layers.1", "topk", transcode=False, skip=False)
    sparsify_case("sparsify_groupmax/layers.1", "groupmax", transcode=False, skip=False)
    sparsify_case("sparsify_skip_transcoder/layers.1.mlp", "topk", transcode=True, skip=True)


def legacy_topk():
    """A pre-6.0 flat config: hook_point, activation_fn_str topk, a fine-tuned scale."""
    w = weights()
    w["scaling_factor"] = f32(RNG.uniform(0.5, 1.5, D_SAE))
    cfg = {"architecture": "standard", "d_in": D_IN, "d_sae": D_SAE, "dtype": "float32", "device": "cpu",
           "model_name": "tiny-llama", "hook_point": "blocks.1.hook_resid_post", "hook_point_layer": 1,
           "hook_point_head_index": None, "activation_fn_str": "topk", "activation_fn_kwargs": {"k": K},
           "apply_b_dec_to_input": True, "finetuning_scaling_factor": True, "context_size": 16,
           "prepend_bos": True, "normalize_activations": False, "sae_lens_training_version": "3.0.0"}
    x = randn(TOKENS, D_IN, scale=2.0)
    W = {k: v.astype(np.float64) for k, v in w.items()}
    encode = lambda x64: topk_dense((x64 - W["b_dec"]) @ W["W_enc"] + W["b_enc"], K)
    decode = lambda acts, x64: (acts * W["scaling_factor"]) @ W["W_dec"] + W["b_dec"]
    write_case("saelens_legacy_topk", {"cfg.json": cfg, "sae_weights.safetensors": w}, x, encode, decode)


def gemma_scope_v1():
    w = weights()
    w["threshold"] = thresholds(w)["threshold"]
    x = randn(TOKENS, D_IN, scale=2.0)
    W = {k: v.astype(np.float64) for k, v in w.items()}
    encode = lambda x64: jumprelu(x64, W)
    decode = lambda acts, x64: acts @ W["W_dec"] + W["b_dec"]
    path = "gemma_scope/gemma-scope-tiny-res/layer_1/width_80/average_l0_9/params.npz"
    write_case(path.rsplit("/", 1)[0], {"params.npz": w}, x, encode, decode)


def gemma_scope_v2(name, transcoder):
    w = {k.lower(): v for k, v in weights().items()}
    w["threshold"] = thresholds(w)["threshold"]
    cfg = {"hf_hook_point_in": "model.layers.1.output", "hf_hook_point_out": "model.layers.1.output",
           "width": D_SAE, "model_name": "tiny-llama", "architecture": "jump_relu", "l0": 9,
           "affine_connection": False, "type": "sae"}
    if transcoder:
        cfg.update(hf_hook_point_in="model.layers.1.pre_feedforward_layernorm.output",
                   hf_hook_point_out="model.layers.1.post_feedforward_layernorm.output",
                   affine_connection=True, type="transcoder")
        w["affine_skip_connection"] = randn(D_IN, D_IN, scale=0.1)
    x = randn(TOKENS, D_IN, scale=2.0)
    W = {k: v.astype(np.float64) for k, v in w.items()}

    def encode(x64):
        h = x64 @ W["w_enc"] + W["b_enc"]
        return relu(h) * (h > W["threshold"])

    def decode(acts, x64):
        y = acts @ W["w_dec"] + W["b_dec"]
        return y + x64 @ W["affine_skip_connection"] if transcoder else y

    write_case(name, {"config.json": cfg, "params.safetensors": w}, x, encode, decode)


def sparsify_case(name, activation, transcode, skip):
    base = weights(enc_bias=0.0)
    w = {"encoder.weight": f32(base["W_enc"].T), "encoder.bias": base["b_enc"], "W_dec": base["W_dec"], "b_dec": base["b_dec"]}
    if skip:
        w["W_skip"] = randn(D_IN, D_IN, scale=0.1)
    k = 8 if activation == "groupmax" else K
    cfg = {"activation": activation, "expansion_factor": 32, "normalize_decoder": True, "num_latents": D_SAE, "k": k,
           "multi_topk": False, "skip_connection": skip, "transcode": transcode, "d_in": D_IN}
    x = randn(TOKENS, D_IN, scale=2.0)
    W = {key: v.astype(np.float64) for key, v in w.items()}

    def encode(x64):
        xin = x64 if transcode else x64 - W["b_dec"]
        h = relu(xin @ W["encoder.weight"].T + W["encoder.bias"])
        return topk_dense(h, k) if activation == "topk" else groupmax_dense(h, k)

    def decode(acts, x64):
        y = acts @ W["W_dec"] + W["b_dec"]
        return y + x64 @ W["W_skip"].T if skip else y

    write_case(name, {"cfg.json": cfg, "sae.safetensors": w}, x, encode, decode)


if __name__ == "__main__":
    main()
