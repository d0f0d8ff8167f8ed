"""rnope ``ModelConfig`` <-> Hugging Face ``cohere`` / ``cohere2`` ``config.json`` (and the dispatch to
:mod:`.llama` for the sequential block: export as ``smollm3``, import of llama / mistral / qwen2 /
qwen3 / smollm3).

Which rnope patterns map where (see ``rnope.config`` for the letters):

* ``R`` only -> ``cohere`` (RoPE, full attention); ``Q`` only -> ``cohere`` with ``use_qk_norm``
  (per-head LayerNorm weights (H, D) on q and k, before the rotation).
* anything built from ``S`` / ``N`` (rnope-swa, swa, nope) -> ``cohere2``: ``layer_types[i]`` is
  ``sliding_attention`` for ``S`` and ``full_attention`` for ``N``. In cohere2 a layer gets RoPE
  **iff** it is a sliding layer, and a query at t sees keys t-W < s <= t (W keys including itself) —
  exactly rnope's ``S``.
* ``R`` mixed with ``N`` (rnope, ``RRRN``) -> ``cohere2`` whose RoPE layers are sliding layers with
  ``sliding_window = max_position_embeddings = max_seq_len``: a window of L keys over a sequence of
  at most L tokens masks nothing, so the layer is a full causal RoPE layer (beyond max_seq_len
  transformers would start sliding; rnope's ``R`` would not).

Everything else (``C``, ``W``, QK-norm mixed with other kinds, full RoPE mixed with sliding RoPE
layers when the window is shorter than max_seq_len, per-layer thetas) is refused by name.

Import is the inverse: ``sliding_window >= max_position_embeddings`` maps a sliding layer back to
``R``. Fields HF cannot hold (``chunk_size``, an unused ``window``, the pattern's spelling) travel in
an ``"rnope"`` section of ``config.json``; it is used only when it exports to the very same math as
the HF keys, so a hand-edited config.json can never be overridden by a stale hint.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

from ..config import LayerSpec, ModelConfig, NopeOptions, RopeOptions

# cohere / cohere2 here; the Llama family (imported only, exported as smollm3) in .llama
SUPPORTED = ("cohere", "cohere2", "llama", "mistral", "qwen2", "qwen3", "smollm3")
SLIDING, FULL = "sliding_attention", "full_attention"
DEFAULT_THETA = {  # transformers' defaults when no theta is given
    "cohere": 500_000.0, "cohere2": 10_000.0, "llama": 10_000.0, "mistral": 10_000.0, "qwen2": 10_000.0,
    "qwen3": 10_000.0, "smollm3": 2_000_000.0,
}
_PREFIX = "cannot export to Hugging Face: "


# ---------------------------------------------------------------------------------------------
# export
# ModelConfig / LayerSpec fields (and RoPE / NoPE options) the export maps or checks; any other must keep its
# default (so a feature added to the core later is refused until this module learns to express it).
_MAPPED_CONFIG = {
    "vocab_size", "n_layer", "d_model", "n_head", "n_kv_head", "d_ff", "max_seq_len", "pattern", "window",
    "chunk_size", "logit_scale", "norm_eps", "tie_embeddings", "init_std",
    # checked below, directly or through the expanded LayerSpecs (the option groups option by option)
    "block", "norm", "rope_layout", "rope", "nope",
}
_MAPPED_OPTIONS = {
    "rope": {"theta", "scaling", "factor", "original_len", "fope_sigma", "fraction", "qk_l2norm"},
    "nope": {"temperature", "scale", "floor"},
}
_MAPPED_SPEC = {"rope", "span", "window", "chunk", "qk_norm", "rope_options", "nope_options"}
_MODEL_FEATURES = {  # field: (the value cohere/cohere2 have, what they do instead)
    "block": ("parallel", "the parallel block x + attn(ln(x)) + mlp(ln(x))"),
    "norm": ("layernorm", "LayerNorm"),
    "rope_layout": ("interleaved", "interleaved rotary pairs (2i, 2i+1)"),
}


def _defaults(cls) -> dict[str, Any]:
    return {f.name: f.default for f in dataclasses.fields(cls) if f.init and f.default is not dataclasses.MISSING}


def _unmapped_options(config: ModelConfig) -> tuple[str, Any] | None:
    """(``group.option``, value) of the first RoPE / NoPE option the export does not map that is not at its default."""
    for group, cls in (("rope", RopeOptions), ("nope", NopeOptions)):
        opts = getattr(config, group)
        for name, default in _defaults(cls).items():
            if name not in _MAPPED_OPTIONS[group] and getattr(opts, name) != default:
                return f"{group}.{name}", getattr(opts, name)
    return None


def _check_features(config: ModelConfig) -> None:
    layers = config.layers
    any_rope = any(s.rope for s in layers)
    for name, (value, what) in _MODEL_FEATURES.items():
        v = getattr(config, name, value)
        if v != value and (name != "rope_layout" or any_rope):
            raise ValueError(f"{_PREFIX}{name}={v!r}, which cohere/cohere2 cannot express (they use {what})")
    for name, default in _defaults(ModelConfig).items():
        if name not in _MAPPED_CONFIG and getattr(config, name) != default:
            raise ValueError(f"{_PREFIX}config field {name}={getattr(config, name)!r} has no cohere/cohere2 equivalent")
    unmapped = _unmapped_options(config)
    if unmapped is not None:
        raise ValueError(f"{_PREFIX}config field {unmapped[0]}={unmapped[1]!r} has no cohere/cohere2 equivalent")
    spec_defaults = _defaults(LayerSpec)
    for i, s in enumerate(layers):
        for name, default in spec_defaults.items():
            if name not in _MAPPED_SPEC and getattr(s, name) != default:
                raise ValueError(f"{_PREFIX}layer {i} sets {name}={getattr(s, name)!r}, which has no cohere/cohere2 equivalent")
        if s.span == "chunked":
            raise ValueError(f"{_PREFIX}layer {i} uses chunked attention, which cohere/cohere2 cannot express")
        if s.span == "sliding" and not s.rope:
            raise ValueError(
                f"{_PREFIX}layer {i} is a NoPE sliding-window layer, which cohere/cohere2 cannot express "
                "(cohere2 applies RoPE to every sliding layer and to no other)"
            )
        check_layer_options(i, s, _PREFIX, "cohere/cohere2")


# RoPE extensions transformers implements with the same formula as rnope.rope (tested for parity)
HF_SCALINGS = ("none", "linear", "yarn")


def check_layer_options(i: int, s, prefix: str, arch: str) -> None:
    """Refuse, in one line naming layer ``i``, the RoPE / NoPE options of ``s`` (a ``LayerSpec``)
    that the transformers architecture ``arch`` cannot express: a RoPE scaling outside
    ``HF_SCALINGS``, partial RoPE, Llama 4's weightless QK-norm, a NoPE query temperature."""
    if s.rope:
        opts = s.rope_options
        if opts.scaling not in HF_SCALINGS:
            raise ValueError(
                f"{prefix}layer {i} uses RoPE scaling {opts.scaling!r}, which transformers' rope_parameters cannot "
                f"express (exportable: {', '.join(HF_SCALINGS)})"
            )
        if opts.fraction != 1.0:
            raise ValueError(f"{prefix}layer {i} uses partial RoPE (rope_fraction={opts.fraction}), which {arch} cannot express")
        if opts.qk_l2norm:
            raise ValueError(f"{prefix}layer {i} uses a weightless L2 QK-norm (Llama 4), which {arch} cannot express")
    elif s.nope_options.temperature != "none":
        raise ValueError(f"{prefix}layer {i} scales NoPE queries by temperature {s.nope_options.temperature!r}, which {arch} cannot express")


def hf_rope_parameters(config: ModelConfig) -> dict[str, Any]:
    """transformers' ``rope_parameters`` for the model's (one) RoPE setting."""
    theta = float(config.rope.theta)
    spec = next((s for s in config.layers if s.rope), None)
    opts = None if spec is None else spec.rope_options
    kind = "none" if opts is None else opts.scaling
    if kind == "linear":
        return {"rope_type": "linear", "rope_theta": theta, "factor": float(opts.factor)}
    if kind == "yarn":
        f = float(opts.factor)
        return {"rope_type": "yarn", "rope_theta": theta, "factor": f, "original_max_position_embeddings": opts.original_len,
                "attention_factor": 0.1 * math.log(f) + 1.0 if f > 1 else 1.0, "beta_fast": 32.0, "beta_slow": 1.0}
    return {"rope_type": "default", "rope_theta": theta}


def hf_layout(config: ModelConfig) -> tuple[str, list[str] | None, int | None]:
    """``(model_type, layer_types, sliding_window)`` for ``config``; ``ValueError`` if HF cannot express it."""
    _check_features(config)
    layers = config.layers
    thetas = [(i, s.rope_options.theta) for i, s in enumerate(layers) if s.rope]
    for i, t in thetas:
        if t != thetas[0][1]:
            raise ValueError(
                f"{_PREFIX}layers {thetas[0][0]} and {i} use different RoPE thetas ({thetas[0][1]:g}, {t:g}); "
                "cohere/cohere2 have one theta"
            )
    qk = [i for i, s in enumerate(layers) if s.qk_norm]
    if qk:
        other = next((i for i, s in enumerate(layers) if not s.qk_norm), None)
        if other is not None:
            raise ValueError(
                f"{_PREFIX}layer {qk[0]} uses QK-norm but layer {other} does not; cohere applies QK-norm "
                "to every layer and cohere2 has none"
            )
        return "cohere", None, None
    if all(s.rope and s.span == "full" for s in layers):
        return "cohere", None, None
    full_rope = [i for i, s in enumerate(layers) if s.rope and s.span == "full"]
    sliding = [i for i, s in enumerate(layers) if s.span == "sliding"]
    if full_rope and sliding and config.window < config.max_seq_len:
        raise ValueError(
            f"{_PREFIX}layer {full_rope[0]} is a full-attention RoPE layer and layer {sliding[0]} a sliding-window "
            f"RoPE layer; cohere2 gives every RoPE layer the same window, which only works when window "
            f"({config.window}) >= max_seq_len ({config.max_seq_len})"
        )
    window = config.window if sliding or not full_rope else config.max_seq_len
    types = [SLIDING if s.rope else FULL for s in layers]
    return "cohere2", types, window


def _pattern_period(types: list[str]) -> int | None:
    """p such that layer i is full iff (i+1) % p == 0 (transformers < 4.53's sliding_window_pattern)."""
    n = len(types)
    for p in range(1, n + 2):
        if all((t == FULL) == ((i + 1) % p == 0) for i, t in enumerate(types)):
            return p
    return None


def to_hf_config(
    config: ModelConfig,
    *,
    dtype: str = "float32",
    bos_id: int | None = None,
    eos_id: int | None = None,
    pad_id: int | None = None,
    rnope_version: str | None = None,
) -> dict[str, Any]:
    """The ``config.json`` dict transformers' ``AutoConfig`` reads (no remote code): ``smollm3`` for
    the sequential (Llama) block, else ``cohere`` / ``cohere2``."""
    if config.block == "sequential":
        from .llama import smollm3_config

        return smollm3_config(config, dtype=dtype, bos_id=bos_id, eos_id=eos_id, pad_id=pad_id, rnope_version=rnope_version)
    model_type, types, window = hf_layout(config)
    theta = float(config.rope.theta)
    out: dict[str, Any] = {
        "architectures": ["CohereForCausalLM" if model_type == "cohere" else "Cohere2ForCausalLM"],
        "model_type": model_type,
        "vocab_size": config.vocab_size,
        "hidden_size": config.d_model,
        "intermediate_size": config.d_ff,
        "num_hidden_layers": config.n_layer,
        "num_attention_heads": config.n_head,
        "num_key_value_heads": config.n_kv_head,
        "head_dim": config.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": config.max_seq_len,
        "layer_norm_eps": config.norm_eps,
        "logit_scale": config.logit_scale,
        "tie_word_embeddings": config.tie_embeddings,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "initializer_range": config.init_std,
        "use_cache": True,
        # transformers 5 reads rope_parameters; older transformers, vLLM and llama.cpp read rope_theta
        "rope_parameters": hf_rope_parameters(config),
        "rope_theta": theta,
        "bos_token_id": bos_id,
        "eos_token_id": eos_id,
        "pad_token_id": pad_id,
        "dtype": dtype,
    }
    if model_type == "cohere":
        out["use_qk_norm"] = bool(config.layers[0].qk_norm)
    else:
        out["sliding_window"] = window
        out["layer_types"] = types
        out["rotary_pct"] = 1.0  # llama.cpp's convert_hf_to_gguf.py requires it for cohere2
        period = _pattern_period(types)
        if period is not None:  # for readers that predate layer_types
            out["sliding_window_pattern"] = period
    out["rnope"] = {"version": rnope_version, "model": config.to_dict()}
    return out


# ---------------------------------------------------------------------------------------------
# import
class HFConfigError(ValueError):
    """A Hugging Face config.json rnope will not import; the message names the key and why."""


def _num(meta: dict, key: str, cfile: Path, default: Any = None) -> Any:
    v = meta.get(key, default)
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise HFConfigError(f"{cfile}: '{key}' must be a number, got {v!r}")
    return v


def _int(meta: dict, key: str, cfile: Path, default: Any = None) -> int:
    v = meta.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int):
        raise HFConfigError(f"{cfile}: '{key}' must be an integer, got {v!r}")
    return v


def _rope_scaling(rp: dict, rtype: str, cfile: Path, key: str, max_pos: int) -> dict[str, Any]:
    """rnope's RoPE options (``RopeOptions`` fields) for an HF linear / yarn ``rope_parameters`` (refusing variants it lacks)."""
    factor = rp.get("factor")
    if isinstance(factor, bool) or not isinstance(factor, (int, float)) or factor < 1:
        raise HFConfigError(f"{cfile}: '{key}' {rtype} factor must be a number >= 1, got {factor!r}")
    out: dict[str, Any] = {"scaling": rtype, "factor": float(factor)}
    if rtype == "yarn":
        orig = rp.get("original_max_position_embeddings", max_pos)
        expect = {"beta_fast": 32, "beta_slow": 1, "attention_factor": 0.1 * math.log(factor) + 1.0 if factor > 1 else 1.0,
                  "truncate": True}
        for k, v in expect.items():
            got = rp.get(k, v)
            if got != v and not (isinstance(got, float) and isinstance(v, float) and math.isclose(got, v, rel_tol=1e-6)):
                raise HFConfigError(f"{cfile}: '{key}' yarn {k}={got!r} is not supported (rnope implements {k}={v!r})")
        for k in ("mscale", "mscale_all_dim"):
            if rp.get(k) not in (None, 0, 1, 1.0):
                raise HFConfigError(f"{cfile}: '{key}' yarn {k}={rp[k]!r} is not supported")
        out["original_len"] = int(orig)
    return out


def _rope_theta(meta: dict, model_type: str, cfile: Path) -> float:
    """The one RoPE theta, refusing any rope_scaling / rope_parameters type rnope does not implement."""
    key = "rope_scaling" if meta.get("rope_scaling") else "rope_parameters"  # transformers: rope_scaling wins
    rp = meta.get(key) or {}
    if not isinstance(rp, dict):
        raise HFConfigError(f"{cfile}: '{key}' must be an object, got {rp!r}")
    nested = [k for k in rp if k in (SLIDING, FULL)]
    if nested:
        raise HFConfigError(
            f"{cfile}: '{key}' is given per layer type ({', '.join(nested)}); rnope supports one default RoPE"
        )
    rtype = rp.get("rope_type", rp.get("type", "default"))
    if rtype not in HF_SCALINGS and rtype != "default":
        raise HFConfigError(
            f"{cfile}: '{key}' type {rtype!r} changes the math and rnope does not implement it (only default, linear, yarn)"
        )
    for key, v in (("partial_rotary_factor", rp.get("partial_rotary_factor", meta.get("partial_rotary_factor"))), ("rotary_pct", meta.get("rotary_pct"))):
        if v not in (None, 1, 1.0):
            raise HFConfigError(f"{cfile}: {key} {v!r} is not supported (rnope rotates the whole head)")
    theta = rp.get("rope_theta", meta.get("rope_theta", DEFAULT_THETA[model_type]))
    if isinstance(theta, bool) or not isinstance(theta, (int, float)) or not theta > 0:
        raise HFConfigError(f"{cfile}: rope_theta must be a positive number, got {theta!r}")
    return float(theta)


def normalize(meta: dict, cfile: Path) -> dict[str, Any]:
    """Validate an HF config dict and reduce it to the values that determine the math.

    Raises :class:`HFConfigError` naming the first key rnope refuses.
    """
    if not isinstance(meta, dict):
        raise HFConfigError(f"{cfile}: not a JSON object")
    mt = meta.get("model_type")
    if mt not in SUPPORTED:
        raise HFConfigError(f"unsupported model_type {mt!r} in {cfile} (supported: {', '.join(SUPPORTED)})")
    if meta.get("auto_map"):
        raise HFConfigError(f"{cfile}: 'auto_map' asks for remote code (trust_remote_code), which rnope never runs")
    if meta.get("quantization_config"):
        raise HFConfigError(f"{cfile}: 'quantization_config' (quantized weights) is not supported")
    if mt not in ("cohere", "cohere2"):
        from . import llama

        return llama.normalize(meta, cfile)
    for key in ("attention_bias", "mlp_bias"):
        if meta.get(key):
            raise HFConfigError(f"{cfile}: '{key}': true changes the math and rnope does not implement biases")
    act = meta.get("hidden_act", "silu")
    if act != "silu":
        raise HFConfigError(f"{cfile}: hidden_act {act!r} is not supported (rnope's MLP is SwiGLU: 'silu')")
    n_layer = _int(meta, "num_hidden_layers", cfile)
    d = _int(meta, "hidden_size", cfile)
    heads = _int(meta, "num_attention_heads", cfile)
    kv = meta.get("num_key_value_heads")
    kv = heads if kv is None else _int(meta, "num_key_value_heads", cfile)
    if heads < 1 or d % heads:
        raise HFConfigError(f"{cfile}: num_attention_heads {heads} does not divide hidden_size {d}")
    hd = meta.get("head_dim")
    if hd is not None and hd != d // heads:
        raise HFConfigError(
            f"{cfile}: head_dim {hd!r} != hidden_size/num_attention_heads = {d // heads}; rnope requires head_dim = d_model/n_head"
        )
    max_pos = _int(meta, "max_position_embeddings", cfile, 8192)
    out: dict[str, Any] = {
        "model_type": mt,
        "vocab_size": _int(meta, "vocab_size", cfile),
        "d_model": d,
        "d_ff": _int(meta, "intermediate_size", cfile),
        "n_layer": n_layer,
        "n_head": heads,
        "n_kv_head": kv,
        "max_seq_len": max_pos,
        "logit_scale": _num(meta, "logit_scale", cfile, 0.0625),
        "norm_eps": _num(meta, "layer_norm_eps", cfile, 1e-5),
        "tie_embeddings": bool(meta.get("tie_word_embeddings", True)),
        "rope": {"theta": _rope_theta(meta, mt, cfile)},  # RopeOptions fields
    }
    key = "rope_scaling" if meta.get("rope_scaling") else "rope_parameters"
    rp = meta.get(key) or {}
    rtype = rp.get("rope_type", rp.get("type", "default"))
    if rtype in ("linear", "yarn"):
        out["rope"].update(_rope_scaling(rp, rtype, cfile, key, max_pos))
    if mt == "cohere":
        out["letters"] = ("Q" if meta.get("use_qk_norm") else "R") * n_layer
        out["window"] = None
        return out
    if meta.get("use_qk_norm"):
        raise HFConfigError(f"{cfile}: 'use_qk_norm' is set, but cohere2 has no QK-norm (transformers ignores it)")
    types = meta.get("layer_types")
    pat = meta.get("sliding_window_pattern")
    if types is None:
        p = 4 if pat is None else pat
        if isinstance(p, bool) or not isinstance(p, int) or p < 1:
            raise HFConfigError(f"{cfile}: sliding_window_pattern must be a positive integer, got {p!r}")
        types = [SLIDING if (i + 1) % p else FULL for i in range(n_layer)]
    else:
        if not isinstance(types, list) or len(types) != n_layer:
            n = len(types) if isinstance(types, list) else types
            raise HFConfigError(f"{cfile}: layer_types has {n} entries, num_hidden_layers is {n_layer}")
        for i, t in enumerate(types):
            if t not in (SLIDING, FULL):
                raise HFConfigError(f"{cfile}: layer_types[{i}] is {t!r} (supported: {SLIDING}, {FULL})")
        if pat is not None:
            bad = next((i for i, t in enumerate(types) if isinstance(pat, int) and pat > 0 and (t == FULL) != ((i + 1) % pat == 0)), None)
            if not isinstance(pat, int) or isinstance(pat, bool) or pat < 1 or bad is not None:
                where = f" (layer {bad} is {types[bad]!r})" if bad is not None else ""
                raise HFConfigError(f"{cfile}: sliding_window_pattern {pat!r} disagrees with layer_types{where}")
    window = meta.get("sliding_window")
    if SLIDING in types:
        if meta.get("use_sliding_window") is False:
            raise HFConfigError(f"{cfile}: use_sliding_window is false but layer_types has sliding layers")
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise HFConfigError(f"{cfile}: sliding_window must be a positive integer for sliding layers, got {window!r}")
        rope_full = window >= max_pos  # a window that covers every position masks nothing
        out["letters"] = "".join(("R" if rope_full else "S") if t == SLIDING else "N" for t in types)
        out["window"] = None if rope_full else window
    else:
        out["letters"] = "N" * n_layer
        out["window"] = None
    if isinstance(window, int) and not isinstance(window, bool) and window >= 1:
        out["_window_hint"] = window
    return out


def _period(letters: str) -> str:
    """The shortest pattern whose repetition gives ``letters``."""
    for p in range(1, len(letters) + 1):
        if all(letters[i] == letters[i % p] for i in range(len(letters))):
            return letters[:p]
    return letters


def _math(norm: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in norm.items() if not k.startswith("_")}


def from_hf_config(meta: dict, cfile: Path) -> ModelConfig:
    """The rnope ModelConfig for an HF config dict of a ``SUPPORTED`` type (see module doc and :mod:`.llama`)."""
    norm = normalize(meta, cfile)
    hint = meta.get("rnope")
    if isinstance(hint, dict) and isinstance(hint.get("model"), dict):
        try:
            cand = ModelConfig.from_dict(hint["model"])
            if _math(normalize(to_hf_config(cand), cfile)) == _math(norm):
                return cand
        except (TypeError, ValueError):
            pass  # a stale or foreign hint: the HF keys decide
    kw: dict[str, Any] = {k: norm[k] for k in ("vocab_size", "d_model", "d_ff", "n_layer", "n_head", "n_kv_head", "max_seq_len", "logit_scale", "norm_eps", "tie_embeddings", "rope", "block", "norm", "rope_layout", "qkv_bias") if k in norm}
    kw["pattern"] = _period(norm["letters"])
    window = norm["window"] or norm.get("_window_hint")
    if window is not None:
        kw["window"] = window
    init = meta.get("initializer_range")
    if isinstance(init, (int, float)) and not isinstance(init, bool) and init > 0:
        kw["init_std"] = init
    try:
        return ModelConfig(**kw)
    except ValueError as e:
        raise HFConfigError(f"{cfile}: cannot map to an rnope config: {e}") from None
