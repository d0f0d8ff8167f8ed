"""Prose that no training run of rnope sees: the haystack of the evaluations.

``heldout_prose.txt`` (shipped with the package) is a collection of short essays on everyday,
non-technical subjects, written for rnope: plain ASCII sentences, no digits (so a needle's value
is the only number in the haystack), and none of the words of the evaluation templates. The
built-in training corpus is the Python standard library's docstrings and help topics, so the two
share no sentence; ``tests/tasks/test_family.py`` checks that mechanically.

:func:`load_essay` reads a user's own prose (e.g. the Paul Graham essays RULER uses) for
``--essay PATH``.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

__all__ = ["heldout_prose", "heldout_prose_hash", "load_essay"]

_FILE = Path(__file__).with_name("heldout_prose.txt")


def _paragraphs(text: str) -> list[str]:
    return [" ".join(p.split()) for p in text.replace("\r\n", "\n").split("\n\n") if p.strip()]


@functools.cache
def _heldout() -> tuple[str, ...]:
    return tuple(_paragraphs(_FILE.read_text(encoding="ascii")))


def heldout_prose() -> list[str]:
    """The shipped held-out essays, one string per essay."""
    return list(_heldout())


def heldout_prose_hash() -> str:
    """Content hash of :func:`heldout_prose` (recorded with results that use it)."""
    return hashlib.sha256("\n\n".join(_heldout()).encode()).hexdigest()[:16]


def load_essay(path: str | Path) -> list[str]:
    """Paragraphs (blank-line separated) of a UTF-8 text file, or of every ``.txt`` file of a
    directory in name order; raises a one-line ValueError when there is no usable prose."""
    p = Path(path)
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.suffix == ".txt" and f.is_file())
        if not files:
            raise ValueError(f"--essay: directory '{path}' holds no .txt files")
    elif p.is_file():
        files = [p]
    else:
        raise ValueError(f"--essay: '{path}' does not exist")
    from .sources import DataError, _read_text  # the --data reader: strict UTF-8, BOM skipped

    out: list[str] = []
    for f in files:
        try:
            out.extend(p for text in _read_text(f) for p in _paragraphs(text))
        except DataError as e:
            raise ValueError(f"--essay: {e}") from None
    if sum(len(x) for x in out) < 200:
        raise ValueError(f"--essay: '{path}' holds {sum(len(x) for x in out)} characters of text; a haystack needs at least 200")
    return out
