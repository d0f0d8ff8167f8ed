"""Haystacks and vocabularies for the synthetic tasks (docs/evaluation.md; RULER's noise / essay / needle).

A :class:`Haystack` is an infinite, prefix-consistent sequence of *units* (sentences or lines)
joined by ``sep``; the length fit asks for the first ``n`` of them and needles go between units.

* ``noise`` -- the passkey filler ("The grass is green. The sky is blue. ...") cycled one
  sentence per unit (train split: different filler blocks); with ``lines=True`` (RULER's layout, used
  by its eval items) each unit is the whole five-sentence block and units sit on their own lines.
* ``essay`` -- caller-supplied prose, split into sentences and cycled from a seeded start. The
  caller owns its content: give the train split a different corpus if the two must not share prose.
* ``needle`` -- every line a distractor needle made by a caller-supplied ``make_line(i)``.

Key vocabularies are fixed word lists (RULER uses adjective-noun keys such as ``quiet-harbor``);
the eval and train lists are disjoint. The eval common-words task draws from :func:`cwe_words`, a
shipped list of real English words disjoint from everything the train split can generate.
"""

from __future__ import annotations

import functools
import random
import re
from collections.abc import Callable, Sequence
from importlib import resources

from .common import check_split, owned_by

__all__ = [
    "EVAL_ADJECTIVES",
    "EVAL_NOUNS",
    "Haystack",
    "KeySampler",
    "NOISE_EVAL",
    "NOISE_TRAIN",
    "TRAIN_ADJECTIVES",
    "TRAIN_NOUNS",
    "VocabPool",
    "WordPool",
    "cwe_words",
    "essay_haystack",
    "needle_haystack",
    "noise_haystack",
    "split_sentences",
]

#: the passkey filler (LongLoRA lineage), one sentence per unit.
NOISE_EVAL: tuple[str, ...] = (
    "The grass is green.",
    "The sky is blue.",
    "The sun is yellow.",
    "Here we go.",
    "There and back again.",
)

#: Train-split filler blocks: same rhythm, no sentence shared with :data:`NOISE_EVAL`.
NOISE_TRAIN: tuple[tuple[str, ...], ...] = (
    ("The river is wide.", "The hills are quiet.", "The moon is white.", "Off we walk.", "Over and under once more."),
    ("The stones are grey.", "The road is long.", "The leaves are red.", "On and on.", "Near and far once more."),
    ("The lake is still.", "The clouds drift by.", "The air is cool.", "Step by step.", "To the hill and home."),
)

EVAL_ADJECTIVES: tuple[str, ...] = tuple("""
calm bright quiet hollow gentle silver golden crimson swift brave humble eager fierce jolly lucky
mellow noble proud rapid sturdy tender vivid witty young ancient bitter clever dusty empty fancy
frozen giant hidden icy jagged keen lively misty narrow odd pale rough shiny tiny upper vast wild
yellow zesty amber bold cosmic dizzy elegant fluffy grumpy hasty lazy loyal nimble polite quirky
rusty sleepy thirsty wooden windy sunny
""".split())

EVAL_NOUNS: tuple[str, ...] = tuple("""
harbor lantern meadow falcon pebble canyon violin orchard glacier compass ribbon thimble walrus
cactus anchor beacon cobbler dolphin ember fountain gazebo hammock igloo jackal kettle lagoon
mantis nectar otter parrot quarry raven saddle tunnel umbrella valley wagon yacht zebra acorn
badger candle dragon easel ferret goblet heron island jasmine koala lizard marble noodle oyster
pepper quilt rocket spindle tulip urchin vessel walnut yarn zither basket cottage donkey engine
feather garden
""".split())

TRAIN_ADJECTIVES: tuple[str, ...] = tuple("""
able agile airy arctic barren blunt breezy brisk bumpy chilly cloudy crisp curly damp dapper
dreary dull earnest faint feral fickle frank fuzzy gaunt glossy grand gritty hardy hefty husky
jaunty jumbo knotty lanky lean lofty lucid lush mighty modest murky nervous plucky plush prickly
quaint rowdy rugged salty scrawny shaggy sleek slim smoky snug soggy spicy stark stout sullen tame
tangy tidy timid tough vague weary wiry zany zealous
""".split())

TRAIN_NOUNS: tuple[str, ...] = tuple("""
abbey alley apron arrow attic banjo barrel beetle bison blanket bucket buffalo cabin camel canoe
cello cherry chimney cobra comet coral crayon cricket dagger desert ditch eagle elbow fiddle flute
forest gecko gravel guitar hamster helmet hornet iguana jacket jungle kayak ladder lemon llama
magnet mango mitten moose mustard oasis panda peanut pelican pillow pigeon pumpkin puppet rabbit
radish sandal scarf shovel skunk sparrow squid statue tiger toaster trumpet turnip velvet whistle
""".split())

_WORDS = {"eval": (EVAL_ADJECTIVES, EVAL_NOUNS), "train": (TRAIN_ADJECTIVES, TRAIN_NOUNS)}
_CONSONANTS = "bdfgklmnprstvz"
_VOWELS = "aeiou"


class Haystack:
    """A prefix-consistent, unbounded sequence of units; ``units(n)`` returns the first ``n``."""

    def __init__(self, kind: str, sep: str, unit: Callable[[int], str]):
        self.kind, self.sep, self._unit = kind, sep, unit
        self._cache: list[str] = []

    def units(self, n: int) -> list[str]:
        while len(self._cache) < n:
            self._cache.append(self._unit(len(self._cache)))
        return self._cache[:n]


def noise_haystack(split: str, rng: random.Random, lines: bool = False) -> Haystack:
    """the grass/sky filler for ``"eval"``; a seeded choice of :data:`NOISE_TRAIN` for train.

    Default: one sentence per unit, joined by spaces. ``lines=True``: RULER's noise layout, one whole
    block per unit and one unit per line (needles then sit on lines of their own between blocks).
    """
    block = NOISE_EVAL if check_split(split) == "eval" else rng.choice(NOISE_TRAIN)
    if lines:
        text = " ".join(block)
        return Haystack("noise", "\n", lambda i: text)
    return Haystack("noise", " ", lambda i: block[i % len(block)])


_SENT_RE = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])")


def split_sentences(texts: Sequence[str]) -> list[str]:
    """Whitespace-normalised sentences of ``texts`` (each string may hold several sentences)."""
    out: list[str] = []
    for t in texts:
        t = " ".join(t.split())
        if t:
            out.extend(s for s in _SENT_RE.split(t) if s)
    return out


@functools.lru_cache(maxsize=8)
def _sentences(essay: tuple[str, ...]) -> list[str]:
    return split_sentences(essay)


def essay_haystack(essay: Sequence[str] | None, rng: random.Random, task: str = "?") -> Haystack:
    """Caller prose, one sentence per unit, cycled from a seeded starting sentence."""
    if essay is None:
        raise ValueError(f"task {task!r} needs an essay haystack: pass essay=[prose strings]")
    sents = _sentences(tuple(essay))
    if not sents:
        raise ValueError(f"task {task!r}: the essay holds no text")
    start = rng.randrange(len(sents))
    return Haystack("essay", " ", lambda i: sents[(start + i) % len(sents)])


def needle_haystack(make_line: Callable[[int], str]) -> Haystack:
    """Every line a distractor needle (RULER's ``needle`` haystack), lines joined by newlines."""
    return Haystack("needle", "\n", make_line)


class KeySampler:
    """Distinct ``adjective-noun`` keys from the split's word lists (three words once two run low)."""

    def __init__(self, split: str, rng: random.Random):
        self.adjs, self.nouns = _WORDS[check_split(split)]
        self.rng = rng
        self.used: set[str] = set()

    def __call__(self) -> str:
        cap = len(self.adjs) * len(self.nouns)
        while True:
            words = [self.rng.choice(self.adjs), self.rng.choice(self.nouns)]
            if len(self.used) > cap // 2:
                words.insert(0, self.rng.choice(self.adjs))
            key = "-".join(words)
            if key not in self.used:
                self.used.add(key)
                return key


class WordPool:
    """Distinct words for word-list tasks (CWE): the split's real words in a seeded order, then
    seeded pseudo-words (consonant-vowel syllables) owned by the split, drawn lazily."""

    def __init__(self, split: str, rng: random.Random):
        self.split = check_split(split)
        adjs, nouns = _WORDS[split]
        self.words = list(adjs) + list(nouns)
        rng.shuffle(self.words)
        self.seen = set(EVAL_ADJECTIVES + EVAL_NOUNS + TRAIN_ADJECTIVES + TRAIN_NOUNS)
        self.rng = rng

    def _pseudo(self) -> str:
        r = self.rng
        return "".join(r.choice(_CONSONANTS) + r.choice(_VOWELS) for _ in range(r.choice((2, 3, 3))))

    def take(self, n: int) -> list[str]:
        """The first ``n`` words of the pool (prefix-consistent)."""
        while len(self.words) < n:
            w = self._pseudo()
            if w not in self.seen and owned_by(w) == self.split:
                self.seen.add(w)
                self.words.append(w)
        return self.words[:n]


@functools.cache
def cwe_words() -> tuple[str, ...]:
    """The eval common-words vocabulary: real English words shipped in ``cwe_words.txt`` (derived from
    the wonderwords lists RULER uses; see the file's header), none a substring of another."""
    text = resources.files(__package__).joinpath("cwe_words.txt").read_text(encoding="utf-8")
    return tuple(w for w in (line.strip() for line in text.splitlines()) if w and not w.startswith("#"))


class VocabPool:
    """Distinct words from a fixed vocabulary in a seeded order (prefix-consistent, finite)."""

    def __init__(self, words: Sequence[str], rng: random.Random):
        self.words = list(words)
        rng.shuffle(self.words)

    def __len__(self) -> int:
        return len(self.words)

    def take(self, n: int, start: int = 0) -> list[str]:
        """Words ``start .. start + n`` of the seeded order."""
        if start + n > len(self.words):
            raise ValueError(f"the vocabulary has {len(self.words)} words; {start + n} were asked for")
        return self.words[start:start + n]
