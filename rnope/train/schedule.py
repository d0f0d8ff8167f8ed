"""Learning-rate schedule: linear warm-up, then cosine decay to ``min_lr`` — a pure function of the step.

The paper trains with AdamW, 2k warm-up steps and cosine decay from 7e-3 to 3.5e-4 (arXiv 2501.18795
§2); :func:`lr_at` is that shape for any length. Each training stage runs its own schedule over its
own steps (``step`` counts from the stage's first step).
"""

from __future__ import annotations

import math

__all__ = ["lr_at"]


def lr_at(step: int, *, total: int, peak: float, min_lr: float, warmup: int) -> float:
    """Learning rate of the update with 0-based index ``step`` out of ``total``.

    Warm-up: ``peak * (step + 1) / warmup`` for ``step < warmup`` (never 0, reaches ``peak`` on the
    last warm-up step). Then cosine from ``peak`` (at ``step == warmup``) towards ``min_lr`` (reached
    after the last step). Past ``total`` it stays at ``min_lr``.
    """
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if warmup > 0 and step < warmup:
        return peak * (step + 1) / warmup
    decay = total - warmup
    if decay <= 0 or step >= total:
        return min_lr if step >= total else peak
    progress = (step - warmup) / decay  # in [0, 1)
    return min_lr + 0.5 * (peak - min_lr) * (1.0 + math.cos(math.pi * progress))
