"""Eager reference attention: explicit scores, fp32 softmax, optional weights.

Every fast kernel is tested against this one; the analysis tools read its weights.
"""

from __future__ import annotations

import torch

from .masks import fill_empty_rows


def reference_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    allowed: torch.Tensor,
    *,
    scale: float | None = None,
    need_weights: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """q (B, H, Tq, D), k/v (B, Hkv, Tk, D), allowed (B|1, 1|H, Tq, Tk) -> out (B, H, Tq, D), weights.

    GQA: query head h reads KV head ``h // (H / Hkv)``.
    """
    n_rep = q.shape[1] // k.shape[1]
    if n_rep > 1:
        k = k.repeat_interleave(n_rep, dim=1)
        v = v.repeat_interleave(n_rep, dim=1)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    scores = (q.float() @ k.float().transpose(-1, -2)) * scale  # (B, H, Tq, Tk)
    scores = scores.masked_fill(~fill_empty_rows(allowed), float("-inf"))
    weights = scores.softmax(dim=-1)
    out = (weights @ v.float()).to(q.dtype)
    return out, (weights if need_weights else None)
