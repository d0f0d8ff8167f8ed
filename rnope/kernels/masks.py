"""Visibility masks from stream times — the one definition of who may attend to whom.

A *time* is a token's index in the (left-padded) stream, shared by every row of a batch; a row's
*position* is ``time - start[row]`` where ``start`` counts its left padding. A query at time t may
see a key at time s iff

* the key exists (``s >= 0``; unwritten ring slots carry ``-1``) and is not padding
  (``s >= start[row]``);
* causality: ``s <= t``;
* sliding window W: ``t - W < s`` (W keys including itself — HF ``cohere2``, llama.cpp;
  FlashAttention's ``window_size=(W-1, 0)``);
* chunked attention C (Llama 4): ``(s - start) // C == (t - start) // C``.
"""

from __future__ import annotations

import torch

from ..config import LayerSpec


def visibility(
    q_time: torch.Tensor,
    k_time: torch.Tensor,
    spec: LayerSpec,
    start: torch.Tensor | None = None,
) -> torch.Tensor:
    """Boolean mask (B or 1, 1, Tq, Tk): True where the query may attend the key.

    q_time: (Tq,) long; k_time: (Tk,) long (-1 = empty slot); start: (B,) long or None.
    """
    t = q_time[:, None]
    s = k_time[None, :]
    allowed = (s >= 0) & (s <= t)
    if spec.span == "sliding":
        allowed &= (t - s) < spec.window
    if start is None:
        if spec.span == "chunked":
            allowed &= torch.div(s.clamp(min=0), spec.chunk, rounding_mode="floor") == torch.div(
                t, spec.chunk, rounding_mode="floor"
            )
        return allowed[None, None]
    st = start[:, None, None]  # (B, 1, 1)
    allowed = allowed[None] & (s[None] >= st)
    if spec.span == "chunked":
        kc = torch.div((s[None] - st).clamp(min=0), spec.chunk, rounding_mode="floor")
        qc = torch.div((t[None] - st).clamp(min=0), spec.chunk, rounding_mode="floor")
        allowed &= kc == qc
    return allowed[:, None]


def fill_empty_rows(allowed: torch.Tensor) -> torch.Tensor:
    """Rows with no visible key (queries on left padding) see every key instead of producing NaN.

    Their outputs are meaningless but finite; callers ignore padded positions.
    """
    return allowed | ~allowed.any(dim=-1, keepdim=True)  # no host sync: cheap, and compiles
