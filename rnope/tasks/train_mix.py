"""Synthetic retrieval documents for the training mix (split ``"train"`` only).

Each document is a train-split item's prompt followed by its gold answer -- ``prompt + " " +
", ".join(answers) + "."`` -- as plain text to interleave with the LM stream, so tiny models see
retrieval during pre-training. Train items use their own templates, filler, key words and
hash-partitioned values (``common.owned_by``) and a separate seed stream, so they never coincide
with evaluation items. ``essay`` is used as given: pass training prose, not the evaluation essay.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence

from .common import Encode, Item, item_rng

__all__ = ["FAMILIES", "answer_text", "synthetic_documents", "synthetic_items"]

#: Family names accepted in ``kinds`` besides concrete task names; essay variants need ``essay``.
FAMILIES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    # family: (tasks without essay, tasks needing essay)
    "niah_single": (("niah_single_1",), ("niah_single_2", "niah_single_3")),
    "niah_multikey": (("niah_multikey_2", "niah_multikey_3"), ("niah_multikey_1",)),
}


def answer_text(item: Item) -> str:
    """The gold continuation of ``item.prompt``: ``" a, b, c."``."""
    return " " + ", ".join(item.answers) + "."


def _resolve(kind: str, rng: random.Random, has_essay: bool) -> str:
    from . import ESSAY_TASKS, TASKS  # deferred: the package imports this module

    if kind in FAMILIES:
        plain, prose = FAMILIES[kind]
        return rng.choice(plain + (prose if has_essay else ()))
    if kind not in TASKS:
        known = ", ".join(list(FAMILIES) + list(TASKS))
        raise ValueError(f"unknown task {kind!r}; known: {known}")
    if kind in ESSAY_TASKS and not has_essay:
        raise ValueError(f"task {kind!r} needs an essay haystack: pass essay=[prose strings]")
    return kind


def synthetic_items(
    seed: int,
    n: int,
    *,
    encode: Encode,
    lengths: Sequence[int],
    kinds: Sequence[str] = ("passkey", "niah_single", "niah_multikey"),
    essay: Sequence[str] | None = None,
) -> Iterator[Item]:
    """``n`` train-split items: kind, length and depth (uniform 0-100 %) drawn per item.

    A draw whose length is too short for its task is redrawn (up to 20 times, then the error is
    raised).
    """
    from . import TASKS

    if not lengths:
        raise ValueError("lengths must not be empty")
    for i in range(n):
        rng = item_rng("train", "mix", seed, 0, None, i)
        err: ValueError | None = None
        for _ in range(20):
            task = _resolve(rng.choice(list(kinds)), rng, essay is not None)
            length = rng.choice(list(lengths))
            depth = round(rng.uniform(0.0, 100.0), 2)
            try:
                yield TASKS[task](rng.getrandbits(32), length, depth, encode=encode, split="train", essay=essay)
                break
            except ValueError as e:  # too short for this task: draw again
                if "too short" not in str(e):
                    raise
                err = e
        else:
            assert err is not None
            raise err


def synthetic_documents(
    seed: int,
    n: int,
    *,
    encode: Encode,
    lengths: Sequence[int],
    kinds: Sequence[str] = ("passkey", "niah_single", "niah_multikey"),
    essay: Sequence[str] | None = None,
) -> Iterator[str]:
    """``n`` training documents: a train item's prompt plus its gold answer, as plain text."""
    for item in synthetic_items(seed, n, encode=encode, lengths=lengths, kinds=kinds, essay=essay):
        yield item.prompt + answer_text(item)
