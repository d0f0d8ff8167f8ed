"""Document sources: turn a data *spec* string into a stream of documents (``str``).

Specs
-----
``builtin`` / ``builtin:prose`` / ``builtin:code``
    The built-in corpus (:mod:`rnope.data.corpus`).
``PATH.txt`` / ``PATH.md``
    One document: the whole file (strict UTF-8; a leading BOM is dropped).
``PATH.jsonl``
    One JSON object per line; the document is field ``text_field`` (blank lines are skipped).
``PATH.parquet``
    Column ``text_field`` (needs ``pyarrow``; null values are skipped).
``PATH/`` (a folder)
    Recursively every ``.txt``/``.md``/``.jsonl``/``.parquet`` file inside, in sorted relative-path
    order; names starting with ``.`` are skipped.
``hf:PATH[:split]``
    A Hugging Face ``datasets`` dataset saved with ``save_to_disk`` (split defaults to ``train``).

Documents that are empty or whitespace-only are dropped; others are returned unchanged.
All problems raise :class:`DataError` with a one-line message naming the path.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

from .corpus import BUILTIN_KINDS, builtin_documents

__all__ = ["DataError", "FILE_SUFFIXES", "iter_documents", "load_documents"]

FILE_SUFFIXES: tuple[str, ...] = (".txt", ".md", ".jsonl", ".parquet")
_BOM = b"\xef\xbb\xbf"
_PARQUET_HINT = "reading parquet needs pyarrow: pip install 'rnope[data]'"


class DataError(ValueError):
    """A problem with user data (missing path, bad file, empty corpus); one-line message."""


def _keep(text: str) -> bool:
    return bool(text.strip())


def _decode(raw: bytes, where: str, base_offset: int = 0) -> str:
    """Strict UTF-8 decode; errors name ``where`` and the absolute byte offset."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(
            f"{where} is not valid UTF-8 (byte 0x{raw[e.start]:02x} at offset {base_offset + e.start})"
        ) from None


def _read_text(path: Path) -> Iterator[str]:
    raw = path.read_bytes()
    skip = len(_BOM) if raw.startswith(_BOM) else 0
    text = _decode(raw[skip:], f"file '{path}'", skip)
    if _keep(text):
        yield text


def _read_jsonl(path: Path, text_field: str) -> Iterator[str]:
    offset = 0
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            start, offset = offset, offset + len(raw)
            if lineno == 1 and raw.startswith(_BOM):
                raw, start = raw[len(_BOM):], start + len(_BOM)
            line = _decode(raw, f"file '{path}'", start)
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                raise DataError(f"{path} line {lineno}: not valid JSON") from None
            if not isinstance(obj, dict):
                raise DataError(f"{path} line {lineno}: not a JSON object")
            if text_field not in obj:
                raise DataError(f"{path} line {lineno}: no field '{text_field}'")
            value = obj[text_field]
            if value is None:
                continue
            if not isinstance(value, str):
                raise DataError(f"{path} line {lineno}: field '{text_field}' is not a string")
            if _keep(value):
                yield value


def _read_parquet(path: Path, text_field: str) -> Iterator[str]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(_PARQUET_HINT) from None
    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises ArrowInvalid etc.
        raise DataError(f"{path}: not a readable parquet file ({str(e).splitlines()[0]})") from None
    if text_field not in pf.schema_arrow.names:
        raise DataError(f"{path}: no column '{text_field}'")
    for batch in pf.iter_batches(columns=[text_field], batch_size=1024):
        for value in batch.column(0).to_pylist():
            if value is None:
                continue
            if not isinstance(value, str):
                raise DataError(f"{path}: column '{text_field}' is not a string column")
            if _keep(value):
                yield value


def _read_hf(rest: str, text_field: str) -> Iterator[str]:
    try:
        import datasets
    except ImportError:
        raise DataError("reading hf: datasets needs the 'datasets' package: pip install datasets") from None
    path, split = rest, None
    if not os.path.exists(path) and ":" in rest:
        path, split = rest.rsplit(":", 1)
    if not os.path.exists(path):
        raise DataError(f"data path '{path}' does not exist")
    try:
        ds = datasets.load_from_disk(path)
    except Exception as e:
        raise DataError(f"hf dataset '{path}' could not be loaded ({str(e).splitlines()[0]})") from None
    if isinstance(ds, datasets.DatasetDict):
        split = split or "train"
        if split not in ds:
            raise DataError(f"hf dataset '{path}' has no split '{split}' (splits: {', '.join(sorted(ds))})")
        ds = ds[split]
    elif split is not None and str(ds.split) != split:
        raise DataError(f"hf dataset '{path}' is a single split ('{ds.split}'), not '{split}'")
    if text_field not in ds.column_names:
        raise DataError(f"hf dataset '{path}': no column '{text_field}'")
    row = 0
    for batch in ds.select_columns([text_field]).iter(batch_size=1024):
        for value in batch[text_field]:
            row += 1
            if value is None:
                continue
            if not isinstance(value, str):
                raise DataError(f"hf dataset '{path}' row {row - 1}: field '{text_field}' is not a string")
            if _keep(value):
                yield value


def _folder_files(root: Path) -> list[Path]:
    found: list[tuple[str, Path]] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            p = Path(dirpath) / name
            if not name.startswith(".") and p.suffix.lower() in FILE_SUFFIXES:
                found.append((p.relative_to(root).as_posix(), p))
    return [p for _, p in sorted(found)]


def _read_file(path: Path, text_field: str) -> Iterator[str]:
    suffix = path.suffix.lower()
    if suffix in (".txt", ".md"):
        return _read_text(path)
    if suffix == ".jsonl":
        return _read_jsonl(path, text_field)
    if suffix == ".parquet":
        return _read_parquet(path, text_field)
    raise DataError(
        f"data path '{path}' has unsupported type '{suffix or path.name}' "
        "(expected .txt, .md, .jsonl, .parquet, a folder, builtin[:prose|:code] or hf:PATH[:split])"
    )


def _iter_spec(spec: str, text_field: str) -> Iterator[str]:
    if spec == "builtin" or spec.startswith("builtin:"):
        kind = spec.partition(":")[2] or "prose"
        if kind not in BUILTIN_KINDS:
            raise DataError(f"unknown builtin corpus '{kind}' (expected one of: {', '.join(BUILTIN_KINDS)})")
        yield from builtin_documents(kind)
        return
    if spec.startswith("hf:"):
        yield from _read_hf(spec[3:], text_field)
        return
    path = Path(spec)
    if not path.exists():
        raise DataError(f"data path '{spec}' does not exist")
    if path.is_dir():
        for f in _folder_files(path):
            yield from _read_file(f, text_field)
    else:
        yield from _read_file(path, text_field)


def iter_documents(spec: str | os.PathLike[str], *, text_field: str = "text") -> Iterator[str]:
    """Stream the documents of ``spec`` (see module doc) without holding them all in memory.

    Raises :class:`DataError` when the source is bad or yields no (non-blank) document; the
    "no documents" error comes at the end of the stream.
    """
    spec = os.fspath(spec)
    n = 0
    for doc in _iter_spec(spec, text_field):
        n += 1
        yield doc
    if n == 0:
        raise DataError(f"corpus '{spec}' has no documents")


def load_documents(spec: str | os.PathLike[str], *, text_field: str = "text") -> list[str]:
    """All documents of ``spec`` as a list (see :func:`iter_documents`)."""
    return list(iter_documents(spec, text_field=text_field))
