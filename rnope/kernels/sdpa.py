"""Fast attention paths on ``F.scaled_dot_product_attention`` (CPU and GPU).

* ``causal``   — full causal attention, no mask tensor.
* ``sliding``  — O(T·W) blockwise sliding window: queries in blocks of c <= W attend a band of W + c
  keys (their own block and the W keys before it), so cost and memory grow linearly in T.
* ``chunked``  — Llama-4 chunked local attention: causal attention inside each chunk of C tokens.
* ``masked``   — any visibility mask (cached decode, padded prefill); the general fallback.

Each is tested against :func:`rnope.kernels.reference.reference_attention`, forward and backward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .masks import fill_empty_rows


def _sdpa(q, k, v, *, mask=None, is_causal=False, scale=None):
    return F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, is_causal=is_causal, scale=scale, enable_gqa=q.shape[-3] != k.shape[-3]
    )


def causal(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: float | None = None) -> torch.Tensor:
    """Full causal attention, q/k/v of equal length: (B, H, T, D), (B, Hkv, T, D)."""
    return _sdpa(q, k, v, is_causal=True, scale=scale)


def masked(q, k, v, allowed: torch.Tensor, *, scale: float | None = None) -> torch.Tensor:
    """Attention under a boolean visibility mask (B|1, 1, Tq, Tk); empty rows are made finite."""
    return _sdpa(q, k, v, mask=fill_empty_rows(allowed), scale=scale)


DECODE_MAX_Q = 4  # up to this many queries per row, cached attention uses :func:`decode`


def decode(q, k, v, allowed: torch.Tensor, *, scale: float | None = None) -> torch.Tensor:
    """Attention of a few queries (decode) over cached keys, as grouped matmuls in fp32.

    q (B, H, Tq, D), k/v (B, Hkv, S, D), allowed (B|1, 1, Tq, S). For Tq = 1 the CPU flash kernel
    spends more on its blocking than on the math; here the ``H/Hkv`` query heads that share a KV head
    are stacked so K and V are read once and never repeated (GQA). Empty rows are made finite.
    """
    B, H, Tq, D = q.shape
    Hkv, S = k.shape[1], k.shape[2]
    r = H // Hkv
    scale = D**-0.5 if scale is None else scale
    qg = q.float().reshape(B, Hkv, r * Tq, D)  # query head h = kv·r + j shares KV head kv
    scores = (qg @ k.float().transpose(-1, -2)) * scale  # (B, Hkv, r·Tq, S)
    ok = fill_empty_rows(allowed)[:, :, None]  # (B|1, 1, 1, Tq, S)
    scores = scores.view(B, Hkv, r, Tq, S).masked_fill(~ok, float("-inf"))
    p = scores.softmax(dim=-1).view(B, Hkv, r * Tq, S)
    return (p @ v.float()).view(B, H, Tq, D).to(q.dtype)


def _band_mask(T: int, window: int, nblk: int, start: torch.Tensor, device) -> torch.Tensor:
    """(B, nblk, 1, W, 2W) mask of the blockwise sliding layout with left padding.

    Query a of block i has time i·W + a; band key b of block i has time (i-1)·W + b.
    Visible iff a < b <= a + W (window incl. itself), 0 <= key time < T, key time >= start[row].
    """
    W = window
    a = torch.arange(W, device=device)[:, None]
    b = torch.arange(2 * W, device=device)[None, :]
    rel = (b > a) & (b <= a + W)  # (W, 2W)
    k_time = (torch.arange(nblk, device=device)[:, None] - 1) * W + torch.arange(2 * W, device=device)  # (nblk, 2W)
    ok = rel[None] & ((k_time >= 0) & (k_time < T))[:, None, :]  # (nblk, W, 2W)
    ok = ok[None] & (k_time[None, :, None, :] >= start[:, None, None, None])  # (B, nblk, W, 2W)
    return fill_empty_rows(ok)[:, :, None]  # (B, nblk, 1, W, 2W)


def sliding(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    window: int,
    *,
    start: torch.Tensor | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """Sliding-window causal attention (t-W < s <= t) in O(T·W) time and memory.

    q (B, H, T, D); k, v (B, Hkv, T, D) at the same times; ``start`` (B,) = left padding per row.
    """
    B, H, T, D = q.shape
    Hkv = k.shape[1]
    W = window
    if start is None and T <= W:  # the window never binds
        return causal(q, k, v, scale=scale)
    nblk = -(-T // W)
    Tp = nblk * W
    if start is None:
        return _sliding_unpadded(q, k, v, W, nblk, Tp, scale)
    qb = F.pad(q, (0, 0, 0, Tp - T)).view(B, H, nblk, W, D).transpose(1, 2)  # (B, nblk, H, W, D)

    def band(x):  # (B, Hkv, T, D) -> (B, nblk, Hkv, 2W, D)
        xp = F.pad(x, (0, 0, W, Tp - T))  # (B, Hkv, W + Tp, D)
        return xp.unfold(2, 2 * W, W).permute(0, 2, 1, 4, 3)

    kb, vb = band(k), band(v)
    mask = _band_mask(T, W, nblk, start, q.device)  # (B, nblk, 1, W, 2W)
    out = _sdpa(
        qb.reshape(B * nblk, H, W, D),
        kb.reshape(B * nblk, Hkv, 2 * W, D),
        vb.reshape(B * nblk, Hkv, 2 * W, D),
        mask=mask.reshape(B * nblk, 1, W, 2 * W),
        scale=scale,
    )  # (B*nblk, H, W, D)
    out = out.view(B, nblk, H, W, D).transpose(1, 2).reshape(B, H, Tp, D)
    return out[:, :, :T]


def _query_block(window: int, grad: bool) -> int:
    """Queries per block of the unpadded sliding kernel: a block of c queries reads W + c keys, so
    smaller blocks waste less of the band (1 + c/W of the ideal work) at more, smaller SDPA calls.
    Measured on CPU (W=128): W/4 fastest for inference, W/2 with backward; small windows keep W."""
    if window <= 32:
        return window
    return window // 2 if grad else window // 4


def _sliding_unpadded(q, k, v, W, nblk, Tp, scale):
    """No padding: the first W queries are plain causal; then blocks of c queries (c | W, see
    :func:`_query_block`) attend a band of W + c keys under one shared (c, W + c) mask.

    Block j holds queries at times W + j·c + a and band keys at times j·c + b (all >= 0); visible iff
    a < b <= a + W (t - W < s <= t). Keys past T are only visible to padded query rows (cut).
    """
    B, H, T, D = q.shape
    Hkv = k.shape[1]
    c = _query_block(W, q.requires_grad or k.requires_grad or v.requires_grad)
    first = causal(q[:, :, :W], k[:, :, :W], v[:, :, :W], scale=scale)
    n = -(-(T - W) // c)
    qb = F.pad(q[:, :, W:], (0, 0, 0, n * c - (T - W))).view(B, H, n, c, D).transpose(1, 2)  # (B, n, H, c, D)

    def band(x):  # keys [j·c, j·c + W + c) for blocks j = 0..n-1 -> (B, n, Hkv, W + c, D)
        return F.pad(x, (0, 0, 0, n * c + W - T)).unfold(2, W + c, c).permute(0, 2, 1, 4, 3)

    a = torch.arange(c, device=q.device)[:, None]
    b = torch.arange(W + c, device=q.device)[None, :]
    mask = (b > a) & (b <= a + W)  # (c, W + c): t-W < s <= t
    out = _sdpa(
        qb.reshape(B * n, H, c, D),
        band(k).reshape(B * n, Hkv, W + c, D),
        band(v).reshape(B * n, Hkv, W + c, D),
        mask=mask,
        scale=scale,
    )
    rest = out.view(B, n, H, c, D).transpose(1, 2).reshape(B, H, n * c, D)
    return torch.cat((first, rest), dim=2)[:, :, :T]


def chunked(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, chunk: int, *, scale: float | None = None) -> torch.Tensor:
    """Chunked local attention without padding: causal inside consecutive chunks of ``chunk`` tokens."""
    B, H, T, D = q.shape
    Hkv = k.shape[1]
    if T <= chunk:
        return causal(q, k, v, scale=scale)
    n = -(-T // chunk)
    Tp = n * chunk

    def blocks(x, h):  # (B, h, T, D) -> (B*n, h, C, D); end padding is invisible under causality
        return F.pad(x, (0, 0, 0, Tp - T)).view(B, h, n, chunk, D).transpose(1, 2).reshape(B * n, h, chunk, D)

    out = _sdpa(blocks(q, H), blocks(k, Hkv), blocks(v, Hkv), is_causal=True, scale=scale)
    return out.view(B, n, H, chunk, D).transpose(1, 2).reshape(B, H, Tp, D)[:, :, :T]
