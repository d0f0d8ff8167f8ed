"""Check a checkpoint's ``config.json`` against its weights' safetensors headers before any model is built.

A config sizes the model that :func:`rnope.load` builds, so a corrupt or hostile ``config.json``
beside small weights (``d_model`` 1,048,576, ``n_layer`` 4,096) would otherwise cost gigabytes of
per-layer RoPE tables and module objects, and tens of seconds, before the strict tensor-by-tensor shape
check could refuse it — and a Hugging Face directory would even allocate the weights. This module
reads only what a safetensors file declares about itself:

* bytes 0-7: the header length N, little-endian; refused when larger than the file or than
  safetensors' own limit (:data:`MAX_HEADER_BYTES`), before anything is read;
* the next N bytes: a JSON object ``{name: {"dtype", "shape", "data_offsets": [begin, end]}}`` (plus
  an optional ``"__metadata__"``). Each tensor's byte range must fit in the file and hold exactly
  its elements, so the element count the header claims is bounded by the bytes on disk.

From the tensor shapes it derives the facts that size a model — ``vocab_size`` and ``d_model``
(embedding), ``n_layer`` (the ``layers.N`` indices present), ``d_ff`` (an MLP projection),
``n_head`` (per-head QK-norm or SSMax weights, when present) and ``n_kv_head`` (``k_proj`` rows)
— and refuses a config that disagrees, in one line naming the field, both values and the file.
Last, the parameter count the config implies may exceed the elements the files hold by at most one
embedding matrix (tied vs. untied). The strict name/shape check of the loaders runs afterwards.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Iterable, Mapping

from .errors import CheckpointError
from .config import ModelConfig

# safetensors refuses headers over 100 MB (MAX_HEADER_SIZE in the safetensors crate)
MAX_HEADER_BYTES = 100_000_000

# bits per element of the safetensors dtypes; an unknown dtype is bounded by 1 bit per element
_BITS = {
    "BOOL": 8, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8, "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6,
    "I16": 16, "U16": 16, "F16": 16, "BF16": 16, "I32": 32, "U32": 32, "F32": 32, "I64": 64, "U64": 64, "F64": 64,
    "C64": 64,
}

# rnope field -> Hugging Face config key, for messages about HF directories
HF_FIELDS = {
    "vocab_size": "vocab_size",
    "d_model": "hidden_size",
    "n_layer": "num_hidden_layers",
    "d_ff": "intermediate_size",
    "n_head": "num_attention_heads",
    "n_kv_head": "num_key_value_heads",
}

_LAYER = re.compile(r"layers\.(\d{1,18})\.")  # bounded: int() of a 5000-digit index would raise


def _corrupt(path: Path, why: str) -> CheckpointError:
    return CheckpointError(f"{path}: corrupt or truncated safetensors file ({why})")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def read_header(path: str | os.PathLike) -> dict[str, tuple[int, ...]]:
    """``{tensor name: shape}`` from a safetensors file's header, reading nothing else.

    Raises :class:`CheckpointError` for a missing file, a header length larger than the file or than
    :data:`MAX_HEADER_BYTES`, a header that is not a JSON object of tensors, or a tensor whose byte
    range does not fit in the file or does not match its shape and dtype.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path} is missing")
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(8)
            if len(head) < 8:
                raise _corrupt(path, f"{size} bytes, shorter than the 8-byte header length")
            n = int.from_bytes(head, "little")
            if n > size - 8:
                raise _corrupt(path, f"header length {n} exceeds the file's {size} bytes")
            if n > MAX_HEADER_BYTES:
                raise _corrupt(path, f"header length {n} exceeds the {MAX_HEADER_BYTES}-byte limit")
            raw = f.read(n)
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read ({e.__class__.__name__}: {e})") from None
    if len(raw) < n:
        raise _corrupt(path, f"header length {n} but only {len(raw)} bytes follow")
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise _corrupt(path, "header is not JSON") from None
    if not isinstance(header, dict):
        raise _corrupt(path, "header is not a JSON object")
    data = size - 8 - n
    shapes: dict[str, tuple[int, ...]] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(info, dict):
            raise _corrupt(path, f"tensor '{name}' has no dtype/shape/data_offsets")
        dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if (not isinstance(dtype, str) or not isinstance(shape, list) or not all(_is_int(s) and s >= 0 for s in shape)
                or not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_int(o) for o in offsets)):
            raise _corrupt(path, f"tensor '{name}' has no valid dtype/shape/data_offsets")
        begin, end = offsets
        if not 0 <= begin <= end <= data:
            raise _corrupt(path, f"tensor '{name}' lies at bytes {begin}..{end}, beyond the file's {data} data bytes")
        numel = _numel(shape)
        bits = _BITS.get(dtype)
        if (bits is not None and -(-numel * bits // 8) != end - begin) or (bits is None and numel > (end - begin) * 8):
            raise _corrupt(path, f"tensor '{name}' of shape {tuple(shape)} and dtype {dtype} does not fit its {end - begin} bytes")
        shapes[name] = tuple(shape)
    return shapes


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def check_config(
    config: ModelConfig,
    cfile: str | os.PathLike,
    weights: Iterable[str | os.PathLike],
    *,
    prefix: str = "",
    fields: Mapping[str, str] | None = None,
) -> None:
    """Refuse ``config`` (read from ``cfile``) when the safetensors ``weights`` cannot hold its model.

    ``weights``: the file, or every shard, of the checkpoint. ``prefix``: what the files put before
    rnope's parameter names (``"model."`` in a Hugging Face directory). ``fields``: the names the
    messages use for the config's fields (:data:`HF_FIELDS` for a Hugging Face ``config.json``).
    One :class:`CheckpointError` naming the field, both values and the file; nothing is allocated
    beyond the headers.
    """
    cfile = Path(cfile)
    names = fields or {}
    files = [Path(w) for w in weights]
    found: dict[str, tuple[tuple[int, ...], str, Path]] = {}  # rnope name -> (shape, name in the file, file)
    total = 0
    for f in files:
        for name, shape in read_header(f).items():
            total += _numel(shape)
            key = name[len(prefix):] if prefix and name.startswith(prefix) else name
            found.setdefault(key, (shape, name, f))
    holder = f"{files[0].name} holds" if len(files) == 1 else f"the {len(files)} weight files hold"

    def refuse(field: str, want: int, have: int, holds: str, what: str) -> None:
        if want != have:
            raise CheckpointError(f"{cfile}: {names.get(field, field)} is {want} but {holds} {have} ({what})")

    def first(*candidates: str) -> tuple[str, tuple[int, ...], str, Path] | None:
        """The first of ``candidates`` the files hold, as (rnope name, shape, name in the file, file)."""
        for c in candidates:
            if c in found:
                return (c, *found[c])
        return None

    emb = first("embed_tokens.weight")
    if emb is not None and len(emb[1]) == 2:
        _, (rows, cols), name, f = emb
        refuse("d_model", config.d_model, cols, f"{f.name} holds", name)
        refuse("vocab_size", config.vocab_size, rows, f"{f.name} holds", name)
    layers = sorted({int(m.group(1)) for k in found if (m := _LAYER.match(k))})
    span = f"{prefix}layers.{layers[0]} to {prefix}layers.{layers[-1]}" if layers else f"no {prefix}layers.N tensors"
    refuse("n_layer", config.n_layer, len(layers), holder, span)
    if layers:
        p = f"layers.{layers[0]}."
        mlp = first(p + "mlp.gate_proj.weight", p + "mlp.up_proj.weight")
        if mlp is not None and len(mlp[1]) == 2:
            refuse("d_ff", config.d_ff, mlp[1][0], f"{mlp[3].name} holds", mlp[2])
        elif (mlp := first(p + "mlp.down_proj.weight")) is not None and len(mlp[1]) == 2:
            refuse("d_ff", config.d_ff, mlp[1][1], f"{mlp[3].name} holds", mlp[2])
        # n_head is unambiguous only from per-head weights (QK-norm (H, D), SSMax (H,)), which some
        # layers have; q_proj always has d_model rows
        # (a 1-D q_norm is one (D,) weight shared by every head, as in HF qwen3: it names no head count)
        heads = first(*(f"layers.{i}.self_attn.{w}" for i in layers for w in ("q_norm.weight", "ssmax_scale")))
        if heads is not None and len(heads[1]) == (2 if heads[0].endswith("q_norm.weight") else 1):
            refuse("n_head", config.n_head, heads[1][0], f"{heads[3].name} holds", heads[2])
        # k_proj has n_kv_head · head_dim rows, head_dim = d_model / n_head of the config
        k = first(p + "self_attn.k_proj.weight")
        hd = config.head_dim
        if k is not None and len(k[1]) == 2 and k[1][0] % hd == 0:
            refuse("n_kv_head", config.n_kv_head, k[1][0] // hd, f"{k[3].name} holds",
                   f"{k[2]} has {k[1][0]} rows, {k[1][0] // hd} heads of head_dim {hd} = d_model/n_head")
    implied = config.num_params()
    slack = _numel(emb[1]) if emb is not None else 0  # one embedding matrix: tied vs. untied
    if implied > total + slack:
        raise CheckpointError(
            f"{cfile}: the config implies {implied:,} parameters but {holder} {total:,} tensor elements"
        )
