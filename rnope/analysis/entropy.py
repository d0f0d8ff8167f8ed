"""Attention entropy of query rows, in **nats** (natural log).

The entropy of a row ``a`` over its visible keys is ``H(a) = -sum_j a_j ln a_j`` (``0 ln 0 = 0``).
Uniform attention over ``n`` visible keys gives the maximum, ``ln n`` -- the *uniform reference*.
A full causal layer's query at position ``i`` sees ``n = i + 1`` keys, so its reference is
``ln(i + 1)``; a sliding layer's is ``ln(min(i + 1, W))``.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["BASE", "query_positions", "row_entropy", "uniform_reference", "visible_keys"]

BASE = "e"  # entropies are natural-log (nats)


def row_entropy(weights: torch.Tensor) -> torch.Tensor:
    """``-sum a ln a`` over the last dim (nats); exact zeros contribute 0."""
    return torch.special.entr(weights.float()).sum(dim=-1)


def visible_keys(allowed: torch.Tensor) -> torch.Tensor:
    """Number of keys each row may see: allowed (..., Tk) bool -> (...) float."""
    return allowed.sum(dim=-1).float()


def uniform_reference(allowed: torch.Tensor) -> torch.Tensor:
    """``ln n`` (float64) for ``n`` visible keys per row: the entropy of uniform attention."""
    return allowed.sum(dim=-1).double().log()


def query_positions(n_tokens: int, n: int = 48) -> np.ndarray:
    """About ``n`` query positions in ``[0, n_tokens)`` for entropy-vs-position curves: half spaced
    geometrically (dense at the start, where ``ln(i+1)`` bends), half linearly; sorted, unique."""
    if n_tokens < 1:
        raise ValueError(f"n_tokens must be >= 1, got {n_tokens}")
    half = max(1, n // 2)
    geo = np.geomspace(1, n_tokens, half) - 1
    lin = np.linspace(0, n_tokens - 1, half)
    return np.unique(np.clip(np.rint(np.concatenate([[0], geo, lin])), 0, n_tokens - 1).astype(np.int64))
