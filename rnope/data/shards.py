"""Token shards: tokenize a corpus once into memory-mapped files, then pack fixed-length samples.

On disk (``out_dir``)::

    shard_00000.bin, shard_00001.bin, ...   raw little-endian uint16 (vocab <= 65535) or uint32
    index.json                              dtype, per-shard token counts, totals, tokenizer hash, meta

The token stream is ``encode(doc_0) + [eos] + encode(doc_1) + [eos] + ...``. A dataset directory
appears only when complete: it is written into a temporary sibling directory and renamed.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
from tqdm import tqdm

from ..tokenizer import Tokenizer
from .sources import DataError

__all__ = [
    "INDEX_NAME",
    "PackedDataset",
    "ShardInfo",
    "ShardWriter",
    "TokenShards",
    "stable_permutation",
    "token_dtype",
    "write_shards",
]

INDEX_NAME = "index.json"
_FORMAT, _VERSION = "rnope-token-shards", 1
_ENCODE_BATCH_DOCS, _ENCODE_BATCH_CHARS = 256, 1 << 22


def token_dtype(vocab_size: int) -> np.dtype:
    """Smallest unsigned dtype that holds every id: little-endian uint16 or uint32."""
    return np.dtype("<u2") if vocab_size <= 65535 else np.dtype("<u4")


def _shard_name(i: int) -> str:
    return f"shard_{i:05d}.bin"


def _tmp_sibling(path: Path, tag: str) -> Path:
    return path.parent / f".{path.name}.{tag}-{uuid.uuid4().hex[:12]}"


def _replace_dir(src: Path, dst: Path) -> None:
    """Move the complete directory ``src`` to ``dst``, replacing an existing ``dst``."""
    if dst.exists():
        old = _tmp_sibling(dst, "old")
        os.rename(dst, old)
        os.rename(src, dst)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(src, dst)


@dataclass(frozen=True)
class ShardInfo:
    """What :func:`write_shards` wrote (mirrors ``index.json``)."""

    path: Path
    dtype: str
    shard_tokens: list[int]
    total_tokens: int
    n_documents: int
    tokenizer_hash: str
    meta: dict[str, Any] = field(default_factory=dict)


class ShardWriter:
    """Incremental, atomic shard writer. Use as a context manager or call :meth:`close`.

    ``add(doc)`` buffers documents and encodes them in batches; :meth:`close` writes
    ``index.json`` and renames the temporary directory to ``out_dir`` (replacing it if present).
    Leaving the ``with`` block by an exception discards everything.
    """

    def __init__(
        self,
        out_dir: str | os.PathLike[str],
        tokenizer: Tokenizer,
        *,
        shard_tokens: int = 2**24,
        meta: Mapping[str, Any] | None = None,
    ) -> None:
        if shard_tokens < 1:
            raise ValueError(f"shard_tokens must be >= 1, got {shard_tokens}")
        self.out_dir = Path(out_dir)
        self.tokenizer = tokenizer
        self.shard_tokens = int(shard_tokens)
        self.meta = dict(meta or {})
        self.dtype = token_dtype(tokenizer.vocab_size)
        self.out_dir.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = _tmp_sibling(self.out_dir, "tmp")
        self._tmp.mkdir()
        self._counts: list[int] = []
        self._file: BinaryIO | None = None
        self._pending: list[str] = []
        self._pending_chars = 0
        self.n_documents = 0
        self._done = False

    def add(self, doc: str) -> None:
        """Queue one document (encoded as ``encode(doc) + [eos]``)."""
        if not isinstance(doc, str):
            raise TypeError(f"documents must be str, got {type(doc).__name__}")
        self._pending.append(doc)
        self._pending_chars += len(doc)
        if len(self._pending) >= _ENCODE_BATCH_DOCS or self._pending_chars >= _ENCODE_BATCH_CHARS:
            self._flush()

    def _flush(self) -> None:
        if not self._pending:
            return
        eos = self.tokenizer.eos_id
        ids: list[int] = []
        for row in self.tokenizer.encode_batch(self._pending):
            ids.extend(row)
            ids.append(eos)
        self.n_documents += len(self._pending)
        self._pending, self._pending_chars = [], 0
        self._write(np.asarray(ids, dtype=self.dtype))

    def _write(self, arr: np.ndarray) -> None:
        pos = 0
        while pos < len(arr):
            if self._file is None:
                self._file = open(self._tmp / _shard_name(len(self._counts)), "wb")
                self._counts.append(0)
            take = min(self.shard_tokens - self._counts[-1], len(arr) - pos)
            self._file.write(arr[pos : pos + take].tobytes())
            self._counts[-1] += take
            pos += take
            if self._counts[-1] == self.shard_tokens:
                self._close_file()

    def _close_file(self) -> None:
        if self._file is not None:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            self._file = None

    def close(self) -> ShardInfo:
        """Finish: write ``index.json`` and move the dataset into place."""
        if self._done:
            raise RuntimeError("ShardWriter is already closed")
        try:
            self._flush()
            self._close_file()
            info = ShardInfo(
                path=self.out_dir,
                dtype=self.dtype.name,
                shard_tokens=list(self._counts),
                total_tokens=int(sum(self._counts)),
                n_documents=self.n_documents,
                tokenizer_hash=self.tokenizer.content_hash,
                meta=self.meta,
            )
            index = {
                "format": _FORMAT,
                "version": _VERSION,
                "dtype": info.dtype,
                "shards": [{"file": _shard_name(i), "tokens": n} for i, n in enumerate(info.shard_tokens)],
                "total_tokens": info.total_tokens,
                "n_documents": info.n_documents,
                "vocab_size": self.tokenizer.vocab_size,
                "eos_id": self.tokenizer.eos_id,
                "tokenizer_hash": info.tokenizer_hash,
                "meta": info.meta,
            }
            with open(self._tmp / INDEX_NAME, "w", encoding="utf-8") as f:
                json.dump(index, f, indent=1, sort_keys=True)
                f.flush()
                os.fsync(f.fileno())
            _replace_dir(self._tmp, self.out_dir)
        except BaseException:
            self.abort()
            raise
        self._done = True
        return info

    def abort(self) -> None:
        """Discard everything written so far."""
        self._done = True
        if self._file is not None:
            self._file.close()
            self._file = None
        shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is not None:
            self.abort()
        elif not self._done:
            self.close()


def write_shards(
    docs: Iterable[str],
    tokenizer: Tokenizer,
    out_dir: str | os.PathLike[str],
    *,
    shard_tokens: int = 2**24,
    meta: Mapping[str, Any] | None = None,
    show_progress: bool = False,
) -> ShardInfo:
    """Tokenize ``docs`` into ``out_dir`` (``encode(doc) + [eos]`` each), atomically."""
    writer = ShardWriter(out_dir, tokenizer, shard_tokens=shard_tokens, meta=meta)
    try:
        for doc in tqdm(docs, desc="tokenizing", unit="doc", disable=not show_progress):
            writer.add(doc)
    except BaseException:
        writer.abort()
        raise
    return writer.close()


class TokenShards:
    """Read-only view of a shard directory; every shard is a :class:`numpy.memmap`."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        index_path = self.path / INDEX_NAME
        if not index_path.is_file():
            raise DataError(f"'{self.path}' is not a token shard directory (no {INDEX_NAME})")
        index = json.loads(index_path.read_text(encoding="utf-8"))
        if index.get("format") != _FORMAT or index.get("version") != _VERSION:
            raise DataError(f"'{index_path}' has an unknown format {index.get('format')!r} v{index.get('version')!r}")
        self.index: dict[str, Any] = index
        self.dtype = np.dtype(index["dtype"]).newbyteorder("<")
        self.shards: list[np.memmap] = []
        for entry in index["shards"]:
            f = self.path / entry["file"]
            want = int(entry["tokens"]) * self.dtype.itemsize
            have = f.stat().st_size if f.is_file() else -1
            if have != want:
                raise DataError(f"shard '{f}' has {have} bytes, index says {want}")
            self.shards.append(np.memmap(f, dtype=self.dtype, mode="r", shape=(int(entry["tokens"]),)))
        self._starts = np.cumsum([0] + [len(s) for s in self.shards], dtype=np.int64)

    @property
    def n_documents(self) -> int:
        return int(self.index["n_documents"])

    @property
    def tokenizer_hash(self) -> str:
        return str(self.index["tokenizer_hash"])

    @property
    def meta(self) -> dict[str, Any]:
        return dict(self.index.get("meta", {}))

    def __len__(self) -> int:
        return int(self._starts[-1])

    def get(self, start: int, length: int) -> np.ndarray:
        """Tokens ``[start, start + length)`` of the stream, across shard boundaries.

        Within one shard this is a read-only memmap view; across shards a new array.
        """
        start, length = int(start), int(length)
        if start < 0 or length < 0 or start + length > len(self):
            raise IndexError(f"token range [{start}, {start + length}) outside [0, {len(self)})")
        if length == 0:
            return np.empty(0, dtype=self.dtype)
        first = int(np.searchsorted(self._starts, start, side="right")) - 1
        off = start - int(self._starts[first])
        if off + length <= len(self.shards[first]):
            return self.shards[first][off : off + length]
        parts, need, i = [], length, first
        while need > 0:
            piece = self.shards[i][off : off + need]
            parts.append(piece)
            need -= len(piece)
            i, off = i + 1, 0
        return np.concatenate(parts)

    def __repr__(self) -> str:
        return f"TokenShards('{self.path}', tokens={len(self)}, shards={len(self.shards)}, dtype={self.dtype.name})"


_U64 = np.uint64


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finalizer on a uint64 array (a bijection; wraps modulo 2**64)."""
    x = x + _U64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> _U64(30))) * _U64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> _U64(27))) * _U64(0x94D049BB133111EB)
    return x ^ (x >> _U64(31))


def stable_permutation(n: int, seed: int) -> np.ndarray:
    """A permutation of ``range(n)`` fixed by ``seed``, identical across numpy versions/platforms."""
    salt = _mix64(np.array([int(seed) % 2**64], dtype=np.uint64))[0]
    keys = _mix64(np.arange(n, dtype=np.uint64) ^ salt)
    return np.argsort(keys, kind="stable").astype(np.int64)


class PackedDataset(torch.utils.data.Dataset):
    """Fixed-length samples over a token stream, in a seeded order.

    Sample ``j`` covers tokens ``[j*seq_len, j*seq_len + seq_len + 1)``: ``x`` is the first
    ``seq_len`` tokens and ``y`` the next-token targets. Item ``i`` is sample ``perm[i]`` where
    ``perm = stable_permutation(len, seed)`` (or the identity when ``shuffle=False``).
    """

    def __init__(
        self, shards: TokenShards | str | os.PathLike[str], seq_len: int, *, seed: int, shuffle: bool = True
    ) -> None:
        self.shards = shards if isinstance(shards, TokenShards) else TokenShards(shards)
        if seq_len < 1:
            raise ValueError(f"seq_len must be >= 1, got {seq_len}")
        self.seq_len, self.seed, self.shuffle = int(seq_len), int(seed), bool(shuffle)
        self.n_samples = (len(self.shards) - 1) // self.seq_len if len(self.shards) > 0 else 0
        if self.n_samples == 0:
            raise DataError(
                f"'{self.shards.path}' has {len(self.shards)} tokens, too few for one sample of seq_len {seq_len} "
                f"(needs {seq_len + 1})"
            )
        self.order = stable_permutation(self.n_samples, self.seed) if self.shuffle else None

    def __len__(self) -> int:
        return self.n_samples

    def sample_index(self, i: int) -> int:
        """Which packed sample item ``i`` is."""
        if not 0 <= i < self.n_samples:
            raise IndexError(f"sample {i} out of range [0, {self.n_samples})")
        return int(self.order[i]) if self.order is not None else i

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        j = self.sample_index(int(i))
        chunk = torch.from_numpy(self.shards.get(j * self.seq_len, self.seq_len + 1).astype(np.int64))
        return chunk[:-1], chunk[1:]

    def batches(
        self, batch_size: int, start_sample: int = 0, *, drop_last: bool = False
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield ``(x, y)`` of shape ``[B, seq_len]`` for items ``start_sample, start_sample+1, ...``.

        One pass; resuming with ``start_sample = batches_done * batch_size`` continues exactly.
        The last batch is smaller unless ``drop_last``.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= start_sample <= self.n_samples:
            raise ValueError(f"start_sample {start_sample} outside [0, {self.n_samples}]")
        for b in range(start_sample, self.n_samples, batch_size):
            end = min(b + batch_size, self.n_samples)
            if drop_last and end - b < batch_size:
                return
            items = [self[i] for i in range(b, end)]
            yield torch.stack([x for x, _ in items]), torch.stack([y for _, y in items])
