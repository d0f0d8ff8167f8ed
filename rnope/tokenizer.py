"""Tokenizer: a thin wrapper over Hugging Face ``tokenizers`` (``tokenizer.json`` format).

Every rnope tokenizer is byte-level and lossless: ``decode(encode(s)) == s`` for any string made
of Unicode scalar values (anything that can be encoded as UTF-8). Nothing normalizes, strips or
adds a prefix space, and special-token spellings that occur inside user text (e.g. a literal
``"<eos>"``) are encoded as ordinary bytes, never as the special token.

Two kinds are built here:

* :meth:`Tokenizer.byte_level` -- no training; ids ``0, 1, 2`` are ``<pad>, <bos>, <eos>`` and
  byte ``b`` has id ``3 + b`` (``vocab_size == 259``).
* :meth:`Tokenizer.train_bpe` -- byte-level BPE (GPT-2 style pre-tokenization) with the same
  three specials at ids ``0, 1, 2``. With ``digit_pairs=True`` no token mixes digits with other
  characters and every two-digit string is one token, so a number is split the same way wherever
  it stands (after a space, a colon or a newline) and in about half as many tokens as digits.

Any ``tokenizer.json`` that defines the three specials can be loaded with :meth:`Tokenizer.load`.
"""

from __future__ import annotations

import hashlib
import itertools
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from tokenizers import Tokenizer as _HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from .outputs import atomic_write_text

__all__ = ["Tokenizer", "SPECIAL_TOKENS", "PAD", "BOS", "EOS", "N_BYTES", "check_vocab_fits", "bpe_vocab_floor"]

PAD, BOS, EOS = "<pad>", "<bos>", "<eos>"
SPECIAL_TOKENS: tuple[str, ...] = (PAD, BOS, EOS)
N_BYTES = 256
_BYTE_LEVEL_VOCAB = len(SPECIAL_TOKENS) + N_BYTES  # 259


def _byte_level_parts() -> tuple[pre_tokenizers.ByteLevel, decoders.ByteLevel]:
    """Pre-tokenizer and decoder shared by every rnope-built tokenizer (no prefix space)."""
    return (
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=True),
        decoders.ByteLevel(),
    )


_DIGITS = "0123456789"
_DIGIT_PAIRS = len(_DIGITS) ** 2


def bpe_vocab_floor(digit_pairs: bool = False) -> tuple[int, str]:
    """The smallest ``vocab_size`` :meth:`Tokenizer.train_bpe` accepts, and what it is made of (for messages)."""
    pairs = f" + {_DIGIT_PAIRS} digit pairs" if digit_pairs else ""
    least = _BYTE_LEVEL_VOCAB + (_DIGIT_PAIRS if digit_pairs else 0) + 1
    return least, f"{len(SPECIAL_TOKENS)} specials + {N_BYTES} bytes{pairs} + 1 merge"


def _with_digit_pairs(tokenizer_json: str) -> str:
    """A trained BPE's ``tokenizer.json`` with its digit-holding tokens and merges replaced by the 100
    digit pairs, merged first (ids right after the byte alphabet); other ids keep their order.

    Dropping every token that holds a digit keeps the merge list closed: a merge's two parts are
    substrings of its result, so a kept merge never needs a dropped token. Byte-level BPE writes the
    ASCII digits as themselves, and no other byte maps to them."""
    import json

    spec = json.loads(tokenizer_json)
    model = spec["model"]
    has_digit = lambda tok: any(c in _DIGITS for c in tok)  # noqa: E731
    base = _BYTE_LEVEL_VOCAB  # the specials and the byte alphabet: ids 0..258, untouched
    by_id = sorted(model["vocab"].items(), key=lambda kv: kv[1])
    head = [tok for tok, i in by_id if i < base]
    learned = [tok for tok, i in by_id if i >= base and not has_digit(tok)]
    pairs = [a + b for a in _DIGITS for b in _DIGITS]
    model["vocab"] = {tok: i for i, tok in enumerate(head + pairs + learned)}
    merges = [m if isinstance(m, list) else m.split(" ") for m in model["merges"]]
    model["merges"] = [list(p) for p in pairs] + [m for m in merges if not has_digit(m[0] + m[1])]
    return json.dumps(spec)


def _byte_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map (the ByteLevel alphabet)."""
    printable = list(range(ord("!"), ord("~") + 1))
    printable += list(range(ord("\xa1"), ord("\xac") + 1)) + list(range(ord("\xae"), ord("\xff") + 1))
    mapping: dict[int, str] = {b: chr(b) for b in printable}
    extra = 0
    for b in range(N_BYTES):
        if b not in mapping:
            mapping[b] = chr(N_BYTES + extra)
            extra += 1
    return mapping


def _check_utf8(text: str) -> None:
    """Raise ``ValueError`` if ``text`` holds a lone surrogate (not encodable as UTF-8)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(
            f"encode: text is not valid Unicode (lone surrogate {text[e.start]!r} at index {e.start})"
        ) from None


def check_vocab_fits(tokenizer, vocab_size: int, where: str | None = None) -> None:
    """Raise ``ValueError`` when ``tokenizer`` has more tokens than a model's ``vocab_size``.

    The rule: ``tokenizer.vocab_size <= vocab_size``. Fewer tokens is legitimate and accepted:
    models pad their embedding (to a multiple of 64, or a ``--model.vocab_size`` set above the
    tokenizer's when training), and ``encode`` never produces the padding ids. More tokens is
    refused: those ids would index past the embedding, and such a tokenizer belongs to another
    model. The message is one line naming both sizes, prefixed by ``where`` (a file or a model
    name) when given. An object without an integer ``vocab_size`` (a test double) is not checked.
    """
    n = getattr(tokenizer, "vocab_size", None)
    if isinstance(n, bool) or not isinstance(n, int) or n <= vocab_size:
        return
    prefix = f"{where}: " if where else ""
    raise ValueError(
        f"{prefix}tokenizer has {n} tokens but the model's vocab_size is {vocab_size} "
        "(a tokenizer may have fewer tokens than vocab_size, never more)"
    )


class Tokenizer:
    """Lossless byte-level tokenizer with the specials ``<pad>``, ``<bos>``, ``<eos>``.

    Wraps a :class:`tokenizers.Tokenizer`; ``source`` is only used in error messages.
    """

    def __init__(self, hf: _HFTokenizer, *, source: str = "<memory>") -> None:
        ids: dict[str, int] = {}
        for tok in SPECIAL_TOKENS:
            tid = hf.token_to_id(tok)
            if tid is None:
                raise ValueError(f"tokenizer {source} lacks special token '{tok}'")
            ids[tok] = tid
        # Special-token spellings inside user text are plain text, so round trips stay exact.
        hf.encode_special_tokens = True
        self._hf = hf
        self._pad_id, self._bos_id, self._eos_id = ids[PAD], ids[BOS], ids[EOS]

    # ------------------------------------------------------------------ construction
    @classmethod
    def byte_level(cls) -> Tokenizer:
        """The default tokenizer: 3 specials (ids 0..2) then the 256 bytes (id = 3 + byte)."""
        b2u = _byte_to_unicode()
        vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
        vocab.update({b2u[b]: len(SPECIAL_TOKENS) + b for b in range(N_BYTES)})
        hf = _HFTokenizer(models.BPE(vocab=vocab, merges=[]))
        hf.pre_tokenizer, hf.decoder = _byte_level_parts()
        hf.add_special_tokens(list(SPECIAL_TOKENS))
        return cls(hf, source="<byte_level>")

    @classmethod
    def train_bpe(cls, texts: Iterable[str], vocab_size: int, *, show_progress: bool = False,
                  digit_pairs: bool = False) -> Tokenizer:
        """Train a byte-level BPE tokenizer with at most ``vocab_size`` tokens (specials included).

        ``digit_pairs``: drop every learned token that holds a digit and add the 100 two-digit tokens
        ``"00"``-``"99"`` as the first merges. A run of digits then becomes pairs (and at most a few
        single digits) whatever precedes it, instead of BPE's frequency-driven pieces such as ``" 2"``,
        ``"00"`` and ``"200"``: a value is copied in fewer, context-free tokens. The result still is
        plain byte-level BPE with GPT-2's pre-tokenizer (what llama.cpp's ``gpt-2`` vocabulary runs).

        Raises ``ValueError`` if ``vocab_size`` leaves no room for a merge (< 260, or < 360 with
        ``digit_pairs``) or ``texts`` is empty.
        """
        least, parts = bpe_vocab_floor(digit_pairs)
        if not isinstance(vocab_size, int) or isinstance(vocab_size, bool) or vocab_size < least:
            raise ValueError(f"train_bpe: vocab_size must be at least {least} ({parts}), got {vocab_size!r}")
        if isinstance(texts, str):
            raise TypeError("train_bpe: texts must be an iterable of strings, not a single string")
        it = iter(texts)
        first = next(it, None)
        if first is None:
            raise ValueError("train_bpe: texts is empty (need at least one text to train on)")

        def checked() -> Iterable[str]:
            for t in itertools.chain([first], it):
                if not isinstance(t, str):
                    raise TypeError(f"train_bpe: texts must be strings, got {type(t).__name__}")
                yield t

        hf = _HFTokenizer(models.BPE())
        hf.pre_tokenizer, hf.decoder = _byte_level_parts()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size - (_DIGIT_PAIRS if digit_pairs else 0),
            min_frequency=0,
            show_progress=show_progress,
            special_tokens=list(SPECIAL_TOKENS),
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        )
        hf.train_from_iterator(checked(), trainer=trainer)
        if digit_pairs:
            hf = _HFTokenizer.from_str(_with_digit_pairs(hf.to_str()))
        return cls(hf, source="<train_bpe>")

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Tokenizer:
        """Load ``tokenizer.json`` (``path`` is the file or a directory containing it)."""
        p = Path(path)
        if p.is_dir():
            p = p / "tokenizer.json"
        if not p.is_file():
            raise FileNotFoundError(f"tokenizer file '{p}' does not exist")
        try:
            hf = _HFTokenizer.from_file(str(p))
        except Exception as e:  # tokenizers raises a bare Exception on malformed JSON
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise ValueError(f"tokenizer {p} is not a valid tokenizer.json: {msg}") from e
        return cls(hf, source=str(p))

    @classmethod
    def from_json(cls, text: str) -> Tokenizer:
        """Build from the JSON text produced by :meth:`to_json`."""
        return cls(_HFTokenizer.from_str(text), source="<json>")

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike[str]) -> None:
        """Write ``tokenizer.json`` to the file ``path`` atomically (parent dirs are created)."""
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(p, self.to_json())

    def to_json(self) -> str:
        """The ``tokenizer.json`` text."""
        return self._hf.to_str()

    @property
    def content_hash(self) -> str:
        """sha256 hex of :meth:`to_json` -- identifies the tokenizer in shard indexes and runs."""
        return hashlib.sha256(self.to_json().encode("utf-8")).hexdigest()

    # ------------------------------------------------------------------ encode / decode
    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``; no special tokens are added."""
        if not isinstance(text, str):
            raise TypeError(f"encode expects str, got {type(text).__name__}")
        try:
            return self._hf.encode(text, add_special_tokens=False).ids
        except TypeError:
            _check_utf8(text)
            raise

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """:meth:`encode` for many texts (parallel in Rust)."""
        if isinstance(texts, str):
            raise TypeError("encode_batch expects a list of str, got a single str")
        texts = list(texts)
        for t in texts:
            if not isinstance(t, str):
                raise TypeError(f"encode_batch expects str items, got {type(t).__name__}")
        try:
            return [e.ids for e in self._hf.encode_batch(texts, add_special_tokens=False)]
        except TypeError:
            for t in texts:
                _check_utf8(t)
            raise

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids`` (ints, a tensor or an array); special tokens are skipped."""
        if hasattr(ids, "tolist"):
            ids = ids.tolist()
        return self._hf.decode([int(i) for i in ids], skip_special_tokens=True)

    # ------------------------------------------------------------------ properties
    @property
    def vocab_size(self) -> int:
        """Number of ids (added tokens included); valid ids are ``0 .. vocab_size - 1``."""
        return self._hf.get_vocab_size(with_added_tokens=True)

    @property
    def pad_id(self) -> int:
        return self._pad_id

    @property
    def bos_id(self) -> int:
        return self._bos_id

    @property
    def eos_id(self) -> int:
        return self._eos_id

    @property
    def hf(self) -> _HFTokenizer:
        """The wrapped :class:`tokenizers.Tokenizer`."""
        return self._hf

    def __repr__(self) -> str:
        return f"Tokenizer(vocab_size={self.vocab_size}, pad={self.pad_id}, bos={self.bos_id}, eos={self.eos_id})"
