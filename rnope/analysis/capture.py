"""Attention weights of selected query rows, computed in chunks from a model's post-RoPE q and k.

The model calls an *observer* in every layer with its post-RoPE ``q`` (B, H, Tq, D) and ``k``
(B, Hkv, Tk, D) before attention (:mod:`rnope.model`). Here we recompute the softmax rows of just the
queries we care about (e.g. the End segment of a probe) against every key they may see, using the
one mask definition :func:`rnope.kernels.visibility` and the eager kernel's conventions (fp32 scores,
``scale = head_dim ** -0.5``, GQA: query head ``h`` reads KV head ``h // (H / Hkv)``). Rows are
produced a few queries at a time so the working set is ``chunk_bytes`` (default 64 MiB) whatever the
sequence length: a T x T matrix is never materialised.

* :func:`attention_rows` -- generator of ``(query_index, weights, allowed)`` chunks for one layer;
* :func:`run_observed` -- run a model with an observer, stopping right after the last layer's
  observer (the last attention, the final norm and the logits are never computed);
* :func:`capture_weights` -- convenience for small inputs: every layer's rows stacked.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import torch

from ..config import LayerSpec
from ..kernels import fill_empty_rows, visibility

__all__ = ["DEFAULT_CHUNK_BYTES", "attention_rows", "capture_weights", "run_observed"]

DEFAULT_CHUNK_BYTES = 64 * 2**20


def _as_index(queries, device) -> torch.Tensor:
    idx = torch.as_tensor(queries, dtype=torch.long, device=device).reshape(-1)
    return idx


def attention_rows(
    q: torch.Tensor,
    k: torch.Tensor,
    q_time: torch.Tensor,
    k_time: torch.Tensor,
    spec: LayerSpec,
    start: torch.Tensor | None = None,
    *,
    queries: Sequence[int] | torch.Tensor,
    scale: float | None = None,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Softmax rows of the query indices ``queries`` (positions along q's time axis), in chunks.

    Yields ``(idx (c,), weights (B, H, c, Tk) fp32, allowed (B|1, 1, c, Tk) bool)``; each row sums to
    1 over the keys ``allowed`` marks (weights elsewhere are exactly 0). Peak extra memory is about
    ``chunk_bytes`` (at least one query row per chunk).
    """
    B, H, Tq, D = q.shape
    Hkv, Tk = k.shape[1], k.shape[2]
    if H % Hkv:
        raise ValueError(f"query heads {H} are not a multiple of kv heads {Hkv}")
    rep = H // Hkv
    scale = D**-0.5 if scale is None else float(scale)
    idx_all = _as_index(queries, q.device)
    if idx_all.numel() and (int(idx_all.min()) < 0 or int(idx_all.max()) >= Tq):
        raise ValueError(f"query index out of range [0, {Tq})")
    kt = k.float().transpose(-1, -2).unsqueeze(2)  # (B, Hkv, 1, D, Tk); no copy when k is fp32
    per_query = B * H * Tk * (4 + 4 + 1)  # scores, softmax output, mask
    c = max(1, int(chunk_bytes) // max(1, per_query))
    for s in range(0, idx_all.numel(), c):
        idx = idx_all[s : s + c]
        n = idx.numel()
        qc = q[:, :, idx].float().reshape(B, Hkv, rep, n, D)
        scores = torch.matmul(qc, kt).reshape(B, H, n, Tk)
        scores.mul_(scale)
        allowed = fill_empty_rows(visibility(q_time[idx], k_time, spec, start))
        scores.masked_fill_(~allowed, float("-inf"))
        weights = scores.softmax(dim=-1)
        del scores
        yield idx, weights, allowed


class _Stop(Exception):
    """Raised by the observer after the last layer: the rest of the forward is not needed."""


def run_observed(model: torch.nn.Module, tokens: torch.Tensor, fn: Callable[..., None]) -> None:
    """Run ``model(tokens, observer=...)`` under ``inference_mode``, calling
    ``fn(layer_idx, spec, q, k, q_time, k_time, start)`` in every layer, and stop right after the
    last layer's call (its attention, the final norm and the logits are skipped)."""
    last = model.config.n_layer - 1
    seen: list[int] = []

    def observer(layer_idx, spec, q, k, q_time, k_time, start):
        fn(layer_idx, spec, q, k, q_time, k_time, start)
        seen.append(layer_idx)
        if layer_idx == last:
            raise _Stop

    with torch.inference_mode():
        try:
            model(tokens, observer=observer)
        except _Stop:
            return
    raise RuntimeError(f"the model never called the observer for its last layer (saw layers {seen})")


def capture_weights(
    model: torch.nn.Module,
    tokens: torch.Tensor,
    queries: Sequence[int] | torch.Tensor,
    *,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
) -> list[torch.Tensor]:
    """Every layer's attention rows of ``queries``: a list of (B, H, len(queries), T) fp32 CPU
    tensors. Memory grows with ``len(queries) x T`` per layer -- for small probes and tests; the
    analysis reduces rows on the fly instead (:mod:`rnope.analysis.report`)."""
    out: dict[int, torch.Tensor] = {}

    def fn(layer_idx, spec, q, k, q_time, k_time, start):
        rows = [
            w.cpu()
            for _, w, _ in attention_rows(q, k, q_time, k_time, spec, start, queries=queries, chunk_bytes=chunk_bytes)
        ]
        if rows:
            out[layer_idx] = torch.cat(rows, dim=2)
        else:
            out[layer_idx] = torch.zeros(q.shape[0], q.shape[1], 0, k.shape[2])

    run_observed(model, tokens, fn)
    return [out[i] for i in range(len(out))]
