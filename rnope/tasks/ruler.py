"""RULER's non-NIAH synthetic tasks (docs/ruler.md): variable tracking, common and frequent words.

* :func:`vt` -- one chain of 4 hops in the noise haystack: ``VAR ABCDE = 12345``, then
  ``VAR FGHIJ = VAR ABCDE`` ...; the answer is all five variables holding the value.
* :func:`cwe` -- a numbered word list "1. w 2. w ..."; 10 common words x30, the others x3 (x6 / x1
  below 4096 tokens); counts are scaled down further when even that does not fit.
* :func:`fwe` -- coded 6-letter words with Zipf(alpha=2) counts ``floor(C / k**alpha)``; rank 1 is
  shown as a noise mark of dots; the answer is ranks 2-4 (strictly ordered counts guaranteed).

Each returns an :class:`~rnope.tasks.common.Item` whose prompt ends with the answer prefix.
``split="eval"`` follows RULER's prompts: vt and cwe start with one solved example of the same task
at a small size (counted inside ``length``; left out only when the item cannot fit with it), vt's
noise sits in blocks on their own lines with one assignment per line, cwe's words are real English
words (:func:`~rnope.tasks.haystack.cwe_words`). ``split="train"`` uses other phrasings and
train-owned words/values (see ``common.owned_by``) and keeps its original layout.
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
from .haystack import VocabPool, WordPool, cwe_words, noise_haystack

__all__ = ["EVAL_CWE", "EVAL_FWE", "EVAL_FWE_NOISE", "EVAL_VT", "ListTemplate", "TRAIN_CWE", "TRAIN_FWE", "TRAIN_VT", "VtTemplate",
           "cwe", "fwe", "vt"]

VT_GEN_TOKENS, CWE_GEN_TOKENS, FWE_GEN_TOKENS = 30, 120, 50  # RULER's generation budgets
VT_EXAMPLE_TOKENS = 500  # RULER sizes vt's solved example to 500 tokens (here also at most length // 8)
#: cwe's solved example (RULER): (words, common count, other count) below / from 4096 tokens
CWE_EXAMPLE_SHORT, CWE_EXAMPLE_LONG = (20, 3, 1), (40, 10, 3)


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
    "VAR {name} = {value}",
    "VAR {name} = VAR {prev}",
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
EVAL_FWE_NOISE = "..."  # RULER's text shows three dots (its question names four)


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
    Eval items start with RULER's solved example (3-letter names, its own noise, about
    ``min(500, length // 8)`` tokens) and lay the noise out in blocks, one per line.
    """
    task = "vt"
    rng = item_rng(check_split(split), task, seed, length, depth)
    tpl = EVAL_VT if split == "eval" else rng.choice(TRAIN_VT)
    value = sample_number(rng, 5, split)
    names = _distinct_names(rng, split, 5, hops + 1)
    statements = _chain(tpl, names, value)
    d0 = rng.uniform(0.0, 100.0) if depth is None else float(depth)
    depths = [d0] + sorted(rng.uniform(d0, 100.0) for _ in range(hops))
    lines = split == "eval"  # RULER's layout for eval; train items keep theirs (pinned by tests)
    hay = noise_haystack(split, rng, lines=lines)
    query = tpl.question.format(value=value) + " " + tpl.prefix.format(k=len(names), value=value)
    budget = gen_budget(encode, VT_GEN_TOKENS, names, gen_tokens, length)
    heads = [tpl.intro + "\n"]
    if split == "eval":
        ex_budget = min(VT_EXAMPLE_TOKENS, length // 8)
        example = _vt_example(item_rng(split, task, seed, length, depth, 1), split, hops, value, encode, ex_budget)
        heads = [example + "\n\n" + tpl.intro + "\n\n", tpl.intro + "\n\n"]

    def make_layout(head: str) -> Callable[[int], Layout]:
        @cache
        def layout(n: int) -> Layout:
            units = hay.units(n)
            offsets = unit_offsets(units, hay.sep)
            inserts = [(place(offsets, d), s) for d, s in zip(depths, statements)]
            return assemble(head, units, hay.sep, inserts, "\n", query)

        return layout

    for i, head in enumerate(heads):  # eval: with the example; without it only if it cannot fit
        layout = make_layout(head)
        try:
            n = fit_haystack(lambda k: layout(k)[0], encode, length, budget, task=task)
            break
        except ValueError:
            if i == len(heads) - 1:
                raise
    prompt, spans, qspan, cspan = layout(n)
    meta = dict(split=split, seed=seed, haystack="noise", sep=hay.sep, n_units=n, depths=depths, value=value,
                variables=names, context_span=cspan)
    if split == "eval":
        meta["example"] = i == 0
    return Item(prompt, list(names), task, length, _depth(depth), spans, qspan, budget, meta)


def _distinct_names(rng: random.Random, split: str, letters: int, k: int) -> list[str]:
    names: list[str] = []
    while len(names) < k:
        name = sample_coded_word(rng, split, letters, upper=True)
        if name not in names:
            names.append(name)
    return names


def _chain(tpl: VtTemplate, names: Sequence[str], value: str) -> list[str]:
    return [tpl.first.format(name=names[0], value=value)] + [
        tpl.hop.format(name=names[i], prev=names[i - 1]) for i in range(1, len(names))
    ]


def _vt_example(
    rng: random.Random, split: str, hops: int, avoid: str, encode: Encode, budget: int
) -> str:
    """RULER's solved vt example: a chain of 3-letter variables in its own noise, the question, the
    answer prefix and the answer (names separated by spaces). The noise block count is estimated
    from two encodes so the example takes about ``budget`` tokens (none when even that is over)."""
    tpl = EVAL_VT
    value = sample_number(rng, 5, split)
    while value == avoid:
        value = sample_number(rng, 5, split)
    names = _distinct_names(rng, split, 3, hops + 1)
    statements = _chain(tpl, names, value)
    depths = sorted(rng.uniform(0.0, 100.0) for _ in statements)
    hay = noise_haystack(split, rng, lines=True)
    tail = (tpl.question.format(value=value) + " " + tpl.prefix.format(k=len(names), value=value) + " "
            + " ".join(names))

    def text(n: int) -> str:
        units = hay.units(n)
        offsets = unit_offsets(units, hay.sep)
        inserts = [(place(offsets, d), s) for d, s in zip(depths, statements)]
        return assemble(tpl.intro + "\n\n", units, hay.sep, inserts, "\n", tail)[0]

    c0, c4 = len(encode(text(0))), len(encode(text(4)))
    per_block = max(1.0, (c4 - c0) / 4)
    return text(max(0, int((budget - c0) // per_block)))


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
    ``others + 1``). The number of other words is fitted to ``length``. Eval items draw real words
    (:func:`~rnope.tasks.haystack.cwe_words`) and start with RULER's solved example (20 words x3 / x1
    below 4096 tokens, 40 words x10 / x3 from 4096) on words of their own.
    """
    task = "cwe"
    rng = item_rng(check_split(split), task, seed, length, depth)
    tpl = EVAL_CWE if split == "eval" else rng.choice(TRAIN_CWE)
    base = rng.getrandbits(64)
    freq_cw, freq_ucw = (30, 3) if length >= 4096 else (6, 1)
    query = tpl.question.format(k=num_cw) + " " + tpl.prefix.format(k=num_cw)
    max_units: int | None = None
    if split == "eval":
        vocab = VocabPool(cwe_words(), random.Random(base))
        n_ex, ex_cw, ex_ucw = CWE_EXAMPLE_LONG if length >= 4096 else CWE_EXAMPLE_SHORT
        n_ex = max(n_ex, 2 * num_cw)
        example = _cwe_example(item_rng(split, task, seed, length, depth, 1), vocab.take(n_ex), num_cw, ex_cw, ex_ucw)
        take: Callable[[int], list[str]] = lambda n: vocab.take(n, n_ex)  # noqa: E731
        max_units = len(vocab) - n_ex - num_cw
        heads = [example + "\n" + tpl.intro + "\n", tpl.intro + "\n"]
    else:
        take = WordPool(split, random.Random(base)).take
        heads = [tpl.intro + "\n"]

    def make_layout(head: str, fc: int) -> Callable[[int], tuple[Layout, list[str]]]:
        @cache
        def layout(n_u: int) -> tuple[Layout, list[str]]:
            words = take(num_cw + n_u)
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
    for h, head in enumerate(heads):  # eval: with the example; without it only if it cannot fit
        for fc in candidates:
            layout = make_layout(head, fc)
            budget = gen_budget(encode, CWE_GEN_TOKENS, layout(num_cw)[1], gen_tokens, length)
            try:
                for _ in range(8):  # the common words depend on n_u: refit until the gold fits the budget
                    n_u = fit_haystack(_prompt_of(layout), encode, length, budget, task=task, min_units=num_cw,
                                       max_units=max_units)
                    need = gen_budget(encode, CWE_GEN_TOKENS, layout(n_u)[1], gen_tokens, length)
                    if need <= budget:
                        break
                    budget = need
                freq_cw = fc
                break
            except ValueError:
                n_u = -1
                tried.append(len(encode(layout(num_cw)[0][0])) + budget)
        if n_u >= 0:
            break
    if n_u < 0 or layout is None:
        raise too_short_error(task, length, min(tried), template_only=False)
    if max_units is not None and n_u >= max_units:
        raise ValueError(f"length {length} is too long for task {task!r}: its vocabulary of {len(cwe_words())} "
                         f"words runs out")
    (prompt, spans, qspan, cspan), common = layout(n_u)
    meta = dict(split=split, seed=seed, freq_cw=freq_cw, freq_ucw=freq_ucw, n_uncommon=n_u, common_words=common,
                context_span=cspan)
    if split == "eval":
        meta["example"] = h == 0
    return Item(prompt, list(common), task, length, None, spans, qspan, budget, meta)


def _cwe_example(rng: random.Random, words: Sequence[str], num_cw: int, fc: int, fu: int) -> str:
    """RULER's solved cwe example: the first ``num_cw`` of ``words`` x``fc``, the rest x``fu``, shuffled
    and numbered, then the question, the answer prefix and the numbered answer."""
    common, others = list(words[:num_cw]), list(words[num_cw:])
    entries = [w for w in common for _ in range(fc)] + [w for w in others for _ in range(fu)]
    rng.shuffle(entries)
    tpl = EVAL_CWE
    return (tpl.intro + "\n" + " ".join(f"{i + 1}. {w}" for i, w in enumerate(entries)) + "\n"
            + tpl.question.format(k=num_cw) + " " + tpl.prefix.format(k=num_cw) + " "
            + " ".join(f"{i + 1}. {w}" for i, w in enumerate(common)))


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
    noise = EVAL_FWE_NOISE if split == "eval" else FWE_NOISE
    head = tpl.intro + (" " if split == "eval" else "\n")  # RULER: the coded text follows on the same line
    query = tpl.question + " " + tpl.prefix
    answers = words(4)[1:4]
    budget = gen_budget(encode, FWE_GEN_TOKENS, answers, gen_tokens, length)

    @cache
    def layout(c: int) -> Layout:
        counts = _zipf_counts(c, alpha)
        vocab_c = words(len(counts))
        seq = [noise] * counts[0]
        for w, m in zip(vocab_c[1:], counts[1:]):
            seq += [w] * m
        random.Random(stable_seed(shuffle_base, c)).shuffle(seq)
        return _numbered(head, seq, set(answers), "\n", query, numbered=False)

    c = fit_haystack(lambda k: layout(k)[0], encode, length, budget, task=task, min_units=c_min)
    prompt, spans, qspan, cspan = layout(c)
    counts = _zipf_counts(c, alpha)
    meta = dict(split=split, seed=seed, alpha=alpha, C=c, counts=counts[:8], vocab=words(len(counts))[:8],
                noise=noise, context_span=cspan)
    return Item(prompt, answers, task, length, None, spans, qspan, budget, meta)
