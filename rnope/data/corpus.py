"""The built-in corpus (no downloads) and deterministic corpus utilities.

* ``prose``: English prose taken from the Python standard library -- module, class and function
  docstrings of its pure-Python modules (read with :mod:`ast`, never imported) plus the help
  topics of :mod:`pydoc_data.topics`.
* ``code``: the standard library's ``.py`` sources, one file per document.

Both are identical across runs and machines with the same Python version (files are visited in
sorted relative-path order). Results are memoized in memory only; nothing is written to disk.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import inspect
import os
import sysconfig
import tokenize
import warnings
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

__all__ = [
    "BUILTIN_KINDS",
    "CorpusHasher",
    "MIN_DOCSTRING_CHARS",
    "builtin_documents",
    "corpus_hash",
    "doc_unit",
    "split_documents",
    "split_flags",
    "stdlib_dir",
]

BUILTIN_KINDS: tuple[str, ...] = ("prose", "code")
MIN_DOCSTRING_CHARS = 200
# Directory names never walked: tests, IDLE, lib2to3, installed packages, caches.
_SKIP_DIRS = frozenset(
    {"test", "tests", "idle_test", "idlelib", "lib2to3", "site-packages", "dist-packages", "__pycache__"}
)


def stdlib_dir() -> Path:
    """The directory of the running interpreter's pure-Python standard library."""
    return Path(sysconfig.get_paths()["stdlib"])


def _stdlib_files(root: Path) -> list[tuple[str, Path]]:
    """``(relative posix path, path)`` of the stdlib's ``.py`` files, sorted, test dirs skipped."""
    out: list[tuple[str, Path]] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS and not d.startswith("."))
        for name in filenames:
            if name.endswith(".py") and not name.startswith("test_"):
                full = Path(dirpath) / name
                out.append((full.relative_to(root).as_posix(), full))
    out.sort(key=lambda item: item[0])
    return out


_BODY_NODES = (ast.stmt, ast.excepthandler, ast.match_case)


def _docstrings(tree: ast.Module) -> Iterator[str]:
    """Cleaned docstrings of the module, then of every class/function in source order."""
    doc = ast.get_docstring(tree, clean=True)
    if doc:
        yield doc
    stack: list[ast.AST] = list(reversed(tree.body))
    while stack:  # iterative pre-order walk: source order of definitions
        node = stack.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            doc = ast.get_docstring(node, clean=True)
            if doc:
                yield doc
        # definitions live only in statement bodies: skip expressions entirely
        stack.extend(reversed([c for c in ast.iter_child_nodes(node) if isinstance(c, _BODY_NODES)]))


def _prose_from_source(source: bytes) -> list[str]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. SyntaxWarning for odd escapes in old sources
        try:
            tree = ast.parse(source)
        except (SyntaxError, ValueError):
            return []
    return [d for d in _docstrings(tree) if len(d) >= MIN_DOCSTRING_CHARS]


def _pydoc_topics() -> list[str]:
    try:
        from pydoc_data.topics import topics
    except ImportError:  # stripped-down installations
        return []
    docs = (inspect.cleandoc(topics[k]) for k in sorted(topics))
    return [d for d in docs if d.strip()]


@functools.lru_cache(maxsize=4)
def _builtin(kind: str, root: str) -> tuple[str, ...]:
    files = _stdlib_files(Path(root))
    docs: list[str] = []
    if kind == "prose":
        for _, path in files:
            try:
                docs.extend(_prose_from_source(path.read_bytes()))
            except OSError:
                continue
        docs.extend(_pydoc_topics())
        docs = list(dict.fromkeys(docs))  # exact duplicates (shared docstrings) are kept once
    else:
        for _, path in files:
            try:
                with tokenize.open(path) as f:  # honours PEP 263 coding cookies
                    text = f.read()
            except (OSError, SyntaxError, UnicodeDecodeError):
                continue
            if text.strip():
                docs.append(text)
    return tuple(docs)


def builtin_documents(kind: str = "prose") -> list[str]:
    """Documents of the built-in corpus ``kind`` (``"prose"`` or ``"code"``); see module doc.

    ``prose``: docstrings of >= 200 characters (``inspect.cleandoc``-ed, in relative-path then
    source order, exact duplicates dropped) followed by the ``pydoc_data`` topics sorted by name.
    """
    if kind not in BUILTIN_KINDS:
        raise ValueError(f"unknown builtin corpus '{kind}' (expected one of: {', '.join(BUILTIN_KINDS)})")
    return list(_builtin(kind, str(stdlib_dir())))


class CorpusHasher:
    """Incremental form of :func:`corpus_hash`: ``update(doc)`` per document, then ``hexdigest()``."""

    def __init__(self) -> None:
        self._h = hashlib.sha256(b"rnope-corpus-v1\n")
        self.n_documents = 0

    def update(self, doc: str) -> None:
        raw = doc.encode("utf-8", "surrogatepass")
        self._h.update(len(raw).to_bytes(8, "little"))
        self._h.update(raw)
        self._h.update(b"\x1e")
        self.n_documents += 1

    def hexdigest(self) -> str:
        return self._h.hexdigest()


def corpus_hash(docs: Iterable[str]) -> str:
    """Order-sensitive sha256 hex over ``docs`` (each document length-prefixed and separated)."""
    h = CorpusHasher()
    for doc in docs:
        h.update(doc)
    return h.hexdigest()


def doc_unit(text: str, seed: int = 0) -> float:
    """A stable pseudo-random number in ``[0, 1)`` for ``text`` (blake2b; not Python's ``hash``)."""
    h = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8, key=str(int(seed)).encode())
    return int.from_bytes(h.digest(), "big") / 2.0**64


def split_flags(units: Sequence[float], val_fraction: float) -> list[bool]:
    """Validation flags from per-document :func:`doc_unit` values.

    A document is validation iff its unit is ``< val_fraction``. If that selects nothing while
    ``val_fraction > 0`` and there are at least two documents, the document with the smallest
    unit is taken, so small corpora still get a (deterministic) validation set.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
    flags = [u < val_fraction for u in units]
    if val_fraction > 0 and len(units) >= 2 and not any(flags):
        flags[min(range(len(units)), key=units.__getitem__)] = True
    return flags


def split_documents(
    docs: Iterable[str], val_fraction: float = 0.02, seed: int = 0
) -> tuple[list[str], list[str]]:
    """Deterministic ``(train, val)`` split by a keyed blake2b hash of each document's text.

    Order within each part follows ``docs``. Identical texts always land on the same side, so the
    two parts share no document text. See :func:`split_flags` for the small-corpus rule.
    """
    docs = list(docs)
    flags = split_flags([doc_unit(d, seed) for d in docs], val_fraction)
    train = [d for d, v in zip(docs, flags, strict=True) if not v]
    val = [d for d, v in zip(docs, flags, strict=True) if v]
    return train, val
