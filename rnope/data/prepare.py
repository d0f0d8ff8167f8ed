"""Tokenize-once cache: documents -> train/val token shards under ``cache_dir/<key>``.

``key`` hashes (corpus hash, tokenizer hash, split parameters), so the same content with the
same tokenizer and split is tokenized once, whatever path it came from. Layout::

    cache_dir/<key>/meta.json   cache_dir/<key>/train/   cache_dir/<key>/val/

The ``<key>`` directory is renamed into place only when complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from array import array
from pathlib import Path
from typing import Any

import numpy as np

from ..tokenizer import Tokenizer
from .corpus import CorpusHasher, doc_unit, split_flags
from .shards import INDEX_NAME, ShardWriter, _replace_dir, _tmp_sibling
from .sources import DataError, iter_documents

__all__ = ["prepare_dataset", "cache_key"]

_CACHE_VERSION = 1


def cache_key(corpus_hash: str, tokenizer_hash: str, val_fraction: float, seed: int) -> str:
    """The cache directory name for this (corpus, tokenizer, split) combination."""
    blob = json.dumps(
        {"v": _CACHE_VERSION, "corpus": corpus_hash, "tokenizer": tokenizer_hash,
         "val_fraction": float(val_fraction), "seed": int(seed)},
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def _scan(spec: str, text_field: str, seed: int) -> tuple[str, array]:
    """One streaming pass: corpus hash and each document's split unit."""
    h = CorpusHasher()
    units = array("d")
    for doc in iter_documents(spec, text_field=text_field):
        h.update(doc)
        units.append(doc_unit(doc, seed))
    return h.hexdigest(), units


def _complete(d: Path) -> bool:
    return all((d / f).is_file() for f in ("meta.json", f"train/{INDEX_NAME}", f"val/{INDEX_NAME}"))


def prepare_dataset(
    spec: str | os.PathLike[str],
    tokenizer: Tokenizer,
    cache_dir: str | os.PathLike[str],
    *,
    text_field: str = "text",
    val_fraction: float = 0.02,
    seed: int = 0,
    shard_tokens: int = 2**24,
    show_progress: bool = False,
) -> tuple[Path, Path, dict[str, Any]]:
    """Return ``(train_dir, val_dir, meta)``, tokenizing ``spec`` only if not cached yet.

    Documents are streamed twice (hash + split, then tokenize), never held all at once.
    ``meta`` (also stored in ``meta.json`` and each ``index.json``) records the spec, corpus and
    tokenizer hashes, split parameters, document counts and the cache key.
    """
    spec = os.fspath(spec)
    split_flags([], val_fraction)  # validates val_fraction early
    corpus_hash, units = _scan(spec, text_field, seed)
    tok_hash = tokenizer.content_hash
    key = cache_key(corpus_hash, tok_hash, val_fraction, seed)
    root = Path(cache_dir)
    final = root / key
    if _complete(final):
        return final / "train", final / "val", json.loads((final / "meta.json").read_text(encoding="utf-8"))

    flags = np.asarray(split_flags(units, val_fraction), dtype=bool)
    meta: dict[str, Any] = {
        "spec": spec,
        "text_field": text_field,
        "corpus_hash": corpus_hash,
        "tokenizer_hash": tok_hash,
        "val_fraction": float(val_fraction),
        "seed": int(seed),
        "n_documents": int(len(flags)),
        "n_train_documents": int((~flags).sum()),
        "n_val_documents": int(flags.sum()),
        "key": key,
    }
    root.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_sibling(final, "tmp")
    tmp.mkdir()
    writers: dict[str, ShardWriter] = {}
    try:
        for part in ("train", "val"):
            writers[part] = ShardWriter(tmp / part, tokenizer, shard_tokens=shard_tokens, meta={**meta, "part": part})
        h = CorpusHasher()
        docs = iter_documents(spec, text_field=text_field)
        if show_progress:
            from tqdm import tqdm

            docs = tqdm(docs, total=len(flags), desc="tokenizing", unit="doc")
        grew = False
        for doc in docs:
            if h.n_documents >= len(flags):
                grew = True
                break
            writers["val" if flags[h.n_documents] else "train"].add(doc)
            h.update(doc)
        if grew or h.n_documents != len(flags) or h.hexdigest() != corpus_hash:
            raise DataError(f"corpus '{spec}' changed while it was being tokenized")
        for w in writers.values():
            w.close()
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1, sort_keys=True), encoding="utf-8")
        if _complete(final):  # a concurrent twin finished first: keep it
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            try:
                _replace_dir(tmp, final)
            except OSError:  # a twin renamed its copy into place between the check and the rename
                if not _complete(final):
                    raise
                shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        for w in writers.values():
            if not w._done:
                w.abort()
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final / "train", final / "val", meta
