"""Shared machinery for the synthetic long-context tasks (docs/evaluation.md).

* :class:`Item` -- one generated example (prompt ending in the answer prefix, gold answers, spans).
* Seeded randomness: every item draws from ``random.Random(blake2b(split, task, seed, length, depth,
  index, ...))`` -- never Python's ``hash()`` -- so eval and train streams never share a seed.
* Split ownership: generated values (numbers, UUIDs, coded words, pseudo-words, variable names) are
  hash-partitioned between ``"eval"`` and ``"train"``, so a train item can never contain an eval value.
* Length fitting (docs/evaluation.md "Items", RULER): :func:`fit_haystack` searches the number of
  haystack units so ``len(encode(prompt)) + gen_tokens <= length`` with the model's own tokenizer.
* Needle placement: at a unit (sentence) boundary at or before the requested depth, measured in
  characters of the haystack (:func:`place`), and :func:`assemble` lays out the prompt with spans.
"""

from __future__ import annotations

import bisect
import hashlib
import random
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "Encode",
    "Item",
    "SPLITS",
    "assemble",
    "check_split",
    "fit_haystack",
    "gen_budget",
    "item_rng",
    "owned_by",
    "place",
    "sample_coded_word",
    "sample_number",
    "sample_uuid",
    "stable_seed",
    "too_short_error",
    "unit_offsets",
]

Encode = Callable[[str], Sequence[int]]
SPLITS: tuple[str, ...] = ("eval", "train")


@dataclass(frozen=True)
class Item:
    """One synthetic long-context example.

    ``prompt`` runs up to and including the answer prefix (the model continues it); ``needle_spans``
    and ``query_span`` are *character* spans into ``prompt`` (``query_span`` is the "End" segment of docs/evaluation.md
    segment: question + answer prefix); ``length`` is the requested context in model tokens and
    ``len(encode(prompt)) + gen_tokens <= length`` holds.
    """

    prompt: str
    answers: list[str]
    task: str
    length: int
    depth: float | None
    needle_spans: list[tuple[int, int]]
    query_span: tuple[int, int]
    gen_tokens: int
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def needles(self) -> list[str]:
        """The text of each needle span."""
        return [self.prompt[a:b] for a, b in self.needle_spans]


def check_split(split: str) -> str:
    """Validate ``split`` (``"eval"`` or ``"train"``)."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; known: {', '.join(SPLITS)}")
    return split


def stable_seed(*parts: object) -> int:
    """A 64-bit seed from ``repr(parts)`` via blake2b (stable across runs and Python versions)."""
    digest = hashlib.blake2b(repr(parts).encode("utf-8"), digest_size=8, person=b"rnope-tasks").digest()
    return int.from_bytes(digest, "big")


def item_rng(
    split: str, task: str, seed: int, length: int, depth: float | None, index: int = 0, *extra: object
) -> random.Random:
    """The RNG of one item, derived from ``(split, task, seed, length, depth, index, *extra)``."""
    check_split(split)
    d = None if depth is None else float(depth)
    return random.Random(stable_seed(split, task, int(seed), int(length), d, int(index), *extra))


def owned_by(value: str) -> str:
    """Which split may use ``value``: a fixed pseudo-random half of all strings each."""
    bit = hashlib.blake2b(value.encode("utf-8"), digest_size=1, person=b"rnope-split").digest()[0] & 1
    return SPLITS[bit]


def _draw_owned(rng: random.Random, split: str, draw: Callable[[], str]) -> str:
    while True:  # expected two draws
        v = draw()
        if owned_by(v) == split:
            return v


def sample_number(rng: random.Random, digits: int, split: str) -> str:
    """A ``digits``-digit number (no leading zero) owned by ``split``."""
    return _draw_owned(rng, split, lambda: str(rng.randint(10 ** (digits - 1), 10**digits - 1)))


def sample_uuid(rng: random.Random, split: str) -> str:
    """A version-4-shaped UUID drawn from ``rng`` (never ``uuid.uuid4()``), owned by ``split``."""
    return _draw_owned(rng, split, lambda: str(uuid.UUID(int=rng.getrandbits(128), version=4)))


def sample_coded_word(rng: random.Random, split: str, n: int = 6, upper: bool = False) -> str:
    """A random ``n``-letter string (RULER's coded words / variable names) owned by ``split``."""
    letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZ" if upper else "abcdefghijklmnopqrstuvwxyz"
    return _draw_owned(rng, split, lambda: "".join(rng.choice(letters) for _ in range(n)))


def gen_budget(
    encode: Encode, default: int, answers: Sequence[str], override: int | None = None, length: int | None = None
) -> int:
    """Generation budget in tokens: ``override`` if given; else the task's ``default``, capped at a
    quarter of ``length`` for short contexts ("shorter is fine as long as the gold fits") and
    raised so the gold answer (``" a, b."``) plus 2 tokens always fits."""
    if override is not None:
        if override < 1:
            raise ValueError(f"gen_tokens must be >= 1, got {override}")
        return int(override)
    cap = default if length is None else min(default, max(1, length // 4))
    return max(cap, len(encode(" " + ", ".join(answers) + ".")) + 2)


def too_short_error(task: str, length: int, needed: int, template_only: bool = True) -> ValueError:
    """The error raised when even the smallest haystack does not fit ``length``."""
    what = "the template alone needs" if template_only else "the smallest valid item needs"
    return ValueError(f"length {length} is too short for task {task!r}: {what} {needed} tokens")


def fit_haystack(
    build: Callable[[int], str],
    encode: Encode,
    length: int,
    reserve: int,
    *,
    task: str = "?",
    min_units: int = 0,
    max_units: int | None = None,
) -> int:
    """Largest ``n >= min_units`` with ``len(encode(build(n))) + reserve <= length``.

    Token count is assumed (close to) non-decreasing and near-affine in ``n``: the search
    interpolates on the measured slope and falls back to bisection when that stalls, so a fit costs
    a handful of encodes (``O(log n)`` worst case). The returned ``n`` is always a verified fit.
    Raises :func:`too_short_error` when ``build(min_units)`` does not fit.
    """
    budget = length - reserve

    def cost(n: int) -> int:
        return len(encode(build(n)))

    n0, c0 = min_units, cost(min_units)
    if c0 > budget:
        raise too_short_error(task, length, c0 + reserve, template_only=min_units == 0)
    lo, c_lo = n0, c0  # largest verified fit
    hi: int | None = None if max_units is None else max_units + 1  # smallest known non-fit
    c_hi, hi_measured = 0, False
    if max_units is not None and max_units <= min_units:
        return min_units
    fits_in_row, slow = 0, 0
    for _ in range(256):
        if hi is not None and hi - lo <= 1:
            break
        width = None if hi is None else hi - lo
        if hi is not None and hi_measured and c_hi > c_lo:
            slope = (c_hi - c_lo) / (hi - lo)
        elif lo > n0 and c_lo > c0:
            slope = (c_lo - c0) / (lo - n0)
        else:
            slope = 0.0
        g = lo + int((budget - c_lo) / slope) if slope > 0 else lo + 16
        if hi is None and fits_in_row >= 2:
            g = max(g, lo + (lo - n0) + 1)  # gallop when the estimate keeps undershooting
        if hi is not None and slow >= 2:
            g = (lo + hi) // 2
        g = max(g, lo + 1) if hi is None else min(max(g, lo + 1), hi - 1)
        c = cost(g)
        if c <= budget:
            lo, c_lo, fits_in_row = g, c, fits_in_row + 1
        else:
            hi, c_hi, hi_measured, fits_in_row = g, c, True, 0
        slow = slow + 1 if width is not None and hi is not None and hi - lo > width // 2 else 0
    return lo


def place(offsets: Sequence[int], depth: float) -> int:
    """Boundary index for a needle at ``depth`` % of the haystack (0 = start, 100 = end).

    ``offsets[i]`` is the character offset where unit ``i`` starts and ``offsets[-1]`` the total
    haystack length; the result is the last boundary at or before ``depth/100 * total``.
    """
    target = max(0.0, min(100.0, float(depth))) / 100.0 * offsets[-1]
    return max(0, min(len(offsets) - 1, bisect.bisect_right(offsets, target + 1e-9) - 1))


def unit_offsets(units: Sequence[str], sep: str) -> list[int]:
    """Start offset of each unit when joined by ``sep``, plus the total length."""
    out, pos = [], 0
    for i, u in enumerate(units):
        if i:
            pos += len(sep)
        out.append(pos)
        pos += len(u)
    out.append(pos)
    return out


def assemble(
    head: str,
    units: Sequence[str],
    sep: str,
    inserts: Sequence[tuple[int, str]],
    mid: str,
    query: str,
) -> tuple[str, list[tuple[int, int]], tuple[int, int], tuple[int, int]]:
    """Lay out ``head + context + mid + query``; ``context`` is ``units`` joined by ``sep`` with each
    ``(boundary, text)`` of ``inserts`` inserted before unit ``boundary`` (ties keep insert order).

    Returns ``(prompt, insert_spans, query_span, context_span)`` (character spans).
    """
    order = sorted(range(len(inserts)), key=lambda j: (inserts[j][0], j))
    spans: list[tuple[int, int]] = [(0, 0)] * len(inserts)
    parts = [head]
    pos = len(head)
    ctx_start = pos
    first = True
    k = 0
    n = len(units)
    for i in range(n + 1):
        while k < len(order) and inserts[order[k]][0] <= i:
            j = order[k]
            text = inserts[j][1]
            if not first:
                parts.append(sep)
                pos += len(sep)
            first = False
            parts.append(text)
            spans[j] = (pos, pos + len(text))
            pos += len(text)
            k += 1
        if i < n:
            if not first:
                parts.append(sep)
                pos += len(sep)
            first = False
            parts.append(units[i])
            pos += len(units[i])
    ctx_end = pos
    parts.append(mid)
    pos += len(mid)
    parts.append(query)
    return "".join(parts), spans, (pos, pos + len(query)), (ctx_start, ctx_end)
