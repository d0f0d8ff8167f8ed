"""Convert a trained checkpoint to another layer pattern, keeping every weight (``rnope convert``).

A layer's pattern letter (:data:`rnope.config.PATTERN_LETTERS`) says what the layer *does* with its
tensors -- rotate q and k or not, attend to every key, a sliding window or a chunk -- while the
tensors themselves (q/k/v/o projections, MLP, norms) have the same names and shapes for every
letter. So a checkpoint trained with one pattern can be given another: a RoPE layer that becomes
NoPE drops its rotation, a full layer that becomes sliding gains the window, and every weight is
copied unchanged. ``--drop-pe`` (DroPE) makes every layer NoPE full attention (pattern ``"N"``).

The exceptions are the weights that only some letters have:

* ``Q`` (QK-norm) layers have per-head ``q_norm`` / ``k_norm`` weights. A layer that *becomes*
  ``Q`` gets them at their fresh-init value, 1 (the norm itself is new, so the layer changes);
  a ``Q`` layer that would become another letter is refused, since its norm weights would be lost.
* NoPE layers of a model with ``nope.temperature="ssmax"`` have a learned per-head scale; a layer
  that becomes NoPE gets it at its fresh-init value, one that stops being NoPE is refused.

The converted model is a different model: it needs continued training (``rnope train --init``).
``docs/convert.md`` says what to expect.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .config import PATTERN_LETTERS, PRESETS, ModelConfig
from .outputs import atomic_dir, check_new_dir

__all__ = ["Source", "carry_state", "convert", "convert_model", "pattern_presets", "plan_state", "read_source", "target_config"]

# fields that size a model: a preset that sets only these and a pattern is a "pattern preset" for --to
_SHAPES = ("vocab_size", "n_layer", "d_model", "n_head", "n_kv_head", "d_ff", "max_seq_len", "window", "chunk_size")

_DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16, "F64": torch.float64}


@dataclass(frozen=True)
class Source:
    """A checkpoint as read before its weights: where, what format, its config and tokenizer."""

    dir: Path  # the directory holding the weights (a run directory resolves to its latest checkpoint)
    kind: str  # "rnope" | "hf"
    config: ModelConfig
    tokenizer: Any  # rnope.tokenizer.Tokenizer or None
    meta: dict


def read_source(path: str | os.PathLike) -> Source:
    """Config and tokenizer of anything :func:`rnope.load` accepts, without reading the weights.

    Raises ``ValueError`` (:class:`~rnope.checkpoint.CheckpointError`) in one line naming the file."""
    from .checkpoint import CONFIG_FILE, TOKENIZER_FILE, CheckpointError, read_config, read_meta, resolve
    from .tokenizer import Tokenizer

    d = resolve(path)
    meta = read_meta(d) if (d / CONFIG_FILE).exists() else {}
    if isinstance(meta, dict) and "model_type" in meta and "model" not in meta:
        from .interop.hf import read_checked_config

        config, kind = read_checked_config(d), "hf"
    else:
        config, meta = read_config(d)
        kind = "rnope"
    tok = None
    if (d / TOKENIZER_FILE).is_file():
        try:
            tok = Tokenizer.load(d / TOKENIZER_FILE)
        except ValueError:
            if kind == "rnope":
                raise
            tok = None  # an HF tokenizer without rnope's special tokens: the model loads without one
        if tok is not None and tok.vocab_size > config.vocab_size:
            raise CheckpointError(
                f"{d / TOKENIZER_FILE}: tokenizer has {tok.vocab_size} tokens but the model's vocab_size is {config.vocab_size}"
            )
    return Source(dir=d, kind=kind, config=config, tokenizer=tok, meta=meta if isinstance(meta, dict) else {})


# ---- the target config ------------------------------------------------------------------------
def pattern_presets() -> dict[str, str]:
    """``{preset: pattern}`` for the presets that differ from the defaults by their pattern (and
    shapes) only -- the names ``--to`` accepts. Presets that also change RoPE scaling, temperature,
    block or norm are not a pattern and are left out."""
    defaults = ModelConfig().to_dict()
    out = {}
    for name, p in PRESETS.items():
        if "pattern" not in p:
            continue
        resolved = ModelConfig.from_preset(name).to_dict()  # options nested and complete
        if all(defaults[k] == v for k, v in resolved.items() if k not in _SHAPES and k != "pattern"):
            out[name] = p["pattern"]
    return dict(sorted(out.items()))


def _letters(pattern: str, n_layer: int) -> set[str]:
    return {pattern[i % len(pattern)] for i in range(n_layer)} if pattern else set()


def target_config(
    src: ModelConfig,
    *,
    pattern: str | None = None,
    to: str | None = None,
    drop_pe: bool = False,
    window: int | None = None,
    chunk_size: int | None = None,
) -> ModelConfig:
    """``src`` with a new ``pattern`` (given, the ``to`` preset's, or ``"N"`` for ``drop_pe``) and,
    for sliding / chunked layers, a ``window`` / ``chunk_size``: given, else the source's when the
    source has such layers, else refused (the source's value then was never trained with)."""
    if sum((pattern is not None, to is not None, bool(drop_pe))) != 1:
        raise ValueError("give exactly one of --pattern, --to and --drop-pe")
    if to is not None:
        presets = pattern_presets()
        if to not in presets:
            raise ValueError(f"--to {to!r}: unknown pattern preset (known: {', '.join(presets)}; --pattern takes any pattern)")
        pattern = presets[to]
    elif drop_pe:
        pattern = "N"
    for flag, v in (("--window", window), ("--chunk-size", chunk_size)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise ValueError(f"{flag} must be an integer >= 1, got {v!r}")
    if not isinstance(pattern, str) or not pattern:
        raise ValueError(f"--pattern must be a non-empty string of {''.join(PATTERN_LETTERS)}, got {pattern!r}")
    unknown = [ch for ch in pattern if ch not in PATTERN_LETTERS]
    if unknown:
        raise ValueError(f"pattern {pattern!r}: unknown letter {unknown[0]!r} (known: {', '.join(PATTERN_LETTERS)})")
    new, old = _letters(pattern, src.n_layer), {s.span for s in src.layers}
    over: dict[str, Any] = {"pattern": pattern}
    if window is not None:
        over["window"] = window
    elif new & {"S", "W"} and "sliding" not in old:
        raise ValueError(f"pattern {pattern!r} has sliding-window layers but the source has none: give --window")
    if chunk_size is not None:
        over["chunk_size"] = chunk_size
    elif "C" in new and "chunked" not in old:
        raise ValueError(f"pattern {pattern!r} has chunked layers ('C') but the source has none: give --chunk-size")
    return src.replace(**over)


# ---- the weights ------------------------------------------------------------------------------
def _shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    from .model import Transformer

    with torch.device("meta"):
        return {k: tuple(v.shape) for k, v in Transformer(config).state_dict().items()}


def _what(name: str) -> str:
    if name.endswith(("q_norm.weight", "k_norm.weight")):
        return "QK-norm"
    if name.endswith("ssmax_scale"):
        return "SSMax scale"
    return "a"


def _layer(name: str) -> int | None:
    parts = name.split(".")
    return int(parts[1]) if len(parts) > 2 and parts[0] == "layers" and parts[1].isdigit() else None


def plan_state(src: ModelConfig, dst: ModelConfig) -> list[str]:
    """The tensor names ``dst`` has and ``src`` lacks (they start at their fresh-init value).

    Raises ``ValueError`` when a tensor changes shape or ``src`` has a tensor ``dst`` would drop."""
    a, b = _shapes(src), _shapes(dst)
    for name, shape in a.items():
        if name in b and b[name] != shape:
            raise ValueError(f"tensor '{name}' has shape {shape} in the checkpoint but the target config implies {b[name]}")
    dropped = [n for n in a if n not in b]
    if dropped:
        n = dropped[0]
        i = _layer(n)
        where = "" if i is None else f" of layer {i}, which pattern {dst.pattern!r} makes {dst.pattern[i % len(dst.pattern)]!r}"
        raise ValueError(
            f"the target config would drop {len(dropped)} tensor(s) of the checkpoint, first '{n}' "
            f"({_what(n)} weight{where}); conversion keeps every weight"
        )
    added = [n for n in b if n not in a]
    for n in added:
        if _what(n) == "a":
            raise ValueError(f"the target config needs tensor '{n}', which the checkpoint lacks")
    return added


def _fresh(name: str, shape: tuple[int, ...], config: ModelConfig, dtype: torch.dtype) -> torch.Tensor:
    """The value :func:`rnope.model.init_weights` gives a tensor conversion may add."""
    if name.endswith(("q_norm.weight", "k_norm.weight")):
        return torch.ones(shape, dtype=dtype)
    if name.endswith("ssmax_scale"):
        return torch.full(shape, 1.0 / math.log(max(config.max_seq_len, 3)), dtype=dtype)
    raise ValueError(f"the target config needs tensor '{name}', which the checkpoint lacks")


def carry_state(state: dict[str, torch.Tensor], src: ModelConfig, dst: ModelConfig) -> dict[str, torch.Tensor]:
    """The state dict of a ``dst`` model: every tensor of ``state`` (a ``src`` model's) unchanged, plus
    the tensors ``dst`` adds (:func:`plan_state`) at their fresh-init value."""
    added = plan_state(src, dst)
    shapes = _shapes(dst)
    missing = [n for n in shapes if n not in state and n not in added]
    if missing:
        raise ValueError(f"the checkpoint lacks tensor '{missing[0]}'")
    dtype = next(iter(state.values())).dtype if state else torch.get_default_dtype()
    out = {n: state[n] for n in shapes if n in state}
    for n in added:
        out[n] = _fresh(n, shapes[n], dst, dtype)
    return {n: out[n] for n in shapes}


def convert_model(model, config: ModelConfig):
    """A new :class:`~rnope.model.Transformer` of ``config`` holding ``model``'s tensors (shared, not
    copied) plus the ones ``config`` adds; ``model`` is left as it is."""
    from .model import Transformer

    state = carry_state(model.state_dict(), model.config, config)
    with torch.device("meta"):
        new = Transformer(config)
    new.load_state_dict(state, strict=True, assign=True)
    new.attn_impl = getattr(model, "attn_impl", "auto")
    return new.train(model.training)


# ---- the command ------------------------------------------------------------------------------
def _weight_files(source: Source) -> list[Path]:
    """``model.safetensors`` of an rnope checkpoint (not a training checkpoint's optimizer state); every
    safetensors file of a Hugging Face directory (one, or the shards)."""
    from .checkpoint import WEIGHTS_FILE

    return [source.dir / WEIGHTS_FILE] if source.kind == "rnope" else sorted(source.dir.glob("*.safetensors"))


def _stored_dtype(files: list[Path]) -> torch.dtype | None:
    """The one dtype of the tensors in ``files`` (headers only), else None."""
    from safetensors import safe_open

    seen = set()
    for f in files:
        with safe_open(str(f), "pt") as h:
            seen |= {h.get_slice(k).get_dtype() for k in h.keys()}
    return _DTYPES.get(next(iter(seen))) if len(seen) == 1 else None


def weights_sha256(files: list[Path]) -> str:
    """sha256 of the one weights file (taken from its directory's ``checksums.json`` when that lists
    it: :func:`rnope.load` has just verified it); for several (a sharded HF model), the sha256 of
    their ``name sha256`` lines."""
    from .checkpoint import CHECKSUM_FILE, file_sha256

    shas = {}
    for f in files:
        try:
            listed = json.loads((f.parent / CHECKSUM_FILE).read_text(encoding="utf-8"))["files"][f.name]
        except (OSError, ValueError, KeyError, TypeError):
            listed = None
        shas[f.name] = listed if isinstance(listed, str) else file_sha256(f)
    if len(shas) == 1:
        return next(iter(shas.values()))
    return hashlib.sha256("".join(f"{n} {s}\n" for n, s in shas.items()).encode()).hexdigest()


@dataclass(frozen=True)
class Converted:
    out: Path
    source: Source
    config: ModelConfig
    added: tuple[str, ...]
    tensors: int


def convert(src: str | os.PathLike, out: str | os.PathLike, *, pattern: str | None = None, to: str | None = None,
            drop_pe: bool = False, window: int | None = None, chunk_size: int | None = None) -> Converted:
    """Write checkpoint ``src`` with a new layer pattern to the new directory ``out``, atomically.

    Everything is checked before the weights are read: ``out`` (absent or empty), the source, the
    target config (:func:`target_config`), the tensors (:func:`plan_state`). Tensors keep their
    stored dtype. ``config.json`` records ``converted_from`` (path, pattern, window, chunk_size,
    format, sha256 of the weights, the tensors added)."""
    from .checkpoint import load, save

    out = Path(out)
    check_new_dir(out)
    source = read_source(src)
    config = target_config(source.config, pattern=pattern, to=to, drop_pe=drop_pe, window=window, chunk_size=chunk_size)
    added = plan_state(source.config, config)
    files = _weight_files(source)
    model, tok = load(source.dir, dtype=_stored_dtype(files))
    new = convert_model(model, config)
    sc = source.config
    prov: dict[str, Any] = {"path": str(source.dir.resolve()), "format": source.kind, "pattern": sc.pattern,
                            "window": sc.window, "chunk_size": sc.chunk_size, "sha256": weights_sha256(files),
                            "added": added}
    if isinstance(source.meta.get("converted_from"), dict):
        prov["converted_from"] = source.meta["converted_from"]  # a chain of conversions stays traceable
    atomic_dir(out, lambda d: save(d, new.config, new.state_dict(), tok, extra={"converted_from": prov}))
    return Converted(out=out, source=source, config=config, added=tuple(added), tensors=len(new.state_dict()))
