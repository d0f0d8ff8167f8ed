"""Running evaluation items through a predictor, with a progress bar, and the models' metadata."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any

from .predictor import Predictor

__all__ = ["predictor_meta", "progress_bar", "run_items"]


def progress_bar(total: int, desc: str, enabled: bool = True):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="item", file=sys.stderr, disable=not enabled, dynamic_ncols=True)


def run_items(
    predictor: Predictor,
    items: Sequence[Any],
    batch_size: int,
    *,
    desc: str = "eval",
    progress: bool = True,
    on_batch: Callable[[list[int], list[str]], None] | None = None,
) -> list[str]:
    """Greedy continuations of ``items`` (``.prompt``, ``.gen_tokens``) through ``predictor``:
    items are grouped by generation budget and sorted by prompt size so each batch holds prompts
    of similar length; results come back in the items' order."""
    preds: list[str] = [""] * len(items)
    order = sorted(range(len(items)), key=lambda i: (items[i].gen_tokens, -len(items[i].prompt), i))
    with progress_bar(len(items), desc, progress) as bar:
        s = 0
        while s < len(order):
            g = items[order[s]].gen_tokens
            idx = [order[s]]
            s += 1
            while s < len(order) and len(idx) < batch_size and items[order[s]].gen_tokens == g:
                idx.append(order[s])
                s += 1
            out = predictor.complete([items[i].prompt for i in idx], g)
            if len(out) != len(idx):
                raise RuntimeError(f"predictor returned {len(out)} completions for {len(idx)} prompts")
            for i, o in zip(idx, out):
                preds[i] = o
            if on_batch is not None:
                on_batch(idx, out)
            bar.update(len(idx))
    return preds


def predictor_meta(predictors: Sequence[Predictor]) -> dict[str, dict]:
    """``{name: info}`` for the JSON outputs."""
    return {p.name: {**dict(getattr(p, "info", {}) or {}), "train_seq_len": p.train_seq_len} for p in predictors}
