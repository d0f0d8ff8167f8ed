"""RULER's non-NIAH synthetic tasks (EVAL.md table): variable tracking, common and frequent words.

* :func:`vt` -- one chain of 4 hops in the noise haystack: ``VAR ABCDE = 12345.``, then
  ``VAR FGHIJ = VAR ABCDE.`` ...; the answer is all five variables holding the value.
* :func:`cwe` -- a numbered word list "1. w 2. w ..."; 10 common words x30, the others x3 (x6 / x1
  below 4096 tokens); counts are scaled down further when even that does not fit.
* :func:`fwe` -- coded 6-letter words with Zipf(alpha=2) counts ``floor(C / k**alpha)``; rank 1 is
  shown as the noise mark ``....``; the answer is ranks 2-4 (strictly ordered counts guaranteed).

Each returns an :class:`~rnope.tasks.common.Item` whose prompt ends with the answer prefix.
``split="train"`` uses other phrasings and train-owned words/values (see ``common.owned_by``).
CWE and FWE have no needle depth: ``depth`` is accepted for a uniform signature and ignored.
"""

from __future__ import annotations

import math
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
    sample_coded_word,
    sample_number,
    stable_seed,
    too_short_error,
    unit_offsets,
)
from .haystack import WordPool, noise_haystack

__all__ = ["EVAL_CWE", "EVAL_FWE", "EVAL_VT", "ListTemplate", "TRAIN_CWE", "TRAIN_FWE", "TRAIN_VT", "VtTemplate",
           "cwe", "fwe", "vt"]

VT_GEN_TOKENS, CWE_GEN_TOKENS, FWE_GEN_TOKENS = 30, 120, 50  # EVAL.md generation budgets


@dataclass(frozen=True)
class VtTemplate:
    intro: str
    first: str  # {name} {value}
    hop: str  # {name} {prev}
    question: str  # {value}
    prefix: str  # {k} {value}


@dataclass(frozen=True)
class ListTemplate:
    intro: str
    question: str  # {k}
    prefix: str  # {k}


EVAL_VT = VtTemplate(
    "Memorize and track the chain(s) of variable assignment hidden in the following text.",
    "VAR {name} = {value}.",
    "VAR {name} = VAR {prev}.",
    "Question: Find all variables that are assigned the value {value} in the text above.",
    "Answer: According to the chain(s) of variable assignment in the text above, {k} variables are assigned "
    "the value {value}, they are:",
)
TRAIN_VT: tuple[VtTemplate, ...] = (
    VtTemplate(
        "Follow the chain of label bindings scattered through the text below.",
        "LET {name} := {value}.",
        "LET {name} := {prev}.",
        "Question: Which labels end up bound to {value}?",
        "Answer: Following the bindings above, {k} labels end up bound to {value}, namely:",
    ),
    VtTemplate(
        "Some registers are set and copied in the text below. Keep track of them.",
        "SET {name} TO {value}.",
        "COPY {prev} INTO {name}.",
        "Question: Which registers hold {value} at the end?",
        "Answer: Tracing the copies above, {k} registers hold {value}, namely:",
    ),
)
EVAL_CWE = ListTemplate(
    "Below is a numbered list of words. In these words, some appear more often than others. "
    "Memorize the ones that appear most often.",
    "Question: What are the {k} most common words in the above list?",
    "Answer: The top {k} words that appear most often in the list are:",
)
TRAIN_CWE: tuple[ListTemplate, ...] = (
    ListTemplate(
        "Here is a long enumerated word list. A handful of entries repeat far more than the rest; keep count.",
        "Question: Which {k} entries repeat the most in that enumeration?",
        "Answer: Counting the enumeration, the {k} most repeated entries are:",
    ),
)
EVAL_FWE = ListTemplate(
    "Read the following coded text and track the frequency of each coded word. "
    "Find the three most frequently appeared coded words.",
    "Question: Do not provide any explanation. Please ignore the dots '....'. "
    "What are the three most frequently appeared words in the above coded text?",
    "Answer: According to the coded text above, the three most frequently appeared words are:",
)
TRAIN_FWE: tuple[ListTemplate, ...] = (
    ListTemplate(
        "Below is a stream of made-up tokens. Tally how often each token occurs and skip the filler marks '....'.",
        "Question: Which three tokens occur most often in that stream?",
        "Answer: Tallying the stream, the three most common tokens are:",
    ),
)
FWE_NOISE = "...."


def _depth(depth: float | None) -> float | None:
    return None if depth is None else float(depth)


def vt(
    seed: int,
    length: int,
    depth: float | None = None,
    *,
    encode: Encode,
    split: str = "eval",
    essay: Sequence[str] | None = None,
    gen_tokens: int | None = None,
    hops: int = 4,
) -> Item:
    """RULER variable tracking: 1 chain x ``hops`` hops in the noise haystack.

    The first assignment sits at ``depth`` % (random if ``None``); later hops follow at sorted
    random depths after it, so the chain reads in order. ``essay`` is unused (noise haystack).
    """
    task = "vt"
    rng = item_rng(check_split(split), task, seed, length, depth)
    tpl = EVAL_VT if split == "eval" else rng.choice(TRAIN_VT)
    value = sample_number(rng, 5, split)
    names: list[str] = []
    while len(names) < hops + 1:
        name = sample_coded_word(rng, split, 5, upper=True)
        if name not in names:
            names.append(name)
    statements = [tpl.first.format(name=names[0], value=value)]
    statements += [tpl.hop.format(name=names[i], prev=names[i - 1]) for i in range(1, hops + 1)]
    d0 = rng.uniform(0.0, 100.0) if depth is None else float(depth)
    depths = [d0] + sorted(rng.uniform(d0, 100.0) for _ in range(hops))
    hay = noise_haystack(split, rng)
    query = tpl.question.format(value=value) + " " + tpl.prefix.format(k=len(names), value=value)
    budget = gen_budget(encode, VT_GEN_TOKENS, names, gen_tokens, length)
    head = tpl.intro + "\n"

    @cache
    def layout(n: int) -> Layout:
        units = hay.units(n)
        offsets = unit_offsets(units, hay.sep)
        inserts = [(place(offsets, d), s) for d, s in zip(depths, statements)]
        return assemble(head, units, hay.sep, inserts, "\n", query)

    n = fit_haystack(lambda k: layout(k)[0], encode, length, budget, task=task)
    prompt, spans, qspan, cspan = layout(n)
    meta = dict(split=split, seed=seed, haystack="noise", sep=hay.sep, n_units=n, depths=depths, value=value,
                variables=names, context_span=cspan)
    return Item(prompt, list(names), task, length, _depth(depth), spans, qspan, budget, meta)


Layout = tuple[str, list[tuple[int, int]], tuple[int, int], tuple[int, int]]


def _numbered(
    head: str, words: Sequence[str], gold: set[str], mid: str, query: str, sep: str = " ", numbered: bool = True
) -> Layout:
    """Lay out ``head + "1. w 2. w ..." + mid + query``; spans of the entries whose word is gold."""
    parts, spans = [head], []
    pos = len(head)
    for i, w in enumerate(words):
        if i:
            parts.append(sep)
            pos += len(sep)
        entry = f"{i + 1}. {w}" if numbered else w
        if w in gold:
            spans.append((pos, pos + len(entry)))
        parts.append(entry)
        pos += len(entry)
    cspan = (len(head), pos)
    parts += [mid, query]
    pos += len(mid)
    return "".join(parts), spans, (pos, pos + len(query)), cspan


def cwe(
    seed: int,
    length: int,
    depth: float | None = None,
    *,
    encode: Encode,
    split: str = "eval",
    essay: Sequence[str] | None = None,
    gen_tokens: int | None = None,
    num_cw: int = 10,
) -> Item:
    """RULER common words extraction: name the ``num_cw`` most common words of a numbered list.

    Counts: common x30 / others x3 at ``length >= 4096``, x6 / x1 below; if the common block does
    not leave room for at least ``num_cw`` other words, the common count steps down (never below
    ``others + 1``). The number of other words is fitted to ``length``.
    """
    task = "cwe"
    rng = item_rng(check_split(split), task, seed, length, depth)
    tpl = EVAL_CWE if split == "eval" else rng.choice(TRAIN_CWE)
    base = rng.getrandbits(64)
    pool = WordPool(split, random.Random(base))
    freq_cw, freq_ucw = (30, 3) if length >= 4096 else (6, 1)
    head = tpl.intro + "\n"
    query = tpl.question.format(k=num_cw) + " " + tpl.prefix.format(k=num_cw)

    def make_layout(fc: int) -> Callable[[int], tuple[Layout, list[str]]]:
        @cache
        def layout(n_u: int) -> tuple[Layout, list[str]]:
            words = pool.take(num_cw + n_u)
            r = random.Random(stable_seed(base, fc, n_u))
            common_idx = set(r.sample(range(len(words)), num_cw))
            common = [w for i, w in enumerate(words) if i in common_idx]
            entries = [w for w in common for _ in range(fc)]
            entries += [w for i, w in enumerate(words) if i not in common_idx for _ in range(freq_ucw)]
            r.shuffle(entries)
            return _numbered(head, entries, set(common), "\n", query), common

        return layout

    budget, n_u, tried = 0, -1, []
    layout: Callable[[int], tuple[Layout, list[str]]] | None = None
    candidates = sorted({max(freq_ucw + 1, round(freq_cw * f)) for f in (1, 0.75, 0.5, 0.34, 0.25, 0.1, 0.0)},
                        reverse=True)
    for fc in candidates:
        layout = make_layout(fc)
        budget = gen_budget(encode, CWE_GEN_TOKENS, layout(num_cw)[1], gen_tokens, length)
        try:
            for _ in range(8):  # the common words depend on n_u: refit until the gold fits the budget
                n_u = fit_haystack(_prompt_of(layout), encode, length, budget, task=task, min_units=num_cw)
                need = gen_budget(encode, CWE_GEN_TOKENS, layout(n_u)[1], gen_tokens, length)
                if need <= budget:
                    break
                budget = need
            freq_cw = fc
            break
        except ValueError:
            n_u = -1
            tried.append(len(encode(layout(num_cw)[0][0])) + budget)
    if n_u < 0 or layout is None:
        raise too_short_error(task, length, min(tried), template_only=False)
    (prompt, spans, qspan, cspan), common = layout(n_u)
    meta = dict(split=split, seed=seed, freq_cw=freq_cw, freq_ucw=freq_ucw, n_uncommon=n_u, common_words=common,
                context_span=cspan)
    return Item(prompt, list(common), task, length, None, spans, qspan, budget, meta)


def _prompt_of(layout: Callable[[int], tuple[Layout, list[str]]]) -> Callable[[int], str]:
    return lambda n: layout(n)[0][0]


def _zipf_counts(c: int, alpha: float) -> list[int]:
    counts: list[int] = []
    k = 1
    while True:
        m = int(c / k**alpha)
        if m < 1:
            return counts
        counts.append(m)
        k += 1


def _strict(c: int, alpha: float) -> bool:
    counts = [int(c / k**alpha) for k in range(1, 6)]
    return counts[1] > counts[2] > counts[3] > counts[4]


def _fwe_min_count(alpha: float) -> int:
    """Smallest C from which ranks 2..5 always get strictly decreasing counts: above the analytic
    bound ``C * (k**-a - (k+1)**-a) >= 1`` it always holds; below it, scan down for the last gap."""
    bound = max(math.ceil(1.0 / (k**-alpha - (k + 1) ** -alpha)) for k in (2, 3, 4))
    c = bound
    while c > 1 and _strict(c - 1, alpha):
        c -= 1
    return c


def fwe(
    seed: int,
    length: int,
    depth: float | None = None,
    *,
    encode: Encode,
    split: str = "eval",
    essay: Sequence[str] | None = None,
    gen_tokens: int | None = None,
    alpha: float = 2.0,
) -> Item:
    """RULER frequent words extraction: rank ``k`` of a coded 6-letter vocabulary appears
    ``floor(C / k**alpha)`` times (C fitted to ``length``); rank 1 is the noise mark ``....``; the
    answer is ranks 2, 3, 4, whose counts are strictly ordered (C is at least large enough)."""
    task = "fwe"
    rng = item_rng(check_split(split), task, seed, length, depth)
    tpl = EVAL_FWE if split == "eval" else rng.choice(TRAIN_FWE)
    vocab_rng = random.Random(rng.getrandbits(64))
    vocab: list[str] = []
    shuffle_base = rng.getrandbits(64)

    def words(m: int) -> list[str]:
        while len(vocab) < m:
            w = sample_coded_word(vocab_rng, split, 6)
            if w not in vocab:
                vocab.append(w)
        return vocab[:m]

    c_min = _fwe_min_count(alpha)
    head = tpl.intro + "\n"
    query = tpl.question + " " + tpl.prefix
    answers = words(4)[1:4]
    budget = gen_budget(encode, FWE_GEN_TOKENS, answers, gen_tokens, length)

    @cache
    def layout(c: int) -> Layout:
        counts = _zipf_counts(c, alpha)
        vocab_c = words(len(counts))
        seq = [FWE_NOISE] * counts[0]
        for w, m in zip(vocab_c[1:], counts[1:]):
            seq += [w] * m
        random.Random(stable_seed(shuffle_base, c)).shuffle(seq)
        return _numbered(head, seq, set(answers), "\n", query, numbered=False)

    c = fit_haystack(lambda k: layout(k)[0], encode, length, budget, task=task, min_units=c_min)
    prompt, spans, qspan, cspan = layout(c)
    counts = _zipf_counts(c, alpha)
    meta = dict(split=split, seed=seed, alpha=alpha, C=c, counts=counts[:8], vocab=words(len(counts))[:8],
                noise=FWE_NOISE, context_span=cspan)
    return Item(prompt, answers, task, length, None, spans, qspan, budget, meta)
