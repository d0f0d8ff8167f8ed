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

__all__ = ["FAMILIES", "answer_text", "copy_document", "synthetic_documents", "synthetic_items"]

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


def copy_document(seed: int, length: int, *, encode: Encode, essay: Sequence[str] | None = None) -> str:
    """A dense induction document: random words, then the same words again (~``length`` tokens).

    Every token of the repeat is predictable only by finding the earlier occurrence of its context
    and copying what followed — the induction/copy circuit that retrieval is built from. A copy
    warm-up forms it in a few hundred steps where sparse passkey documents alone do not (the
    core issue's notes). Words come from ``essay`` (training prose) or the train key vocabulary.
    """
    rng = item_rng("train", "copy", seed, length, None, 0)
    vocab = sorted({w for text in (essay or ()) for w in text.split() if w.isalpha() and len(w) <= 12})
    if len(vocab) < 50:
        from .haystack import TRAIN_ADJECTIVES, TRAIN_NOUNS

        vocab = sorted(set(TRAIN_ADJECTIVES) | set(TRAIN_NOUNS))
    half = max(2, length // 2 - 1)
    words = [rng.choice(vocab) for _ in range(half)]  # at least one token per word: enough
    lo, hi = 1, len(words)
    while lo < hi:  # the longest prefix that fits half the length
        mid = (lo + hi + 1) // 2
        if len(encode(" " + " ".join(words[:mid]))) <= half:
            lo = mid
        else:
            hi = mid - 1
    text = " " + " ".join(words[:lo])
    return text[1:] + text


def synthetic_documents(
    seed: int,
    n: int,
    *,
    encode: Encode,
    lengths: Sequence[int],
    kinds: Sequence[str] = ("passkey", "niah_single", "niah_multikey"),
    essay: Sequence[str] | None = None,
) -> Iterator[str]:
    """``n`` training documents: a train item's prompt plus its gold answer, as plain text.

    The kind ``"copy"`` adds dense induction documents (:func:`copy_document`), drawn with the
    same probability as each other kind.
    """
    kinds = list(kinds)
    if "copy" not in kinds:
        for item in synthetic_items(seed, n, encode=encode, lengths=lengths, kinds=kinds, essay=essay):
            yield item.prompt + answer_text(item)
        return
    others = [k for k in kinds if k != "copy"]
    for i in range(n):
        rng = item_rng("train", "mix-kind", seed, 0, None, i)
        if not others or rng.random() < kinds.count("copy") / len(kinds):
            yield copy_document(rng.getrandbits(32), rng.choice(list(lengths)), encode=encode, essay=essay)
        else:
            item = next(synthetic_items(rng.getrandbits(32), 1, encode=encode, lengths=lengths, kinds=others, essay=essay))
            yield item.prompt + answer_text(item)
