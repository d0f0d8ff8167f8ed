"""Token-space associative-recall tasks (docs/evaluation.md, after Zoology) and a copy warm-up.

:func:`mqar` lays out ``k0 v0 k1 v1 ...`` (keys and values from disjoint halves of
``[first_id, vocab_size)``), then the query region: every key asked once, in random order, at slots
drawn with power-law weights (slot ``j`` of the query region has weight ``(j + 1) ** (power_a - 1)``,
so most queries come soon after the pairs and a few far later), each key followed by its value.
Everything else in the query region is ``pad_id``.

Targets use the *aligned* convention (like Hugging Face ``labels``): ``targets[t]`` is the token at
``t`` that the model must predict from positions ``< t`` -- shift by one before a next-token loss
(``loss(logits[:, :-1], targets[:, 1:])``). Targets are ``-100`` everywhere except at the value
positions of the query region.
"""

from __future__ import annotations

import heapq
import math
from typing import Any

import torch

from ..model import IGNORE_INDEX
from .common import check_split, item_rng

__all__ = ["IGNORE_INDEX", "copy_batch", "copy_task", "mqar", "mqar_batch"]



def _halves(vocab_size: int, first_id: int) -> tuple[range, range]:
    mid = first_id + (vocab_size - first_id) // 2
    return range(first_id, mid), range(mid, vocab_size)


def mqar(
    seed: int,
    seq_len: int,
    n_pairs: int,
    vocab_size: int,
    *,
    split: str = "eval",
    first_id: int = 3,
    pad_id: int = 0,
    power_a: float = 0.01,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """One MQAR sequence: ``(tokens[seq_len], targets[seq_len], meta)`` (LongTensors).

    ``meta`` holds ``keys``, ``values`` (pair order), ``query_positions`` (position of each query key),
    ``queried`` (pair index asked at each query, same order) and ``gaps`` (query position minus the
    position of that key in the pair block).
    """
    check_split(split)
    keys_range, values_range = _halves(vocab_size, first_id)
    if n_pairs < 1 or n_pairs > min(len(keys_range), len(values_range)):
        raise ValueError(
            f"n_pairs={n_pairs} needs 1..{min(len(keys_range), len(values_range))} ids per half "
            f"of [{first_id}, {vocab_size})"
        )
    if seq_len < 4 * n_pairs:
        raise ValueError(f"seq_len={seq_len} is too short for {n_pairs} pairs: need at least {4 * n_pairs}")
    rng = item_rng(split, "mqar", seed, seq_len, None, 0, n_pairs, vocab_size, first_id, pad_id, power_a)
    keys = rng.sample(keys_range, n_pairs)
    values = rng.sample(values_range, n_pairs)
    ctx = 2 * n_pairs
    n_slots = (seq_len - ctx) // 2
    # weighted sampling without replacement (Efraimidis-Spirakis: largest log(u) / w)
    scored = ((math.log(1.0 - rng.random()) * (j + 1) ** (1.0 - power_a), j) for j in range(n_slots))
    slots = sorted(j for _, j in heapq.nlargest(n_pairs, scored))
    order = list(range(n_pairs))
    rng.shuffle(order)
    tokens = [pad_id] * seq_len
    targets = [IGNORE_INDEX] * seq_len
    for i, (k, v) in enumerate(zip(keys, values)):
        tokens[2 * i], tokens[2 * i + 1] = k, v
    qpos = []
    for j, p in zip(slots, order):
        pos = ctx + 2 * j
        tokens[pos], tokens[pos + 1] = keys[p], values[p]
        targets[pos + 1] = values[p]
        qpos.append(pos)
    meta = dict(split=split, seed=seed, keys=keys, values=values, query_positions=qpos, queried=order,
                gaps=[q - 2 * p for q, p in zip(qpos, order)], first_id=first_id, pad_id=pad_id)
    return torch.tensor(tokens, dtype=torch.long), torch.tensor(targets, dtype=torch.long), meta


def mqar_batch(
    seed: int, batch: int, seq_len: int, n_pairs: int, vocab_size: int, *, split: str = "eval", **kw: Any
) -> tuple[torch.Tensor, torch.Tensor]:
    """``batch`` MQAR sequences (seeds ``seed*batch .. seed*batch+batch-1`` of one stream), stacked."""
    rows = [mqar(seed * batch + b, seq_len, n_pairs, vocab_size, split=split, **kw) for b in range(batch)]
    return torch.stack([r[0] for r in rows]), torch.stack([r[1] for r in rows])


def copy_task(
    seed: int,
    seq_len: int,
    vocab_size: int,
    span: int,
    *,
    split: str = "eval",
    first_id: int = 3,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """Dense copy warm-up: a random ``span`` of ids from ``[first_id, vocab_size)`` repeated to fill
    ``seq_len``; targets (aligned, see module doc) are ``-100`` on the first occurrence and the
    token itself on every repeat."""
    check_split(split)
    if not 1 <= span < seq_len:
        raise ValueError(f"span must be in [1, seq_len), got span={span}, seq_len={seq_len}")
    if vocab_size <= first_id:
        raise ValueError(f"vocab_size={vocab_size} leaves no ids above first_id={first_id}")
    rng = item_rng(split, "copy", seed, seq_len, None, 0, vocab_size, span, first_id)
    block = [rng.randrange(first_id, vocab_size) for _ in range(span)]
    tokens = torch.tensor([block[i % span] for i in range(seq_len)], dtype=torch.long)
    targets = tokens.clone()
    targets[:span] = IGNORE_INDEX
    return tokens, targets, dict(split=split, seed=seed, span=span, block=block)


def copy_batch(
    seed: int, batch: int, seq_len: int, vocab_size: int, span: int, *, split: str = "eval", **kw: Any
) -> tuple[torch.Tensor, torch.Tensor]:
    """``batch`` copy sequences, stacked."""
    rows = [copy_task(seed * batch + b, seq_len, vocab_size, span, split=split, **kw) for b in range(batch)]
    return torch.stack([r[0] for r in rows]), torch.stack([r[1] for r in rows])
