"""Matrix products written as broadcast products and sums, for compiled one-row decode on CPU.

On CPU a B=1 decode step should be bound by streaming the weights from memory, but one row times a
matrix through BLAS (``F.linear``) reads them at about a third of the bandwidth a plain sum gets,
and each product is a separate call. Written as ``(x[..., None, :] * w).sum(-1)``, inductor turns a
projection into one vectorised streaming reduction (no temporary of the product's size) and fuses
it with the norms, RoPE, cache writes and softmax around it. Eagerly these functions would
materialise the whole product: they are for compiled code only. The same products as the BLAS
versions, summed in another order (fp32 rounding only).
"""

from __future__ import annotations

import torch

from .masks import fill_empty_rows

__all__ = ["MATVEC_PV_BMM_KEYS", "matvec_attention", "matvec_linear"]

# Above this many cached keys :func:`matvec_attention` computes p·V as a bmm: 8 global layers of
# 2 KV heads × 64 dims, compiled, 2 threads (benchmarks/RESULTS.md): 4160 keys 2.38 -> 2.21 ms,
# 8256 keys 4.96 -> 4.48 ms, 16448 keys 10.05 -> 8.27 ms; at 2112 keys the reduction is faster
# (0.83 against 0.87 ms). The branch is taken at trace time (one graph per cache length).
MATVEC_PV_BMM_KEYS = 4096


def matvec_linear(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``F.linear(x, w)`` as a broadcast product summed over ``in``: x (..., in), w (out, in).

    ``w`` may be stored in a narrower dtype than ``x`` (float16 / bfloat16 decode weights): it is
    widened element by element inside the reduction, so compiled code reads half the bytes and
    computes in ``x``'s precision."""
    return (x.unsqueeze(-2) * w.to(x.dtype)).sum(-1)


def matvec_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """:func:`rnope.kernels.sdpa.decode` with its two matmuls written as broadcast products and sums:
    inductor fuses scores, mask and softmax into a few loops over the cached keys, where the batched
    gemv of one query row is slow on CPU. Past ``MATVEC_PV_BMM_KEYS`` keys, p·V goes back to a bmm,
    which reads a long V faster. q (B, H, Tq, D), k/v (B, Hkv, S, D), allowed (B|1, 1, Tq, S)."""
    B, H, Tq, D = q.shape
    Hkv, S = k.shape[1], k.shape[2]
    r = H // Hkv
    qg = q.float().reshape(B, Hkv, r * Tq, D)  # query head h = kv·r + j shares KV head kv (GQA)
    scores = (qg.unsqueeze(-2) * k.float().unsqueeze(2)).sum(-1) * D**-0.5  # (B, Hkv, r·Tq, S)
    ok = fill_empty_rows(allowed)[:, :, None]  # (B|1, 1, 1, Tq, S)
    scores = scores.view(B, Hkv, r, Tq, S).masked_fill(~ok, float("-inf"))
    p = scores.softmax(dim=-1).view(B, Hkv, r * Tq, S)
    if S > MATVEC_PV_BMM_KEYS:  # long caches: p·V as a batched matmul streams V faster (see above)
        return (p @ v.float()).view(B, H, Tq, D).to(q.dtype)
    return (p.unsqueeze(-1) * v.float().unsqueeze(2)).sum(-2).view(B, H, Tq, D).to(q.dtype)
