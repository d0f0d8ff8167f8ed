"""The retrieval family: key/value lookup items whose wording is composed from interchangeable parts.

A tiny model trained on a handful of fixed templates learns those templates, not retrieval: it
answers its training wording and misses any other (docs/study.md). This family composes every
item from parts drawn independently:

* an **intro** (or none), e.g. "Somewhere below is a record you will need later.";
* a **needle form**, e.g. ``"The {K} is {V}."``, ``"{K}: {V}."``, ``"Record {K} under {V}."``;
* a **question form** (or none), e.g. ``"What is the {K}?"``;
* an **answer prefix**, e.g. ``"The {K} is"``, ``"Answer: {K} ="``;
* a **key phrase** ``{K}`` (one to three words, or a hyphenated pair), a **kind noun** ``{N}``
  ("pin", "token", ...) and a **value** ``{V}`` (numbers of 3-8 digits, letter-digit codes,
  words, UUIDs).

A *wording* is the triple (needle form, question form, prefix form). Every wording belongs to
one split by a fixed hash (:func:`wording_split`): about one in five is held out for evaluation,
and every single part still occurs in training wordings, so a model that learned to look up the
question's key in the context answers held-out wordings; one that memorised templates does not.
Key words, kind nouns, values and haystack sentences are split too: evaluation items draw them
from lists no training item uses (:mod:`rnope.tasks.haystack`, :func:`rnope.tasks.common.owned_by`).

Items carry several needles when asked (RULER's formats): ``n_keys`` needles with different keys,
``n_values`` values per key, ``n_queries`` keys asked at once; the answer lists every value of
every asked key in needle order.

* :func:`lookup` -- one long-context item (an :class:`~rnope.tasks.common.Item`): the needles at
  given depths of a haystack (:data:`HAYSTACKS`: ``noise``, ``essay`` prose, ``words`` or distractor
  ``needles``) fitted to ``length`` tokens.
* :func:`lookup_document` -- a short, dense training document (needles, a few filler sentences,
  the question and its answer): many fit one training sequence (the curriculum's stages).
"""

from __future__ import annotations

import functools
import hashlib
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass

from .common import Encode, Item, check_split, gen_budget, item_rng, owned_by, sample_number, sample_uuid
from .haystack import Haystack, noise_haystack, split_sentences

__all__ = [
    "echo_wordings",
    "multi_format",
    "echoes",
    "EVAL_KINDS",
    "INTROS",
    "NEEDLES",
    "PREFIXES",
    "QUESTIONS",
    "TRAIN_KINDS",
    "VALUE_KINDS",
    "Wording",
    "lookup",
    "lookup_document",
    "wording_split",
    "wordings",
]

# ---------------------------------------------------------------------------------------- the parts
# Placeholders: {K} key phrase, {N} kind noun, {Ns} its plural, {V} value. A needle states one
# value of one key. Question and prefix forms come as (one value asked, several values asked).

INTROS: tuple[str, ...] = (
    "",
    "Somewhere below is a record you will need later.",
    "Read the text below carefully; a question about it follows.",
    "The following passage hides a few facts. Keep them in mind.",
    "Below is a long document. One detail in it matters.",
    "Pay attention to the details in the text that follows.",
    "A short quiz comes after this text, so read it closely.",
    "Some values are mentioned in the notes below. Remember them.",
    "Study the following material. You will be asked to recall part of it.",
    "Here is some text to read. Afterwards, answer the question.",
    "The log below mixes useful entries with filler.",
    "Look through the next passage and note any values it gives.",
)

NEEDLES: tuple[str, ...] = (
    "The {K} is {V}.",
    "The {K} is {V}. Remember it. {V} is the {K}.",
    "{K}: {V}.",
    "Note that the {K} is {V}.",
    "The {N} for {K} is {V}.",
    "Remember this: the {K} is {V}.",
    "The {K} was set to {V}.",
    "For {K}, the {N} is {V}.",
    "Our {K} is {V}, and it will not change.",
    "Record for {K}: {V}.",
    "{K} = {V}.",
    "The value of the {K} is {V}.",
    "Please keep the {K} in mind: {V}.",
    "The {K} reads {V}.",
    "A {N} of {K} is {V}.",
    "Under {K} we filed {V}.",
)

QUESTIONS: tuple[tuple[str, str], ...] = (
    ("", ""),
    ("What is the {K}?", "What are all the {Ns} of {K}?"),
    ("What was the {K}?", "Which {Ns} were given for {K}?"),
    ("Which {N} belongs to {K}?", "Which {Ns} belong to {K}?"),
    ("Do you remember the {K}?", "Do you remember every {N} of {K}?"),
    ("Question: what {N} did the text give for {K}?", "Question: what {Ns} did the text give for {K}?"),
    ("Recall the {K}.", "Recall all {Ns} of {K}."),
    ("Find the {K} in the text above.", "Find each {N} of {K} in the text above."),
)

PREFIXES: tuple[tuple[str, str], ...] = (
    ("The {K} is", "The {Ns} of {K} are"),
    ("The {K} was", "The {Ns} for {K} were"),
    ("Answer: the {K} is", "Answer: the {Ns} of {K} are"),
    ("{K}:", "{K}:"),
    ("The {K} mentioned above is", "The {Ns} mentioned above for {K} are"),
    ("The {N} for {K} is", "The {Ns} for {K} are"),
    ("Answer: {K} =", "Answer: {K} ="),
    ("I remember the {K}. It is", "I remember the {Ns} of {K}. They are"),
    ("As stated above, the {K} is", "As stated above, the {Ns} of {K} are"),
    ("The text gives the {K} as", "The text gives the {Ns} of {K} as"),
)

#: Kind nouns (singular, plural). Evaluation wordings use their own; none is a training key word.
TRAIN_KINDS: tuple[tuple[str, str], ...] = (
    ("pin", "pins"), ("token", "tokens"), ("tag", "tags"), ("ticket", "tickets"), ("serial", "serials"),
    ("label", "labels"), ("badge", "badges"), ("figure", "figures"), ("reference", "references"),
    ("entry", "entries"), ("mark", "marks"), ("count", "counts"), ("setting", "settings"), ("total", "totals"),
)
EVAL_KINDS: tuple[tuple[str, str], ...] = (
    ("number", "numbers"), ("code", "codes"), ("password", "passwords"), ("identifier", "identifiers"),
)

#: Value kinds of training items and their weights; evaluation items use 5-7 digit numbers unless asked.
VALUE_KINDS: tuple[str, ...] = ("number", "code", "word", "uuid")
_TRAIN_VALUE_WEIGHTS = (0.7, 0.12, 0.1, 0.08)

_HELD_OUT_PER_MILLE = 200  # about one wording in five is held out for evaluation


@dataclass(frozen=True)
class Wording:
    """One wording of the family: indices into :data:`NEEDLES`, :data:`QUESTIONS`, :data:`PREFIXES`."""

    needle: int
    question: int
    prefix: int

    def key(self) -> str:
        return f"n{self.needle}-q{self.question}-p{self.prefix}"


def wording_split(w: Wording) -> str:
    """``"eval"`` for the held-out wordings (a fixed ~20 %), else ``"train"``."""
    h = hashlib.blake2b(w.key().encode(), digest_size=2, person=b"rnope-wording").digest()
    return "eval" if int.from_bytes(h, "big") % 1000 < _HELD_OUT_PER_MILLE else "train"


@functools.cache
def wordings(split: str) -> tuple[Wording, ...]:
    """Every wording of ``split``, in a fixed order."""
    check_split(split)
    allw = [Wording(n, q, p) for n in range(len(NEEDLES)) for q in range(len(QUESTIONS)) for p in range(len(PREFIXES))]
    return tuple(w for w in allw if wording_split(w) == split)


def echoes(w: Wording) -> bool:
    """Whether the answer prefix ends with the words that precede the value in the needle
    (``"The {K} is"`` after ``"Note that the {K} is {V}."``): plain induction -- find the prompt's
    last words earlier on and copy what followed -- answers these wordings."""
    lead = NEEDLES[w.needle].split("{V}")[0].rstrip()
    tails = {PREFIXES[w.prefix][0].split("{K}")[-1], PREFIXES[w.prefix][1].split("{K}")[-1]}
    return "{K}" in PREFIXES[w.prefix][0] and any(lead.endswith("{K}" + t) for t in tails if t)


@functools.cache
def echo_wordings() -> tuple[Wording, ...]:
    """The training wordings that :func:`echoes` (the first curriculum stage's)."""
    return tuple(w for w in wordings("train") if echoes(w))


# ------------------------------------------------------------------------------------ key phrases
def _eval_words() -> frozenset[str]:
    from .synthetic import eval_template_words

    extra = {w for pair in EVAL_KINDS for w in pair}
    return eval_template_words() | extra


@functools.lru_cache(maxsize=4)
def _train_key_vocab(essay: tuple[str, ...]) -> tuple[str, ...]:
    """Open training key vocabulary: 3-10 letter words of the training prose and the training word
    lists, minus every evaluation word (templates, filler, key lists, kind nouns)."""
    from .haystack import TRAIN_ADJECTIVES, TRAIN_NOUNS

    found = {w for text in essay for w in re.findall(r"\b[a-z]{3,10}\b", text.lower())}
    found |= set(TRAIN_ADJECTIVES) | set(TRAIN_NOUNS)
    bad = _eval_words() | {w for pair in TRAIN_KINDS for w in pair}
    return tuple(sorted(found - bad))


class _Keys:
    """Distinct key phrases of one item: 1-3 words (train: open vocabulary; eval: the eval lists)."""

    def __init__(self, split: str, rng: random.Random, essay: Sequence[str] | None):
        from .haystack import EVAL_ADJECTIVES, EVAL_NOUNS, TRAIN_ADJECTIVES, TRAIN_NOUNS

        self.split, self.rng = split, rng
        if split == "eval":
            self.adjs, self.nouns, self.open = EVAL_ADJECTIVES, EVAL_NOUNS, ()
        else:
            self.adjs, self.nouns = TRAIN_ADJECTIVES, TRAIN_NOUNS
            self.open = _train_key_vocab(tuple(essay)) if essay else ()
        self.style = rng.choice(("space", "space", "hyphen")) if split == "train" else rng.choice(("space", "hyphen"))
        self.used: set[str] = set()

    def _word(self, pool: Sequence[str]) -> str:
        if self.open and self.rng.random() < 0.5:
            return self.rng.choice(self.open)
        return self.rng.choice(pool)

    def __call__(self) -> str:
        while True:
            n = self.rng.choice((1, 2, 2, 2, 3)) if self.split == "train" else 2
            words = [self._word(self.adjs) for _ in range(n - 1)] + [self._word(self.nouns)]
            key = ("-" if self.style == "hyphen" and n > 1 else " ").join(words)
            if key not in self.used:
                self.used.add(key)
                return key


# ------------------------------------------------------------------------------------------ values
_CODE_LETTERS = "ABCDEFGHJKLMNPQRSTUVWXYZ"


def _value(kind: str, rng: random.Random, split: str, digits: int | None = None) -> str:
    if kind == "number":
        return sample_number(rng, digits or rng.randint(3, 8), split)
    if kind == "code":
        def draw() -> str:
            head = "".join(rng.choice(_CODE_LETTERS) for _ in range(rng.randint(1, 3)))
            return f"{head}-{rng.randint(10, 9999)}"
        while True:
            v = draw()
            if owned_by(v) == split:
                return v
    if kind == "word":
        from .haystack import EVAL_NOUNS, TRAIN_NOUNS

        pool = EVAL_NOUNS if split == "eval" else TRAIN_NOUNS
        return rng.choice(pool)
    if kind == "uuid":
        return sample_uuid(rng, split)
    raise ValueError(f"unknown value kind {kind!r}; known: {', '.join(VALUE_KINDS)}")


# --------------------------------------------------------------------------------------- haystacks
#: Haystacks of :func:`lookup`: noise filler, prose (``essay``), a stream of unrelated words, or
#: ``needles``: every line a distractor needle of another key in the item's own wording (RULER's
#: multi-key haystack).
HAYSTACKS = ("noise", "essay", "words", "needles")


def _train_noise(rng: random.Random) -> Haystack:
    """Training filler: the fixed training blocks, or sentences composed from the training word lists."""
    from .haystack import TRAIN_ADJECTIVES, TRAIN_NOUNS

    if rng.random() < 0.4:
        return noise_haystack("train", rng)
    r = random.Random(rng.getrandbits(64))
    nouns = r.sample(TRAIN_NOUNS, 6)
    adjs = r.sample(TRAIN_ADJECTIVES, 6)
    shapes = ("The {n} is {a}.", "A {a} {n} sits here.", "Every {n} looks {a}.", "{A} and {a}.", "On goes the {n}.")
    block = [r.choice(shapes).format(n=nouns[i], a=adjs[i], A=adjs[i].capitalize()) for i in range(r.randint(3, 6))]
    return Haystack("noise", " ", lambda i: block[i % len(block)])


@functools.lru_cache(maxsize=8)
def _sentences(essay: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(split_sentences(essay))


@functools.lru_cache(maxsize=8)
def _essay_words(essay: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(sorted({w for t in essay for w in re.findall(r"\b[a-z]{2,10}\b", t.lower())}))


def _words_haystack(split: str, rng: random.Random, essay: Sequence[str] | None) -> Haystack:
    """A stream of unrelated words (from the split's prose or word lists), ten to a unit."""
    from .haystack import EVAL_ADJECTIVES, EVAL_NOUNS, TRAIN_ADJECTIVES, TRAIN_NOUNS

    if essay:
        vocab: Sequence[str] = _essay_words(tuple(essay))
    else:
        vocab = EVAL_ADJECTIVES + EVAL_NOUNS if split == "eval" else TRAIN_ADJECTIVES + TRAIN_NOUNS
    base = rng.getrandbits(64)

    def unit(i: int) -> str:
        r = random.Random(base + i)
        return " ".join(r.choice(vocab) for _ in range(10)) + "."

    return Haystack("words", " ", unit)


def _prose_haystack(essay: Sequence[str] | None, rng: random.Random) -> Haystack:
    if not essay:
        raise ValueError("the essay haystack needs essay=[prose strings]")
    sents = _sentences(tuple(essay))
    if not sents:
        raise ValueError("the essay haystack holds no text")
    start = rng.randrange(len(sents))
    return Haystack("essay", " ", lambda i: sents[(start + i) % len(sents)])


def _haystack(kind: str, split: str, rng: random.Random, essay: Sequence[str] | None) -> Haystack:
    if kind == "noise":
        return noise_haystack("eval", rng) if split == "eval" else _train_noise(rng)
    if kind == "essay":
        return _prose_haystack(essay, rng)
    if kind == "words":
        return _words_haystack(split, rng, essay)
    raise ValueError(f"unknown haystack {kind!r}; known: {', '.join(HAYSTACKS)}")


def _needles_haystack(d: "_Drawn", split: str, rng: random.Random, essay: Sequence[str] | None,
                      value_kind: str | None, digits: int | None) -> Haystack:
    """Distractor needles, one per line: other keys, other values, the item's own needle form."""
    r = random.Random(rng.getrandbits(64))
    keys = _Keys(split, r, essay)
    keys.used.update(d.keys)
    taken = set(d.values)
    kind = value_kind or ("number" if split == "eval" else "number")
    form = NEEDLES[d.wording.needle]

    def line(_: int) -> str:
        v = _value(kind, r, split, digits)
        while v in taken:
            v = _value(kind, r, split, digits)
        taken.add(v)
        return _sentence_start(form.format(K=keys(), V=v, N=d.kind[0], Ns=d.kind[1]))

    return Haystack("needles", "\n", line)


# ----------------------------------------------------------------------------------------- wording
def _join(keys: Sequence[str]) -> str:
    if len(keys) == 1:
        return keys[0]
    if len(keys) == 2:
        return f"{keys[0]} and {keys[1]}"
    return ", ".join(keys[:-1]) + ", and " + keys[-1]


def _sentence_start(text: str) -> str:
    return text[:1].upper() + text[1:] if text else text


@dataclass(frozen=True)
class _Drawn:
    wording: Wording
    intro: str
    kind: tuple[str, str]
    keys: list[str]
    needle_keys: list[str]
    values: list[str]
    query_keys: list[str]
    answers: list[str]

    def needle_texts(self) -> list[str]:
        form = NEEDLES[self.wording.needle]
        return [_sentence_start(form.format(K=k, V=v, N=self.kind[0], Ns=self.kind[1]))
                for k, v in zip(self.needle_keys, self.values)]

    def query(self) -> str:
        plural = len(self.answers) > 1
        q = _join(self.query_keys)
        fmt = dict(K=q, N=self.kind[0], Ns=self.kind[1])
        question = QUESTIONS[self.wording.question][plural].format(**fmt)
        prefix = _sentence_start(PREFIXES[self.wording.prefix][plural].format(**fmt))
        return f"{question} {prefix}" if question else prefix


def _draw(rng: random.Random, split: str, essay: Sequence[str] | None, *, n_keys: int, n_values: int, n_queries: int,
          value_kind: str | None, digits: int | None, wording: Wording | None) -> _Drawn:
    w = wording if wording is not None else rng.choice(wordings(split))
    intro = rng.choice(INTROS)
    kind = rng.choice(EVAL_KINDS if split == "eval" else TRAIN_KINDS)
    if value_kind is None:
        value_kind = "number" if split == "eval" else rng.choices(VALUE_KINDS, _TRAIN_VALUE_WEIGHTS)[0]
    if split == "eval" and digits is None and value_kind == "number":
        digits = rng.randint(5, 7)
    sample_key = _Keys(split, rng, essay)
    keys = [sample_key() for _ in range(n_keys)]
    needle_keys, values = [], []
    seen: set[str] = set()
    for k in keys:
        for _ in range(n_values):
            v = _value(value_kind, rng, split, digits)
            while v in seen:
                v = _value(value_kind, rng, split, digits)
            seen.add(v)
            needle_keys.append(k)
            values.append(v)
    query_keys = keys[:n_queries]
    answers = [v for q in query_keys for k, v in zip(needle_keys, values) if k == q]
    return _Drawn(w, intro, kind, keys, needle_keys, values, query_keys, answers)


def multi_format(rng: random.Random, r: float, cuts: tuple[float, float, float]) -> tuple[int, int, int]:
    """``(n_keys, n_values, n_queries)`` of one item from a uniform draw ``r``: multi-key (2-4 keys) below
    ``cuts[0]``, multi-value (2-4 values) below ``cuts[1]``, multi-query below ``cuts[2]``, else one of each."""
    if r < cuts[0]:
        return rng.randint(2, 4), 1, 1
    if r < cuts[1]:
        return 1, rng.randint(2, 4), 1
    if r < cuts[2]:
        k = rng.randint(2, 4)
        return k, 1, rng.randint(2, k)
    return 1, 1, 1


# ------------------------------------------------------------------------------------------- items
def lookup(
    seed: int,
    length: int,
    depth: float | None = None,
    *,
    encode: Encode,
    split: str = "eval",
    haystack: str = "noise",
    essay: Sequence[str] | None = None,
    gen_tokens: int | None = None,
    n_keys: int = 1,
    n_values: int = 1,
    n_queries: int = 1,
    value_kind: str | None = None,
    digits: int | None = None,
    wording: Wording | None = None,
    task: str = "lookup",
) -> Item:
    """One long-context lookup item of ``length`` tokens (prompt + generation budget).

    The first needle (the first asked key's first value) sits at ``depth`` % of the haystack
    (random if ``None``); the others at seeded random depths. ``split="eval"`` draws a held-out
    wording, eval key words, eval kind nouns and eval-owned 5-7 digit values; ``"train"`` draws
    from the training side of each. ``essay`` is the prose of the ``prose`` haystack (and the
    training key vocabulary); give each split its own prose.
    """
    from .niah import _fit_and_build

    if not (1 <= n_queries <= n_keys) or n_values < 1:
        raise ValueError(f"need 1 <= n_queries <= n_keys and n_values >= 1, got {n_queries}, {n_keys}, {n_values}")
    rng = item_rng(check_split(split), task, seed, length, depth)
    d = _draw(rng, split, essay if split == "train" else None, n_keys=n_keys, n_values=n_values, n_queries=n_queries,
              value_kind=value_kind, digits=digits, wording=wording)
    if haystack == "needles":
        hay = _needles_haystack(d, split, rng, essay if split == "train" else None, value_kind, digits)
    else:
        hay = _haystack(haystack, split, rng, essay)
    d0 = rng.uniform(0.0, 100.0) if depth is None else float(depth)
    depths = [d0] + [rng.uniform(0.0, 100.0) for _ in d.values[1:]]
    budget = gen_budget(encode, 32, d.answers, gen_tokens, length)
    head = d.intro + "\n" if d.intro else ""
    n, (prompt, spans, qspan, cspan) = _fit_and_build(task, hay, head, d.needle_texts(), depths, d.query(), encode,
                                                      length, budget)
    # the asked values' needles first (``needle_spans[0]`` is the one at ``depth``)
    order = [i for i, k in enumerate(d.needle_keys) if k in d.query_keys] + [
        i for i, k in enumerate(d.needle_keys) if k not in d.query_keys]
    meta = dict(split=split, seed=seed, haystack=hay.kind, sep=hay.sep, n_units=n, depths=[depths[i] for i in order],
                keys=[d.needle_keys[i] for i in order], values=[d.values[i] for i in order], query_keys=d.query_keys,
                context_span=cspan, wording=d.wording.key(), kind=d.kind[0])
    return Item(prompt, list(d.answers), task, length, None if depth is None else float(depth),
                [spans[i] for i in order], qspan, budget, meta)


#: Dense training documents: the most filler sentences between the last needle and the question.
DOCUMENT_DISTANCES: dict[str, int] = {"lookup_near": 2, "lookup_far": 40, "lookup": 40}


def lookup_document(seed: int, kind: str = "lookup", *, max_tokens: int | None = None, encode: Encode | None = None,
                    essay: Sequence[str] | None = None) -> str:
    """A short training document: intro (sometimes), 1-3 needles with filler between them, the
    question, the answer prefix and the gold answer (``" a, b."``).

    ``"lookup_near"`` puts 0-2 filler sentences between needles and question (the copy circuit
    forms there within a few hundred steps), ``"lookup"`` up to 40. Most documents ask one value
    of one key; a quarter carry distractor needles with other keys, and some ask several values
    or keys (RULER's multi-key, multi-value and multi-query formats).
    """
    if kind not in DOCUMENT_DISTANCES:
        raise ValueError(f"unknown lookup document kind {kind!r}; known: {', '.join(DOCUMENT_DISTANCES)}")
    rng = item_rng("train", kind, seed, 0, None, 0)
    if kind == "lookup_near":
        for _ in range(8):  # a long wording may not fit a short sequence: draw another
            doc = _near_document(rng, max_tokens, encode)
            if doc is not None:
                break
        if doc is None:
            raise ValueError(f"length {max_tokens} is too short for task {kind!r}: a one-needle document does not fit")
        return doc
    far = kind == "lookup_far"  # the step between: mostly one needle, numbers, half the wordings echo
    n_keys, n_values, n_queries = multi_format(rng, rng.random() * (3 if far else 1), (0.25, 0.32, 0.38))
    wording = rng.choice(echo_wordings()) if far and rng.random() < 0.5 else None
    value_kind = "number" if far else None
    doc = _document(rng, kind, essay, n_keys, n_values, n_queries, max_tokens, encode, wording, value_kind)
    for _ in range(8):  # several needles (or a long value) do not fit: one needle, one value
        if doc is not None:
            break
        doc = _document(rng, kind, essay, 1, 1, 1, max_tokens, encode, wording, value_kind)
    if doc is None:
        raise ValueError(f"length {max_tokens} is too short for task {kind!r}: even a one-needle document does not fit")
    return doc


def _near_document(rng: random.Random, max_tokens: int | None, encode: Encode | None) -> str | None:
    """1-3 echo-worded needles with a closed key set (training noun + kind noun) and 4-6 digit
    numbers, 0-2 filler sentences, then every key asked in turn, each question followed by its
    answer: the shape on which the copy circuit forms fastest (several targets per document)."""
    w = rng.choice(echo_wordings())
    kind = rng.choice(TRAIN_KINDS)
    for n in range(1, 0, -1):  # fewer needles where more do not fit
        doc = _near_doc(rng, w, kind, n, max_tokens, encode)
        if doc is not None:
            return doc
    return None


def _near_doc(rng: random.Random, w: Wording, kind: tuple[str, str], n: int, max_tokens: int | None,
              encode: Encode | None) -> str | None:
    from .haystack import TRAIN_NOUNS

    nouns = rng.sample(TRAIN_NOUNS, n)
    keys = [f"{x} {kind[0]}" for x in nouns]
    values: list[str] = []
    while len(values) < n:
        v = sample_number(rng, rng.randint(4, 6), "train")
        if v not in values:
            values.append(v)
    d = _Drawn(w, "", kind, keys, keys, values, keys, values)
    needles = d.needle_texts()
    asked = rng.sample(range(n), n)
    hay = _train_noise(rng)
    offset = rng.randrange(64)
    for k in range(rng.randint(0, DOCUMENT_DISTANCES["lookup_near"]), -1, -1):
        fill = hay.units(offset + k)[offset:]
        body = " ".join(needles[:1] + fill + needles[1:])
        qa = "".join(f"\n{_Drawn(w, '', kind, [keys[i]], [keys[i]], [values[i]], [keys[i]], [values[i]]).query()} {values[i]}."
                     for i in asked)
        doc = body + qa
        if max_tokens is None or encode is None or len(encode(doc)) <= max_tokens:
            return doc
    return None


def _document(rng: random.Random, kind: str, essay: Sequence[str] | None, n_keys: int, n_values: int, n_queries: int,
              max_tokens: int | None, encode: Encode | None, wording: Wording | None = None,
              value_kind: str | None = None) -> str | None:
    d = _draw(rng, "train", essay, n_keys=n_keys, n_values=n_values, n_queries=n_queries, value_kind=value_kind,
              digits=None, wording=wording)
    hay = _prose_haystack(essay, rng) if essay and rng.random() < 1 / 3 else _train_noise(rng)
    needles = d.needle_texts()
    rng.shuffle(needles)
    n_fill = rng.randint(0, DOCUMENT_DISTANCES[kind])
    offset = rng.randrange(64)
    gaps = sorted(rng.random() for _ in needles)
    head = d.intro + "\n" if d.intro and rng.random() < 0.3 else ""
    tail = "\n" + d.query() + " " + ", ".join(d.answers) + "."

    def build(k: int) -> str:
        fill = hay.units(offset + k)[offset:]
        parts: list[str] = []
        prev = 0
        for g, nd in zip(gaps, needles):
            c = int(g * len(fill))
            parts.extend(fill[prev:c])
            parts.append(nd)
            prev = c
        parts.extend(fill[prev:])
        return head + hay.sep.join(parts) + tail

    doc = build(n_fill)
    if max_tokens is None or encode is None:
        return doc
    full = len(encode(doc))
    if full <= max_tokens:
        return doc
    bare = len(encode(build(0)))
    if bare > max_tokens:
        return None
    # token counts grow about linearly in the filler: interpolate, then step down to a verified fit
    k = min(n_fill - 1, (max_tokens - bare) * n_fill // max(1, full - bare))
    while k > 0:
        doc = build(k)
        if len(encode(doc)) <= max_tokens:
            return doc
        k = k * 3 // 4
    return build(0)
