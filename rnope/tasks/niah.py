"""Needle-in-a-haystack generators: the passkey of docs/evaluation.md and RULER's eight NIAH tasks.

* :func:`passkey` -- the LongLoRA-lineage passkey: 5-digit key, "The pass key is 12345. Remember
  it. 12345 is the pass key.", question "What is the pass key? The pass key is".
* ``niah_single_1/2/3``, ``niah_multikey_1/2/3``, ``niah_multivalue``, ``niah_multiquery`` -- RULER's
  NIAH family as RULER builds it (docs/ruler.md): needle "One of the special magic {numbers|words|uuids} for {key}
  is: {value}.", answer prefix "The special magic numbers for {key} mentioned in the provided text
  are". Values: 7-digit numbers or UUIDs drawn from the item RNG; keys: adjective-noun words.
  Where one value is asked for (6 of the 8 tasks) the eval wording is RULER's singular one
  (:data:`EVAL_NIAH_ONE`: "A special magic number is hidden ...", "... mentioned in the provided text
  is"); the needles keep the plural wording, as in RULER. Eval noise sits in blocks on their own lines.

``split="eval"`` uses exactly those templates; ``split="train"`` uses seeded paraphrases that share
no phrase with them, disjoint key words, train-owned values and different noise filler. The queried
needle (``needle_spans[0]``) sits at the requested depth; further needles at seeded random depths.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache

from .common import (
    Encode,
    Item,
    assemble,
    check_split,
    fit_haystack,
    gen_budget,
    item_rng,
    place,
    sample_number,
    sample_uuid,
    unit_offsets,
)
from .haystack import Haystack, KeySampler, essay_haystack, needle_haystack, noise_haystack

__all__ = [
    "EVAL_NIAH",
    "EVAL_NIAH_ONE",
    "EVAL_PASSKEY",
    "NIAH_SPECS",
    "NiahSpec",
    "NiahTemplate",
    "PasskeyTemplate",
    "TRAIN_NIAH",
    "TRAIN_PASSKEY",
    "join_keys",
    "niah",
    "passkey",
]

NIAH_GEN_TOKENS = 128  # RULER's generation budget for the NIAH family
PASSKEY_GEN_TOKENS = 16


@dataclass(frozen=True)
class PasskeyTemplate:
    intro: str
    needle: str  # {value}
    query: str  # question + answer prefix


@dataclass(frozen=True)
class NiahTemplate:
    intro: str  # {kind} {kind1}
    needle: str  # {kind} {kind1} {key} {value}
    question: str  # {kind} {kind1} {query}
    prefix: str  # {kind} {kind1} {query}
    kinds: tuple[tuple[str, str, str], ...]  # (value type, plural, singular)


EVAL_PASSKEY = PasskeyTemplate(
    "There is an important info hidden inside a lot of irrelevant text. Find it and memorize it. "
    "I will quiz you about the important information there.",
    "The pass key is {value}. Remember it. {value} is the pass key.",
    "What is the pass key? The pass key is",
)

TRAIN_PASSKEY: tuple[PasskeyTemplate, ...] = (
    PasskeyTemplate(
        "A secret code is tucked into the text below. Spot it and keep it in mind; "
        "a question about it comes at the end.",
        "The secret code is {value}. Keep it in mind. {value} is the secret code.",
        "What is the secret code? The secret code is",
    ),
    PasskeyTemplate(
        "Somewhere in this long note sits an access number. Look for it and hold on to it.",
        "The access number is {value}. Do not forget it. {value} is the access number.",
        "What is the access number? The access number is",
    ),
    PasskeyTemplate(
        "A locker combination is buried in the filler below. Find it, since you will need it later.",
        "My locker combination is {value}. Note it down. {value} is my locker combination.",
        "What is my locker combination? My locker combination is",
    ),
)

_EVAL_KINDS = (("numbers", "numbers", "number"), ("words", "words", "word"), ("uuids", "uuids", "uuid"))
_TRAIN_KINDS = (("numbers", "numbers", "number"), ("words", "words", "word"), ("uuids", "identifiers", "identifier"))

EVAL_NIAH = NiahTemplate(
    "Some special magic {kind} are hidden within the following text. Make sure to memorize it. "
    "I will quiz you about the {kind} afterwards.",
    "One of the special magic {kind} for {key} is: {value}.",
    "What are all the special magic {kind} for {query} mentioned in the provided text?",
    "The special magic {kind} for {query} mentioned in the provided text are",
    _EVAL_KINDS,
)

#: RULER's wording when one value is asked for (``n_queries * n_values == 1``): its template with
#: "Some" -> "A", "are all" / "are" -> "is" and the value type singular; the needle stays plural.
EVAL_NIAH_ONE = NiahTemplate(
    "A special magic {kind1} is hidden within the following text. Make sure to memorize it. "
    "I will quiz you about the {kind1} afterwards.",
    EVAL_NIAH.needle,
    "What is the special magic {kind1} for {query} mentioned in the provided text?",
    "The special magic {kind1} for {query} mentioned in the provided text is",
    _EVAL_KINDS,
)

TRAIN_NIAH: tuple[NiahTemplate, ...] = (
    NiahTemplate(
        "A few secret {kind} are tucked away in the passage below. "
        "Read it closely, because you will be asked to recall them.",
        "The secret {kind1} attached to {key} is {value}.",
        "Which secret {kind} are attached to {query} in the passage?",
        "The secret {kind} attached to {query} in the passage are",
        _TRAIN_KINDS,
    ),
    NiahTemplate(
        "The notes below record some reference {kind}. Keep track of them; questions follow.",
        "Note: the reference {kind1} recorded for {key} reads {value}.",
        "Which reference {kind} were recorded for {query} in the notes?",
        "The reference {kind} recorded for {query} in the notes are",
        _TRAIN_KINDS,
    ),
    NiahTemplate(
        "The log below contains several stored {kind}. Pay attention to each entry.",
        "Stored entry: {key} maps to the {kind1} {value}.",
        "Which {kind} does the log above store under {query}?",
        "Under {query}, the log above stores the {kind}",
        _TRAIN_KINDS,
    ),
)


@dataclass(frozen=True)
class NiahSpec:
    """One RULER NIAH configuration (docs/ruler.md)."""

    haystack: str  # noise | essay | needle
    key_type: str  # words | uuids
    value_type: str  # numbers | uuids | words
    n_keys: int = 1  # needles with different keys (multikey)
    n_values: int = 1  # values per key (multivalue)
    n_queries: int = 1  # keys asked at once (multiquery)


NIAH_SPECS: dict[str, NiahSpec] = {
    "niah_single_1": NiahSpec("noise", "words", "numbers"),
    "niah_single_2": NiahSpec("essay", "words", "numbers"),
    "niah_single_3": NiahSpec("essay", "words", "uuids"),
    "niah_multikey_1": NiahSpec("essay", "words", "numbers", n_keys=4),
    "niah_multikey_2": NiahSpec("needle", "words", "numbers"),
    "niah_multikey_3": NiahSpec("needle", "uuids", "uuids"),
    "niah_multivalue": NiahSpec("essay", "words", "numbers", n_values=4),
    "niah_multiquery": NiahSpec("essay", "words", "numbers", n_keys=4, n_queries=4),
}


def join_keys(keys: Sequence[str]) -> str:
    """``a``, ``a and b``, ``a, b, and c`` (RULER's multi-query phrasing)."""
    if len(keys) == 1:
        return keys[0]
    if len(keys) == 2:
        return f"{keys[0]} and {keys[1]}"
    return ", ".join(keys[:-1]) + ", and " + keys[-1]


def _haystack(
    kind: str, split: str, rng: random.Random, essay: Sequence[str] | None, task: str, lines: bool = False
) -> Haystack:
    if kind == "noise":
        return noise_haystack(split, rng, lines=lines)
    if kind == "essay":
        return essay_haystack(essay, rng, task)
    raise ValueError(f"task {task!r}: unknown haystack {kind!r}; known: noise, essay, needle")


def _fit_and_build(
    task: str,
    hay: Haystack,
    head: str,
    needles: Sequence[str],
    depths: Sequence[float],
    query: str,
    encode: Encode,
    length: int,
    gen_tokens: int,
) -> tuple[int, tuple[str, list[tuple[int, int]], tuple[int, int], tuple[int, int]]]:
    """Fit the haystack size, then lay out the prompt with each needle at its depth."""

    @cache
    def layout(n: int) -> tuple[str, list[tuple[int, int]], tuple[int, int], tuple[int, int]]:
        units = hay.units(n)
        offsets = unit_offsets(units, hay.sep)
        inserts = [(place(offsets, d), text) for d, text in zip(depths, needles)]
        return assemble(head, units, hay.sep, inserts, "\n", query)

    n = fit_haystack(lambda k: layout(k)[0], encode, length, gen_tokens, task=task)
    return n, layout(n)


def passkey(
    seed: int,
    length: int,
    depth: float | None = None,
    *,
    encode: Encode,
    split: str = "eval",
    haystack: str = "noise",
    essay: Sequence[str] | None = None,
    gen_tokens: int | None = None,
) -> Item:
    """The passkey item (docs/evaluation.md): a 5-digit key at ``depth`` % of a ``noise`` (or ``essay``) haystack."""
    task = "passkey"
    rng = item_rng(check_split(split), task, seed, length, depth)
    tpl = EVAL_PASSKEY if split == "eval" else rng.choice(TRAIN_PASSKEY)
    value = sample_number(rng, 5, split)
    d = rng.uniform(0.0, 100.0) if depth is None else float(depth)
    hay = _haystack(haystack, split, rng, essay, task)
    budget = gen_budget(encode, PASSKEY_GEN_TOKENS, [value], gen_tokens, length)
    needle = tpl.needle.format(value=value)
    n, (prompt, spans, qspan, cspan) = _fit_and_build(
        task, hay, tpl.intro + "\n", [needle], [d], tpl.query, encode, length, budget
    )
    meta = dict(split=split, seed=seed, haystack=hay.kind, sep=hay.sep, n_units=n, depths=[d],
                keys=[None], values=[value], query_keys=[None], context_span=cspan)
    return Item(prompt, [value], task, length, None if depth is None else float(depth), spans, qspan, budget, meta)


def niah(
    task: str,
    seed: int,
    length: int,
    depth: float | None = None,
    *,
    encode: Encode,
    split: str = "eval",
    essay: Sequence[str] | None = None,
    gen_tokens: int | None = None,
) -> Item:
    """One item of RULER NIAH task ``task`` (a key of :data:`NIAH_SPECS`)."""
    spec = NIAH_SPECS[task]
    rng = item_rng(check_split(split), task, seed, length, depth)
    if split == "eval":
        tpl = EVAL_NIAH_ONE if spec.n_queries * spec.n_values == 1 else EVAL_NIAH
    else:
        tpl = rng.choice(TRAIN_NIAH)
    kind, kind1 = next((p, s) for t, p, s in tpl.kinds if t == spec.value_type)
    keys_sampler = KeySampler(split, rng)

    def draw(typ: str, r: random.Random) -> str:
        if typ == "numbers":
            return sample_number(r, 7, split)
        if typ == "uuids":
            return sample_uuid(r, split)
        return keys_sampler()

    keys = [draw(spec.key_type, rng) for _ in range(spec.n_keys)]
    needle_keys, needle_values = [], []
    for k in keys:
        for _ in range(spec.n_values):
            needle_keys.append(k)
            needle_values.append(draw(spec.value_type, rng))
    query_keys = keys[: spec.n_queries]
    answers = [v for qk in query_keys for k, v in zip(needle_keys, needle_values) if k == qk]
    d0 = rng.uniform(0.0, 100.0) if depth is None else float(depth)
    depths = [d0] + [rng.uniform(0.0, 100.0) for _ in needle_keys[1:]]

    def needle_text(k: str, v: str) -> str:
        return tpl.needle.format(kind=kind, kind1=kind1, key=k, value=v)

    if spec.haystack == "needle":
        drng = random.Random(rng.getrandbits(64))
        keys_sampler.rng = drng  # distractor keys: own stream, still distinct from the targets
        taken = set(needle_values)

        def line(_: int) -> str:
            v = draw(spec.value_type, drng)
            while v in taken:
                v = draw(spec.value_type, drng)
            taken.add(v)
            return needle_text(draw(spec.key_type, drng), v)

        hay = needle_haystack(line)
    else:
        # RULER's noise blocks on their own lines for eval; train items keep their layout (pinned by tests)
        hay = _haystack(spec.haystack, split, rng, essay, task, lines=split == "eval")
    q = join_keys(query_keys)
    query = (tpl.question.format(kind=kind, kind1=kind1, query=q) + " "
             + tpl.prefix.format(kind=kind, kind1=kind1, query=q))
    budget = gen_budget(encode, NIAH_GEN_TOKENS, answers, gen_tokens, length)
    n, (prompt, spans, qspan, cspan) = _fit_and_build(
        task, hay, tpl.intro.format(kind=kind, kind1=kind1) + "\n", [needle_text(k, v) for k, v in zip(needle_keys, needle_values)],
        depths, query, encode, length, budget,
    )
    meta = dict(split=split, seed=seed, haystack=hay.kind, sep=hay.sep, n_units=n, depths=depths,
                keys=needle_keys, values=needle_values, query_keys=query_keys, context_span=cspan,
                key_type=spec.key_type, value_type=spec.value_type)
    return Item(prompt, answers, task, length, None if depth is None else float(depth), spans, qspan, budget, meta)


def _bind(task: str) -> Callable[..., Item]:
    def gen(
        seed: int,
        length: int,
        depth: float | None = None,
        *,
        encode: Encode,
        split: str = "eval",
        essay: Sequence[str] | None = None,
        gen_tokens: int | None = None,
    ) -> Item:
        return niah(task, seed, length, depth, encode=encode, split=split, essay=essay, gen_tokens=gen_tokens)

    gen.__name__ = gen.__qualname__ = task
    spec = NIAH_SPECS[task]
    gen.__doc__ = (
        f"RULER ``{task}`` (docs/ruler.md): haystack {spec.haystack}, keys {spec.key_type}, values {spec.value_type}."
    )
    return gen


niah_single_1 = _bind("niah_single_1")
niah_single_2 = _bind("niah_single_2")
niah_single_3 = _bind("niah_single_3")
niah_multikey_1 = _bind("niah_multikey_1")
niah_multikey_2 = _bind("niah_multikey_2")
niah_multikey_3 = _bind("niah_multikey_3")
niah_multivalue = _bind("niah_multivalue")
niah_multiquery = _bind("niah_multiquery")
