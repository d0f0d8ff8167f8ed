"""rnope ``ModelConfig`` <-> Hugging Face Llama-family ``config.json``.

Import: ``llama``, ``mistral``, ``qwen2``, ``qwen3`` and ``smollm3``. Export: ``smollm3``, the one
Llama-family type whose config says per layer both whether it uses RoPE (``no_rope_layers``) and
whether it slides (``layer_types`` + ``use_sliding_window``).

All five are the Llama block: pre-norm ``x += attn(rms1(x)); x += mlp(rms2(x))``, RMSNorm, a SwiGLU
MLP, GQA, RoPE rotating halves ``(x[i], x[i+D/2])`` — rnope's ``block="sequential"``,
``norm="rmsnorm"``, ``rope_layout="half"``, ``logit_scale`` 1. Per family, what each layer does:

=========  ==================================================================  ======================
family     layers                                                              rnope letters
=========  ==================================================================  ======================
llama      RoPE, full attention                                                ``R``
mistral    RoPE; every layer slides when ``sliding_window`` is set             ``S`` (or ``R``)
qwen2      RoPE; ``layer_types`` (or ``use_sliding_window`` +                  ``R`` / ``S``
           ``max_window_layers``) say which layers slide; q/k/v biases         (``qkv_bias=True``)
qwen3      like qwen2 without biases, plus an RMSNorm over each head of q      ``Q``
           and k (one (D,) weight shared by the heads, before RoPE)
smollm3    ``no_rope_layers[i]`` 1 = RoPE, 0 = NoPE; ``layer_types`` slide      ``R`` ``S`` ``N`` ``W``
           only with ``use_sliding_window``
=========  ==================================================================  ======================

A sliding window that covers ``max_position_embeddings`` masks nothing up to that length and is
imported as a full layer (``R`` / ``N``), as for ``cohere2``. Everything that would change the math
is refused by name: RoPE types rnope does not implement (only default, linear and yarn are the same
formula), biases where rnope has none (``mlp_bias``; ``attention_bias``, which also biases
``o_proj``), ``hidden_act`` other than silu, ``head_dim`` != hidden_size/num_attention_heads, a
sliding qwen3 layer (rnope's QK-norm letter ``Q`` is full attention only), inconsistent
``layer_types``. Keys a ``config.json`` omits take the transformers config class's default.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..config import LayerSpec, ModelConfig
from .hf_config import (
    _MAPPED_CONFIG,
    _MAPPED_SPEC,
    FULL,
    check_layer_options,
    SLIDING,
    HFConfigError,
    _defaults,
    _int,
    _num,
    _rope_scaling,
    _rope_theta,
    _unmapped_options,
    hf_rope_parameters,
)

FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "smollm3")

# transformers' config-class defaults for the keys that decide the math, used when config.json omits one
_DEFAULTS: dict[str, dict[str, Any]] = {
    "llama": {"tie_word_embeddings": False, "max_position_embeddings": 2048, "num_key_value_heads": None, "head_dim": None},
    "mistral": {"tie_word_embeddings": False, "max_position_embeddings": 131072, "num_key_value_heads": 8, "head_dim": None,
                "sliding_window": 4096},
    "qwen2": {"tie_word_embeddings": False, "max_position_embeddings": 32768, "num_key_value_heads": 32, "head_dim": None,
              "sliding_window": 4096, "use_sliding_window": False, "max_window_layers": 28},
    "qwen3": {"tie_word_embeddings": False, "max_position_embeddings": 32768, "num_key_value_heads": 32, "head_dim": 128,
              "sliding_window": 4096, "use_sliding_window": False, "max_window_layers": 28},
    "smollm3": {"tie_word_embeddings": True, "max_position_embeddings": 32768, "num_key_value_heads": 4, "head_dim": None,
                "sliding_window": None, "use_sliding_window": False, "no_rope_layer_interval": 4},
}
# the families whose attention / MLP read attention_bias / mlp_bias (the others ignore the keys)
_READS_ATTENTION_BIAS = ("llama", "qwen3", "smollm3")
_READS_MLP_BIAS = ("llama", "smollm3")
_LETTER = {(True, False, False): "R", (True, False, True): "Q", (True, True, False): "S", (False, False, False): "N", (False, True, False): "W"}


# ---------------------------------------------------------------------------------------------
# import
def _get(meta: dict, mt: str, key: str) -> Any:
    return meta[key] if key in meta else _DEFAULTS[mt].get(key)


def _layer_types(meta: dict, mt: str, n: int, cfile: Path, derived: list[str]) -> list[str]:
    types = meta.get("layer_types")
    if types is None:
        return derived
    if not isinstance(types, list) or len(types) != n:
        got = len(types) if isinstance(types, list) else types
        raise HFConfigError(f"{cfile}: layer_types has {got} entries, num_hidden_layers is {n}")
    for i, t in enumerate(types):
        if t not in (SLIDING, FULL):
            raise HFConfigError(f"{cfile}: layer_types[{i}] is {t!r} (supported: {SLIDING}, {FULL})")
    return types


def _window(meta: dict, mt: str, cfile: Path) -> int:
    w = _get(meta, mt, "sliding_window")
    if isinstance(w, bool) or not isinstance(w, int) or w < 1:
        raise HFConfigError(f"{cfile}: sliding_window must be a positive integer for sliding layers, got {w!r}")
    return w


def _layers(meta: dict, mt: str, n: int, cfile: Path) -> tuple[list[bool], list[bool], int | None]:
    """(RoPE per layer, sliding per layer, the window or None) as transformers builds the model."""
    rope = [True] * n
    if mt == "llama":
        return rope, [False] * n, None
    if mt == "mistral":  # one mask for every layer: sliding iff sliding_window is set
        w = _get(meta, mt, "sliding_window")
        kind = FULL if w is None else SLIDING
        types = meta.get("layer_types")
        if types is not None:
            bad = next((i for i, t in enumerate(types) if t != kind), None) if isinstance(types, list) else 0
            if bad is not None:
                got = types[bad] if isinstance(types, list) else types
                raise HFConfigError(
                    f"{cfile}: layer_types[{bad}] is {got!r}, but mistral ignores layer_types and makes every layer "
                    f"{kind!r} (sliding_window {w!r})"
                )
        if w is None:
            return rope, [False] * n, None
        return rope, [True] * n, _window(meta, mt, cfile)
    use = _get(meta, mt, "use_sliding_window")
    if not isinstance(use, bool):
        raise HFConfigError(f"{cfile}: use_sliding_window must be true or false, got {use!r}")
    window = _get(meta, mt, "sliding_window") if use else None
    if mt == "smollm3":
        flags = meta.get("no_rope_layers")
        if flags is None:
            every = _int(meta, "no_rope_layer_interval", cfile, 4)
            if every < 1:
                raise HFConfigError(f"{cfile}: no_rope_layer_interval must be >= 1, got {every}")
            flags = [int((i + 1) % every != 0) for i in range(n)]
        if not isinstance(flags, list) or len(flags) < n:
            got = len(flags) if isinstance(flags, list) else flags
            raise HFConfigError(f"{cfile}: no_rope_layers has {got} entries, num_hidden_layers is {n}")
        for i, f in enumerate(flags[:n]):
            if f not in (0, 1):  # True/False compare equal to 1/0
                raise HFConfigError(f"{cfile}: no_rope_layers[{i}] is {f!r} (1 = RoPE, 0 = NoPE)")
        rope = [bool(f) for f in flags[:n]]
        derived = [SLIDING if use and window is not None and not r else FULL for r in rope]
    else:  # qwen2, qwen3
        first = _int(meta, "max_window_layers", cfile, _DEFAULTS[mt]["max_window_layers"])
        derived = [SLIDING if window is not None and i >= first else FULL for i in range(n)]
    types = _layer_types(meta, mt, n, cfile, derived)
    sliding = [t == SLIDING for t in types]
    if not any(sliding):
        return rope, sliding, None
    if not use:
        raise HFConfigError(f"{cfile}: use_sliding_window is false but layer_types has sliding layers")
    return rope, sliding, _window(meta, mt, cfile)


def normalize(meta: dict, cfile: Path) -> dict[str, Any]:
    """The math of a Llama-family config dict, keyed like :func:`.hf_config.normalize`'s result."""
    mt = meta["model_type"]
    if mt in _READS_ATTENTION_BIAS and meta.get("attention_bias"):
        raise HFConfigError(
            f"{cfile}: 'attention_bias': true puts biases on q/k/v and o_proj; rnope implements q/k/v biases only (as qwen2)"
        )
    if mt in _READS_MLP_BIAS and meta.get("mlp_bias"):
        raise HFConfigError(f"{cfile}: 'mlp_bias': true changes the math and rnope's MLP has no biases")
    act = meta.get("hidden_act", "silu")
    if act != "silu":
        raise HFConfigError(f"{cfile}: hidden_act {act!r} is not supported (rnope's MLP is SwiGLU: 'silu')")
    n = _int(meta, "num_hidden_layers", cfile)
    d = _int(meta, "hidden_size", cfile)
    heads = _int(meta, "num_attention_heads", cfile)
    if heads < 1 or d % heads:
        raise HFConfigError(f"{cfile}: num_attention_heads {heads} does not divide hidden_size {d}")
    kv = _get(meta, mt, "num_key_value_heads")
    kv = heads if kv is None else _int({"num_key_value_heads": kv}, "num_key_value_heads", cfile)
    hd = _get(meta, mt, "head_dim")
    if hd is not None and hd != d // heads:
        why = "" if "head_dim" in meta else f" ({mt}'s default)"
        raise HFConfigError(
            f"{cfile}: head_dim {hd!r}{why} != hidden_size/num_attention_heads = {d // heads}; rnope requires head_dim = d_model/n_head"
        )
    if n < 1:
        raise HFConfigError(f"{cfile}: num_hidden_layers must be >= 1, got {n}")
    max_pos = _int(meta, "max_position_embeddings", cfile, _DEFAULTS[mt]["max_position_embeddings"])
    tie = _get(meta, mt, "tie_word_embeddings")
    if not isinstance(tie, bool):
        raise HFConfigError(f"{cfile}: tie_word_embeddings must be true or false, got {tie!r}")
    out: dict[str, Any] = {
        "model_type": mt,
        "vocab_size": _int(meta, "vocab_size", cfile),
        "d_model": d,
        "d_ff": _int(meta, "intermediate_size", cfile),
        "n_layer": n,
        "n_head": heads,
        "n_kv_head": kv,
        "max_seq_len": max_pos,
        "logit_scale": 1.0,
        "norm_eps": _num(meta, "rms_norm_eps", cfile, 1e-6),
        "tie_embeddings": tie,
        "rope": {"theta": _rope_theta(meta, mt, cfile)},  # RopeOptions fields
        "block": "sequential",
        "norm": "rmsnorm",
        "rope_layout": "half",
        "qkv_bias": mt == "qwen2",  # Qwen2Attention always has q/k/v biases (and none on o_proj)
    }
    key = "rope_scaling" if meta.get("rope_scaling") else "rope_parameters"
    rp = meta.get(key) or {}
    rtype = rp.get("rope_type", rp.get("type", "default"))
    if rtype in ("linear", "yarn"):
        out["rope"].update(_rope_scaling(rp, rtype, cfile, key, max_pos))
    rope, sliding, window = _layers(meta, mt, n, cfile)
    covers = window is not None and window >= max_pos  # a window over every position masks nothing
    letters = []
    for i in range(n):
        slides = sliding[i] and not covers
        qk = mt == "qwen3"
        if qk and slides:
            raise HFConfigError(
                f"{cfile}: layer {i} is a sliding-window layer with qwen3's QK-norm, which rnope cannot express "
                "(its QK-norm layers 'Q' use full attention)"
            )
        letters.append(_LETTER[(rope[i], slides, qk)])
    out["letters"] = "".join(letters)
    out["window"] = None if window is None or covers else window
    hint = meta.get("sliding_window")
    if isinstance(hint, int) and not isinstance(hint, bool) and hint >= 1:
        out["_window_hint"] = hint
    return out


# ---------------------------------------------------------------------------------------------
# export
SMOLLM3 = "cannot export to smollm3: "


def check_smollm3(config: ModelConfig) -> None:
    """Raise ``ValueError`` (one line, naming the field or layer) unless smollm3 computes what ``config`` does."""
    layers = config.layers
    if config.block != "sequential":
        raise ValueError(f"{SMOLLM3}block={config.block!r}, which smollm3 cannot express (it uses the sequential Llama block)")
    if config.norm != "rmsnorm":
        raise ValueError(f"{SMOLLM3}norm={config.norm!r}, which smollm3 cannot express (it uses RMSNorm)")
    if config.rope_layout != "half" and any(s.rope for s in layers):
        raise ValueError(
            f"{SMOLLM3}rope_layout={config.rope_layout!r}, which smollm3 cannot express (it rotates halves (x[i], x[i+D/2]))"
        )
    if config.logit_scale != 1.0:
        raise ValueError(f"{SMOLLM3}logit_scale={config.logit_scale!r}, which smollm3 cannot express (its logits are not scaled)")
    if config.qkv_bias:
        raise ValueError(
            f"{SMOLLM3}qkv_bias=True (q/k/v biases), which smollm3 cannot express (its attention_bias also biases o_proj)"
        )
    mapped = _MAPPED_CONFIG | {"qkv_bias"}
    for name, default in _defaults(ModelConfig).items():
        if name not in mapped and getattr(config, name) != default:
            raise ValueError(f"{SMOLLM3}config field {name}={getattr(config, name)!r} has no smollm3 equivalent")
    unmapped = _unmapped_options(config)
    if unmapped is not None:
        raise ValueError(f"{SMOLLM3}config field {unmapped[0]}={unmapped[1]!r} has no smollm3 equivalent")
    spec_defaults = _defaults(LayerSpec)
    theta = None
    for i, s in enumerate(layers):
        for name, default in spec_defaults.items():
            if name not in _MAPPED_SPEC and getattr(s, name) != default:
                raise ValueError(f"{SMOLLM3}layer {i} sets {name}={getattr(s, name)!r}, which has no smollm3 equivalent")
        if s.span == "chunked":
            raise ValueError(f"{SMOLLM3}layer {i} is chunked (C), which smollm3 cannot express")
        if s.qk_norm:
            raise ValueError(f"{SMOLLM3}layer {i} uses QK-norm (Q), which smollm3 cannot express")
        check_layer_options(i, s, SMOLLM3, "smollm3")
        if s.rope:
            opts = s.rope_options
            if theta is not None and opts.theta != theta[1]:
                raise ValueError(
                    f"{SMOLLM3}layers {theta[0]} and {i} use different RoPE thetas ({theta[1]:g}, {opts.theta:g}); smollm3 has one theta"
                )
            theta = theta or (i, opts.theta)


def smollm3_config(
    config: ModelConfig,
    *,
    dtype: str = "float32",
    bos_id: int | None = None,
    eos_id: int | None = None,
    pad_id: int | None = None,
    rnope_version: str | None = None,
) -> dict[str, Any]:
    """The ``config.json`` dict of ``config`` as HF ``smollm3`` (``ValueError`` if it cannot express it)."""
    check_smollm3(config)
    layers = config.layers
    sliding = any(s.span == "sliding" for s in layers)
    return {
        "architectures": ["SmolLM3ForCausalLM"],
        "model_type": "smollm3",
        "vocab_size": config.vocab_size,
        "hidden_size": config.d_model,
        "intermediate_size": config.d_ff,
        "num_hidden_layers": config.n_layer,
        "num_attention_heads": config.n_head,
        "num_key_value_heads": config.n_kv_head,
        "head_dim": config.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": config.max_seq_len,
        "rms_norm_eps": config.norm_eps,
        "tie_word_embeddings": config.tie_embeddings,
        "attention_bias": False,
        "mlp_bias": False,
        "attention_dropout": 0.0,
        "initializer_range": config.init_std,
        "use_cache": True,
        # transformers 5 reads rope_parameters; older readers read rope_theta
        "rope_parameters": hf_rope_parameters(config),
        "rope_theta": float(config.rope.theta),
        # 1 = RoPE, 0 = NoPE, per layer; sliding layers are the sliding_attention entries of layer_types,
        # which smollm3 applies only with use_sliding_window
        "no_rope_layers": [int(s.rope) for s in layers],
        "layer_types": [SLIDING if s.span == "sliding" else FULL for s in layers],
        "use_sliding_window": sliding,
        "sliding_window": config.window if sliding else None,
        # written even when None: smollm3's class defaults (128000...) lie outside a small vocabulary
        "bos_token_id": bos_id,
        "eos_token_id": eos_id,
        "pad_token_id": pad_id,
        "dtype": dtype,
        "rnope": {"version": rnope_version, "model": config.to_dict()},
    }
