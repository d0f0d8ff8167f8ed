"""Synthetic retrieval documents for the training mix (split ``"train"`` only).

Each document is a train-split item's prompt followed by its gold answer -- ``prompt + " " +
", ".join(answers) + "."`` -- as plain text to interleave with the LM stream, so tiny models see
retrieval during pre-training. Train items use their own templates, filler, key words and
hash-partitioned values (``common.owned_by``) and a separate seed stream, so they never coincide
with evaluation items. ``essay`` is used as given: pass training prose, not the evaluation essay.
"""

from __future__ import annotations

import dataclasses
import functools
import random
import re
from collections.abc import Iterator, Sequence

from .common import Encode, Item, item_rng
from .niah import PasskeyTemplate

__all__ = ["FAMILIES", "RECALL_KINDS", "answer_text", "copy_document", "eval_template_words", "key_words", "recall_document",
           "synthetic_documents", "synthetic_items"]

#: Family names accepted in ``kinds`` besides concrete task names; essay variants need ``essay``.
FAMILIES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    # family: (tasks without essay, tasks needing essay)
    "niah_single": (("niah_single_1",), ("niah_single_2", "niah_single_3")),
    "niah_multikey": (("niah_multikey_2", "niah_multikey_3"), ("niah_multikey_1",)),
}


def answer_text(item: Item) -> str:
    """The gold continuation of ``item.prompt``: ``" a, b, c."``."""
    return " " + ", ".join(item.answers) + "."


def known_kinds() -> tuple[str, ...]:
    """Every name a training run's ``synthetic_kinds`` may list."""
    from . import TASKS  # deferred: the package imports this module
    from .family import DOCUMENT_DISTANCES

    return (*FAMILIES, *TASKS, "copy", *RECALL_KINDS, *DOCUMENT_DISTANCES, *LONG_KINDS)


def _resolve(kind: str, rng: random.Random, has_essay: bool) -> str:
    from . import ESSAY_TASKS, TASKS  # deferred: the package imports this module

    if kind in FAMILIES:
        plain, prose = FAMILIES[kind]
        return rng.choice(plain + (prose if has_essay else ()))
    if kind not in TASKS:
        raise ValueError(f"unknown task {kind!r}; known: {', '.join(known_kinds())}")
    if kind in ESSAY_TASKS and not has_essay:
        raise ValueError(f"task {kind!r} needs an essay haystack: pass essay=[prose strings]")
    return kind


def _lookup_long(seed: int, length: int, depth: float, *, encode: Encode, split: str, essay: Sequence[str] | None) -> Item:
    """A training :func:`~rnope.tasks.family.lookup` item with a drawn haystack and RULER-like format."""
    from .family import lookup, multi_format

    rng = item_rng("train", "lookup_long", seed, length, depth)
    hay = rng.choice(("noise", "essay", "words")) if essay else rng.choice(("noise", "words"))
    n_keys, n_values, n_queries = multi_format(rng, rng.random(), (0.3, 0.4, 0.5))
    return lookup(rng.getrandbits(32), length, depth, encode=encode, split="train", haystack=hay, essay=essay,
                  n_keys=n_keys, n_values=n_values, n_queries=n_queries)


#: Long training item kinds that are not evaluation tasks.
LONG_KINDS = {"lookup_long": _lookup_long}


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
            pick = rng.choice(list(kinds))
            task = pick if pick in LONG_KINDS else _resolve(pick, rng, essay is not None)
            length = rng.choice(list(lengths))
            depth = round(rng.uniform(0.0, 100.0), 2)
            gen = LONG_KINDS.get(task) or TASKS[task]
            try:
                yield gen(rng.getrandbits(32), length, depth, encode=encode, split="train", essay=essay)
                break
            except ValueError as e:  # too short for this task: draw again
                if "too short" not in str(e):
                    raise
                err = e
        else:
            assert err is not None
            raise err


def _strings(value) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, (tuple, list)):
        for v in value:
            yield from _strings(v)


@functools.cache
def eval_template_words() -> frozenset[str]:
    """Every lower-case word of an evaluation template, the evaluation filler and the evaluation key
    lists (placeholders such as ``{value}`` left out): words a training key phrase must not use."""
    from .haystack import EVAL_ADJECTIVES, EVAL_NOUNS, NOISE_EVAL
    from .niah import EVAL_NIAH, EVAL_PASSKEY
    from .ruler import EVAL_CWE, EVAL_FWE, EVAL_VT

    texts = [*NOISE_EVAL, *EVAL_NOUNS, *EVAL_ADJECTIVES]
    for tpl in (EVAL_PASSKEY, EVAL_NIAH, EVAL_VT, EVAL_CWE, EVAL_FWE):
        texts.extend(_strings(dataclasses.astuple(tpl)))
    return frozenset(w for t in texts for w in re.findall(r"[a-z]+", re.sub(r"\{\w+\}", " ", t).lower()))


@functools.lru_cache(maxsize=4)
def _key_words(essay: tuple[str, ...]) -> tuple[str, ...]:
    found = {w for text in essay for w in re.findall(r"\b[a-z]{3,10}\b", text.lower())}
    return tuple(sorted(found - eval_template_words()))


def key_words(essay: Sequence[str] | None) -> tuple[str, ...]:
    """The open key vocabulary of :func:`recall_document`: the 3-10 letter words of the training
    prose ``essay``, minus :func:`eval_template_words` (cached per essay)."""
    return _key_words(tuple(essay)) if essay else ()


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


#: Dense recall kinds -> the most filler sentences between needle and question.
RECALL_KINDS: dict[str, int] = {"recall_near": 2, "recall": 40}
#: Kind words closing a key phrase; none is a word of an evaluation template ("number" was one: NIAH).
_RECALL_WORDS = ("code", "badge", "pin", "token", "tag", "ticket", "serial", "combination", "label", "id")
_RECALL_FORMS = (  # (needle, question + answer prefix); phrasing disjoint from EVAL_PASSKEY
    ("The {key} is {value}. Keep it in mind. {value} is the {key}.", "What is the {key}? The {key} is"),
    ("My {key} is {value}. Note it down. {value} is my {key}.", "What is my {key}? My {key} is"),
    ("Our {key} is {value}. Do not forget it. {value} is our {key}.", "What is our {key}? Our {key} is"),
    ("The {key} reads {value}. Write it down. {value} is what the {key} reads.", "What does the {key} read? The {key} reads"),
)


def recall_document(seed: int, kind: str = "recall", *, max_tokens: int | None = None, encode: Encode | None = None,
                    essay: Sequence[str] | None = None) -> str:
    """A short passkey-style question/answer document: needle, a few filler sentences, question, answer.

    ``"The secret code is 12345. Keep it in mind. 12345 is the secret code. <filler>\nWhat is the
    secret code? The secret code is 12345."`` with a train template, train filler and a train-owned
    value; ``0..RECALL_KINDS[kind]`` filler sentences (fewer if ``max_tokens`` would be exceeded).
    Many of these fit one training sequence, so each sequence carries many retrieval targets at
    short distances: tiny models learn to copy the value at 0-2 sentences (``recall_near``) within a
    few hundred steps, and then extend it to longer distances (``recall``), where a long-distance
    document from the start stays at chance (the reproduce issue's notes). A curriculum of
    ``recall_near`` then ``recall`` then ``passkey`` builds retrieval that sparse long documents
    alone do not.

    The key phrase is two words: a rare train noun, then one of ten kind words ("code", "pin", ...).
    In ``"recall"`` documents with ``essay``, each of the two is, with probability 1/2, a word of the
    training prose instead (:func:`key_words`). With only the ten kind words, tiny models learned to
    copy the number after "<kind word> is" and missed any key ending in another word (the eval
    template's "pass key": whole value right 0.00-0.21 of the time, teacher-forced, against
    0.96-1.00 for an unseen first word before a kind word). Open words make the model match the
    question's own key (docs/retrieval.md). ``"recall_near"`` keeps the closed set, on which the
    copy circuit forms fastest. Words of an evaluation template are never used.
    """
    from .common import sample_number
    from .haystack import TRAIN_NOUNS, noise_haystack

    if kind not in RECALL_KINDS:
        raise ValueError(f"unknown recall kind {kind!r}; known: {', '.join(RECALL_KINDS)}")
    rng = item_rng("train", kind, seed, 0, None, 0)
    # open words in "recall" documents only: "recall_near" keeps the closed set, on which the copy
    # circuit forms fastest; empty without essay, and the draws below are then the closed set's
    words = key_words(essay) if kind == "recall" else ()
    first = rng.choice(words) if words and rng.random() < 0.5 else rng.choice(TRAIN_NOUNS)
    last = rng.choice(words) if words and rng.random() < 0.5 else rng.choice(_RECALL_WORDS)
    key = f"{first} {last}"
    needle, query = (part.format(key=key, value="{value}") for part in rng.choice(_RECALL_FORMS))
    tpl = PasskeyTemplate("", needle, query)
    value = sample_number(rng, 5, "train")
    hay = noise_haystack("train", rng)
    n = rng.randint(0, RECALL_KINDS[kind])
    offset = rng.randrange(64)

    def build(k: int) -> str:
        fill = hay.sep.join(hay.units(offset + k)[offset:])
        body = tpl.needle.format(value=value) + (" " + fill if fill else "")
        return f"{body}\n{tpl.query} {value}."

    doc = build(n)
    if max_tokens is not None and encode is not None:
        while n > 0 and len(encode(doc)) > max_tokens:
            n //= 2
            doc = build(n)
        if len(encode(doc)) > max_tokens:
            raise ValueError(f"length {max_tokens} is too short for task {kind!r}: the document needs {len(encode(doc))} tokens")
    return doc


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

    Besides task names, ``kinds`` may hold dense short kinds -- ``"copy"`` (:func:`copy_document`),
    :data:`RECALL_KINDS` (:func:`recall_document`) and the retrieval family's
    :data:`~rnope.tasks.family.DOCUMENT_DISTANCES` (:func:`~rnope.tasks.family.lookup_document`) --
    and :data:`LONG_KINDS`; every listed kind is drawn with the same probability.
    """
    from .family import DOCUMENT_DISTANCES, lookup_document

    kinds = list(kinds)
    dense = {"copy", *RECALL_KINDS, *DOCUMENT_DISTANCES}
    if not any(k in dense for k in kinds):
        for item in synthetic_items(seed, n, encode=encode, lengths=lengths, kinds=kinds, essay=essay):
            yield item.prompt + answer_text(item)
        return
    others = [k for k in kinds if k not in dense]
    for i in range(n):
        rng = item_rng("train", "mix-kind", seed, 0, None, i)
        pick = rng.choice(kinds)  # each listed kind equally likely
        if pick == "copy":
            yield copy_document(rng.getrandbits(32), rng.choice(list(lengths)), encode=encode, essay=essay)
        elif pick in RECALL_KINDS:
            yield recall_document(rng.getrandbits(32), pick, max_tokens=max(lengths) - 1, encode=encode, essay=essay)
        elif pick in DOCUMENT_DISTANCES:
            yield lookup_document(rng.getrandbits(32), pick, max_tokens=max(lengths) - 1, encode=encode, essay=essay)
        else:
            item = next(synthetic_items(rng.getrandbits(32), 1, encode=encode, lengths=lengths, kinds=others, essay=essay))
            yield item.prompt + answer_text(item)
