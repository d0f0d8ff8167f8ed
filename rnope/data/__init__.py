"""Data: built-in corpus, user document sources, token shards, packing and the tokenize-once cache.

Typical use::

    from rnope.data import prepare_dataset, PackedDataset
    train_dir, val_dir, meta = prepare_dataset("builtin", tokenizer, "cache/")
    ds = PackedDataset(train_dir, seq_len=256, seed=0)
    for x, y in ds.batches(batch_size=16, start_sample=resume_sample):
        ...
"""

from .corpus import (
    BUILTIN_KINDS,
    CorpusHasher,
    builtin_documents,
    corpus_hash,
    doc_unit,
    split_documents,
    split_flags,
    stdlib_dir,
)
from .prepare import cache_key, prepare_dataset
from .shards import (
    PackedDataset,
    ShardInfo,
    ShardWriter,
    TokenShards,
    stable_permutation,
    token_dtype,
    write_shards,
)
from .sources import DataError, iter_documents, load_documents

__all__ = [
    "BUILTIN_KINDS",
    "CorpusHasher",
    "DataError",
    "PackedDataset",
    "ShardInfo",
    "ShardWriter",
    "TokenShards",
    "builtin_documents",
    "cache_key",
    "corpus_hash",
    "doc_unit",
    "iter_documents",
    "load_documents",
    "prepare_dataset",
    "split_documents",
    "split_flags",
    "stable_permutation",
    "stdlib_dir",
    "token_dtype",
    "write_shards",
]
