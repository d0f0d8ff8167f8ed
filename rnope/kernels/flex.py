"""FlexAttention path for sliding-window and chunked layers on CUDA (PyTorch >= 2.5).

``torch.nn.attention.flex_attention`` runs attention under a *block mask* built from a ``mask_mod``;
blocks that are fully masked are skipped, so a sliding layer costs O(T·W) on the GPU as the
blockwise SDPA kernel does on the CPU (benchmarks/RESULTS.md). The mask_mods are the
visibility rules of :mod:`rnope.kernels.masks`, written on indices:

* sliding window W: ``kv <= q`` and ``q - kv < W`` (W keys including itself; FlashAttention's
  ``window_size=(W-1, 0)``);
* chunked C: ``kv <= q`` and ``q // C == kv // C``;
* causal: ``kv <= q``.

Used by :func:`rnope.kernels.attend_fresh` for CUDA tensors without left padding when FlexAttention
imports; everything else keeps the SDPA paths. Off CUDA, ``flex_attention`` runs its unfused eager
reference (the whole score matrix) — the tests use that to check the mask_mods against the
reference kernel; it is never a fast path there.
"""

from __future__ import annotations

import functools

import torch

__all__ = ["attend", "available", "block_mask", "importable", "mask_mod"]


@functools.lru_cache(maxsize=1)
def _api():
    try:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    except ImportError:
        return None
    return flex_attention, create_block_mask


@functools.lru_cache(maxsize=1)
def _compiled_flex():
    # default dynamic: one graph per length at first, then a dynamic one (evaluation lengths vary);
    # a graph-cache overflow would fall back to the unfused eager flex, which is O(T²) in memory
    return torch.compile(_api()[0])


def importable() -> bool:
    return _api() is not None


def available(device: torch.device | str | None = None) -> bool:
    """FlexAttention imports and ``device`` (default: any) is CUDA."""
    if _api() is None:
        return False
    dev = torch.device(device) if device is not None else None
    return torch.cuda.is_available() if dev is None else dev.type == "cuda"


def mask_mod(span: str, size: int | None = None):
    """The mask_mod of a layer: ``span`` in {"full", "sliding", "chunked"}, ``size`` = W or C."""
    if span == "sliding":
        W = int(size)

        def sliding(b, h, q_idx, kv_idx):
            return (kv_idx <= q_idx) & (q_idx - kv_idx < W)

        return sliding
    if span == "chunked":
        C = int(size)

        def chunked(b, h, q_idx, kv_idx):
            return (kv_idx <= q_idx) & (q_idx // C == kv_idx // C)

        return chunked

    def causal(b, h, q_idx, kv_idx):
        return kv_idx <= q_idx

    return causal


@functools.lru_cache(maxsize=64)
def block_mask(span: str, size: int | None, T: int, device: str):
    """Block mask for one layer kind at length T (cached: every layer of a kind shares it)."""
    create_block_mask = _api()[1]
    return create_block_mask(mask_mod(span, size), B=None, H=None, Q_LEN=T, KV_LEN=T, device=device)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, spec, *, compiled: bool | None = None) -> torch.Tensor:
    """Attention of a layer without cache history and without padding: q (B, H, T, D), k/v (B, Hkv, T, D).

    compiled: use ``torch.compile(flex_attention)`` (default: on CUDA) — the fused kernel; eager
    flex_attention materialises the scores (a reference, for tests off the GPU).
    """
    flex_attention = _api()[0]
    T = q.shape[2]
    size = spec.window if spec.span == "sliding" else spec.chunk if spec.span == "chunked" else None
    bm = block_mask(spec.span, size, T, str(q.device))
    if compiled is None:
        compiled = q.is_cuda
    fn = _compiled_flex() if compiled else flex_attention
    return fn(q, k, v, block_mask=bm, enable_gqa=q.shape[1] != k.shape[1])
