"""Tests for rnope.data: built-in corpus, sources, shards, packing, cache, error messages."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from rnope.data import (
    DataError,
    PackedDataset,
    TokenShards,
    builtin_documents,
    corpus_hash,
    load_documents,
    prepare_dataset,
    split_documents,
    stable_permutation,
    write_shards,
)
from rnope.data import corpus as corpus_mod
from rnope.tokenizer import Tokenizer

TOK = Tokenizer.byte_level()


def stream(docs: list[str], tok: Tokenizer = TOK) -> list[int]:
    out: list[int] = []
    for d in docs:
        out += tok.encode(d) + [tok.eos_id]
    return out


def shard_tokens(path: Path) -> list[int]:
    ts = TokenShards(path)
    return ts.get(0, len(ts)).tolist()


# ----------------------------------------------------------------------------- built-in corpus
@pytest.fixture(scope="module")
def prose() -> list[str]:
    return builtin_documents("prose")


def test_builtin_prose_nonempty_and_deterministic(prose: list[str]) -> None:
    assert sum(map(len, prose)) > 500_000
    assert all(isinstance(d, str) and d.strip() for d in prose)
    assert builtin_documents("prose") == prose
    corpus_mod._builtin.cache_clear()  # recompute from the files, not the in-memory memo
    fresh = builtin_documents("prose")
    assert fresh == prose and fresh is not prose
    assert corpus_hash(fresh) == corpus_hash(prose)
    assert len(corpus_hash(prose)) == 64


def test_builtin_prose_content(prose: list[str]) -> None:
    from pydoc_data.topics import topics

    assert all(len(d) >= corpus_mod.MIN_DOCSTRING_CHARS for d in prose[: -len(topics)])
    assert prose[-1] == __import__("inspect").cleandoc(topics[sorted(topics)[-1]])
    assert len(set(prose)) == len(prose)


def test_builtin_code() -> None:
    code = builtin_documents("code")
    assert len(code) > 100 and sum(map(len, code)) > 1_000_000
    assert any("def " in d for d in code[:20])
    assert load_documents("builtin:code")[:3] == code[:3]
    with pytest.raises(ValueError):
        builtin_documents("poetry")


def test_corpus_hash_order_sensitive() -> None:
    assert corpus_hash(["a", "b"]) != corpus_hash(["b", "a"])
    assert corpus_hash(["ab"]) != corpus_hash(["a", "b"])
    assert corpus_hash(["a", "b"]) == corpus_hash(iter(["a", "b"]))


def test_split_deterministic_and_disjoint(prose: list[str]) -> None:
    train, val = split_documents(prose, 0.02, seed=0)
    assert (train, val) == split_documents(list(prose), 0.02, seed=0)
    assert len(train) + len(val) == len(prose)
    assert not set(train) & set(val)
    assert 0.005 < len(val) / len(prose) < 0.05
    assert split_documents(prose, 0.02, seed=1)[1] != val
    # small corpora still get one validation document; val_fraction 0 gives none
    docs = [f"doc {i}" for i in range(5)]
    assert len(split_documents(docs, 0.02)[1]) == 1
    assert split_documents(docs, 0.0) == (docs, [])
    with pytest.raises(ValueError):
        split_documents(docs, 1.0)


# ----------------------------------------------------------------------------- sources
def write_jsonl(path: Path, rows: list[object]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def test_builtin_specs(prose: list[str]) -> None:
    assert load_documents("builtin") == prose
    assert load_documents("builtin:prose") == prose
    with pytest.raises(DataError) as e:
        load_documents("builtin:poetry")
    assert str(e.value) == "unknown builtin corpus 'poetry' (expected one of: prose, code)"


def test_txt_md_and_folder(tmp_path: Path) -> None:
    a = tmp_path / "a.txt"
    a.write_bytes("\ufeffhello\r\nworld  \n".encode())
    assert load_documents(a) == ["hello\r\nworld  \n"]
    root = tmp_path / "corpus"
    (root / "sub").mkdir(parents=True)
    (root / "b.md").write_text("# B", encoding="utf-8")
    (root / "a.txt").write_text("A", encoding="utf-8")
    (root / "sub" / "c.jsonl").write_text('{"text": "C1"}\n\n{"text": "C2"}\n', encoding="utf-8")
    (root / "sub" / "blank.txt").write_text("  \n", encoding="utf-8")
    (root / "skip.csv").write_text("x", encoding="utf-8")
    (root / ".hidden.txt").write_text("hidden", encoding="utf-8")
    docs = load_documents(str(root))
    assert docs == ["A", "# B", "C1", "C2"]
    info = write_shards(docs, TOK, tmp_path / "shards")
    assert shard_tokens(info.path) == stream(docs)
    assert info.n_documents == 4 and info.total_tokens == len(stream(docs))


def test_jsonl_and_custom_field(tmp_path: Path) -> None:
    p = tmp_path / "x.jsonl"
    write_jsonl(p, [{"text": "one", "body": "uno"}, {"text": "two 👋", "body": "dos"}, {"text": None, "body": "tres"}])
    assert load_documents(p) == ["one", "two 👋"]
    assert load_documents(p, text_field="body") == ["uno", "dos", "tres"]
    bpe = Tokenizer.train_bpe(["one two three uno dos tres " * 50], 300)
    info = write_shards(load_documents(p, text_field="body"), bpe, tmp_path / "s")
    assert shard_tokens(info.path) == stream(["uno", "dos", "tres"], bpe)


def test_parquet(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    p = tmp_path / "x.parquet"
    pq.write_table(pa.table({"text": ["alpha", None, "beta ß"], "content": ["a", "b", "c"]}), p)
    assert load_documents(p) == ["alpha", "beta ß"]
    assert load_documents(p, text_field="content") == ["a", "b", "c"]
    assert shard_tokens(write_shards(load_documents(p), TOK, tmp_path / "s").path) == stream(["alpha", "beta ß"])
    with pytest.raises(DataError) as e:
        load_documents(p, text_field="body")
    assert str(e.value) == f"{p}: no column 'body'"


def test_parquet_without_pyarrow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = tmp_path / "x.parquet"
    p.write_bytes(b"PAR1")
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(DataError) as e:
        load_documents(p)
    assert str(e.value) == "reading parquet needs pyarrow: pip install 'rnope[data]'"


def test_hf_dataset(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    pa = pytest.importorskip("pyarrow")
    from datasets.table import InMemoryTable

    def make(texts: list[str], split: str | None = None) -> object:
        # an explicit fingerprint skips datasets' dill hashing (broken for some pyarrow versions)
        return datasets.Dataset(InMemoryTable(pa.table({"text": texts})), split=split, fingerprint=f"f{len(texts)}")

    datasets.DatasetDict({"train": make(["t1", "t2"]), "validation": make(["v1"])}).save_to_disk(str(tmp_path / "ds"))
    assert load_documents(f"hf:{tmp_path / 'ds'}") == ["t1", "t2"]
    assert load_documents(f"hf:{tmp_path / 'ds'}:validation") == ["v1"]
    with pytest.raises(DataError, match="has no split 'test'"):
        load_documents(f"hf:{tmp_path / 'ds'}:test")
    make(["s1", " ", "s2"], split="train").save_to_disk(str(tmp_path / "single"))
    assert load_documents(f"hf:{tmp_path / 'single'}") == ["s1", "s2"]
    assert load_documents(f"hf:{tmp_path / 'single'}:train") == ["s1", "s2"]
    with pytest.raises(DataError) as e:
        load_documents(f"hf:{tmp_path / 'nope'}")
    assert str(e.value) == f"data path '{tmp_path / 'nope'}' does not exist"


def test_hf_without_datasets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(DataError) as e:
        load_documents("hf:some/dir")
    assert str(e.value) == "reading hf: datasets needs the 'datasets' package: pip install datasets"


def test_error_messages(tmp_path: Path) -> None:
    def err(spec: object, **kw: str) -> str:
        with pytest.raises(DataError) as e:
            load_documents(spec, **kw)  # type: ignore[arg-type]
        assert isinstance(e.value, ValueError) and "\n" not in str(e.value)
        return str(e.value)

    assert err("x/y") == "data path 'x/y' does not exist"
    j = tmp_path / "x.jsonl"
    write_jsonl(j, [{"text": "ok"}] * 6 + [{"body": "no text"}])
    assert err(j) == f"{j} line 7: no field 'text'"
    j.write_text('{"text": "a"}\n{"text": "b"}\n{"text": \n', encoding="utf-8")
    assert err(j) == f"{j} line 3: not valid JSON"
    a = tmp_path / "a.txt"
    a.write_bytes(b"hello world!\xffrest")
    assert err(a) == f"file '{a}' is not valid UTF-8 (byte 0xff at offset 12)"
    j.write_bytes(b'{"text": "a"}\n{"text": "\xfe"}\n')
    assert err(j) == f"file '{j}' is not valid UTF-8 (byte 0xfe at offset 24)"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert err(empty) == f"corpus '{empty}' has no documents"
    (empty / "blank.txt").write_text(" \n\n", encoding="utf-8")
    assert err(empty) == f"corpus '{empty}' has no documents"
    csv = tmp_path / "x.csv"
    csv.write_text("a,b", encoding="utf-8")
    assert err(csv).startswith(f"data path '{csv}' has unsupported type '.csv'")
    j.write_text('{"text": 5}\n', encoding="utf-8")
    assert err(j) == f"{j} line 1: field 'text' is not a string"


# ----------------------------------------------------------------------------- shards
DOCS = ["hello world", "", "second document ✓", "x" * 50, "end"]


def test_shards_layout_and_boundaries(tmp_path: Path) -> None:
    expected = stream(DOCS)
    info = write_shards(DOCS, TOK, tmp_path / "s", shard_tokens=7, meta={"corpus_hash": "abc"})
    assert info.shard_tokens == [7] * (len(expected) // 7) + ([len(expected) % 7] if len(expected) % 7 else [])
    assert sorted(os.listdir(info.path))[:2] == ["index.json", "shard_00000.bin"]
    assert [p for p in os.listdir(tmp_path) if p != "s"] == []  # no temp dirs left
    index = json.loads((info.path / "index.json").read_text())
    assert index["dtype"] == "uint16" and index["total_tokens"] == len(expected)
    assert index["n_documents"] == len(DOCS) and index["meta"] == {"corpus_hash": "abc"}
    assert index["tokenizer_hash"] == TOK.content_hash
    ts = TokenShards(info.path)
    assert isinstance(ts.shards[0], np.memmap) and ts.shards[0].dtype == np.uint16
    assert isinstance(ts.get(1, 3), np.memmap)  # within one shard: a view, nothing loaded
    assert len(ts) == len(expected)
    for start in range(len(expected)):
        for length in (0, 1, 5, 7, 16):
            if start + length <= len(expected):
                assert ts.get(start, length).tolist() == expected[start : start + length]
    with pytest.raises(IndexError):
        ts.get(len(expected) - 2, 3)


def test_shards_uint32_for_large_vocab(tmp_path: Path) -> None:
    class Big:  # minimal tokenizer stand-in with a > 65535 vocabulary
        vocab_size, eos_id, content_hash = 70_000, 69_999, "big"

        def encode_batch(self, texts: list[str]) -> list[list[int]]:
            return [[65_536 + len(t)] for t in texts]

    info = write_shards(["ab", "c"], Big(), tmp_path / "s")  # type: ignore[arg-type]
    assert info.dtype == "uint32"
    assert shard_tokens(info.path) == [65_538, 69_999, 65_537, 69_999]


def test_shards_atomic_on_failure(tmp_path: Path) -> None:
    write_shards(["old"], TOK, tmp_path / "s")

    def boom():
        yield "fine"
        raise RuntimeError("crash mid-corpus")

    with pytest.raises(RuntimeError):
        write_shards(boom(), TOK, tmp_path / "s", shard_tokens=2)
    assert os.listdir(tmp_path) == ["s"] and shard_tokens(tmp_path / "s") == stream(["old"])
    with pytest.raises(RuntimeError):
        write_shards(boom(), TOK, tmp_path / "t")
    assert os.listdir(tmp_path) == ["s"]
    write_shards(["new"], TOK, tmp_path / "s")  # replacing an existing dataset
    assert shard_tokens(tmp_path / "s") == stream(["new"]) and os.listdir(tmp_path) == ["s"]


# ----------------------------------------------------------------------------- packing
def test_stable_permutation() -> None:
    p = stable_permutation(1000, 3)
    assert sorted(p.tolist()) == list(range(1000))
    assert p.tolist() == stable_permutation(1000, 3).tolist()
    assert p.tolist() != stable_permutation(1000, 4).tolist()
    assert stable_permutation(5, 0).tolist() == stable_permutation(5, 0).tolist()


def test_packing_exact_slices_and_resume(tmp_path: Path) -> None:
    docs = [f"document number {i} " * (i % 3 + 1) for i in range(20)]
    toks = stream(docs)
    path = write_shards(docs, TOK, tmp_path / "s", shard_tokens=37).path
    L = 16
    plain = PackedDataset(path, L, seed=0, shuffle=False)
    assert len(plain) == (len(toks) - 1) // L
    for i in range(len(plain)):
        x, y = plain[i]
        assert x.dtype == torch.long and x.shape == (L,) and y.shape == (L,)
        assert x.tolist() == toks[i * L : i * L + L] and y.tolist() == toks[i * L + 1 : i * L + L + 1]
    ds = PackedDataset(TokenShards(path), L, seed=7)
    perm = stable_permutation(len(ds), 7).tolist()
    assert sorted(perm) == list(range(len(ds))) and perm != list(range(len(ds)))
    for i in range(len(ds)):
        assert ds[i][0].tolist() == toks[perm[i] * L : perm[i] * L + L]
    with pytest.raises(IndexError):
        ds[len(ds)]
    full = list(ds.batches(3))
    assert sum(len(x) for x, _ in full) == len(ds)
    assert torch.equal(full[0][0][1], ds[1][0]) and torch.equal(full[0][1][2], ds[2][1])
    resumed = list(ds.batches(3, start_sample=6))
    assert len(resumed) == len(full) - 2
    for (x1, y1), (x2, y2) in zip(full[2:], resumed, strict=True):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert all(len(x) == 3 for x, _ in ds.batches(3, drop_last=True))
    assert list(PackedDataset(path, L, seed=7).batches(4))[1][0].tolist() == list(ds.batches(4))[1][0].tolist()


def test_packing_too_short(tmp_path: Path) -> None:
    path = write_shards(["ab"], TOK, tmp_path / "s").path  # 3 tokens
    assert len(PackedDataset(path, 2, seed=0)) == 1
    with pytest.raises(DataError, match="too few"):
        PackedDataset(path, 3, seed=0)


# ----------------------------------------------------------------------------- cache
def test_prepare_dataset_loses_a_rename_race_to_a_twin_gracefully(tmp_path: Path, monkeypatch) -> None:
    """Two trainings tokenizing the same corpus at once (rnope reproduce --jobs 2): the twin renames
    its copy into place between our completeness check and our rename; ours is dropped, no error."""
    import shutil

    from rnope.data import prepare as prep

    src = tmp_path / "src"
    src.mkdir()
    for i in range(10):
        (src / f"{i}.txt").write_text(f"doc {i} has words", encoding="utf-8")
    cache = tmp_path / "cache"
    real = prep._replace_dir

    def twin_first(tmp: Path, final: Path) -> None:
        shutil.copytree(tmp, final)  # the twin finished first ...
        os.rename(tmp, final)  # ... so our rename hits a non-empty directory

    monkeypatch.setattr(prep, "_replace_dir", twin_first)
    train_dir, _, meta = prepare_dataset(str(src), TOK, cache, val_fraction=0.2)
    assert os.listdir(cache) == [meta["key"]]  # our temporary copy is gone, the twin's is kept
    assert shard_tokens(train_dir) == stream(split_documents([f"doc {i} has words" for i in range(10)], 0.2)[0])

    def broken(tmp: Path, final: Path) -> None:  # a real failure (no twin) still raises
        raise OSError("disk full")

    monkeypatch.setattr(prep, "_replace_dir", broken)
    with pytest.raises(OSError, match="disk full"):
        prepare_dataset(str(src), TOK, tmp_path / "cache2", val_fraction=0.2)
    assert os.listdir(tmp_path / "cache2") == []
    monkeypatch.setattr(prep, "_replace_dir", real)


def test_prepare_dataset_cache(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    docs = [f"text file {i} with some words" for i in range(30)]
    for i, d in enumerate(docs):
        (src / f"{i:02d}.txt").write_text(d, encoding="utf-8")
    cache = tmp_path / "cache"
    train_dir, val_dir, meta = prepare_dataset(str(src), TOK, cache, val_fraction=0.2, seed=1)
    train, val = split_documents(docs, 0.2, seed=1)
    assert shard_tokens(train_dir) == stream(train) and shard_tokens(val_dir) == stream(val)
    assert meta["corpus_hash"] == corpus_hash(docs) and meta["tokenizer_hash"] == TOK.content_hash
    assert (meta["n_train_documents"], meta["n_val_documents"]) == (len(train), len(val))
    assert TokenShards(train_dir).meta["corpus_hash"] == meta["corpus_hash"]
    assert train_dir.parent.name == meta["key"] and os.listdir(cache) == [meta["key"]]
    stamp = (train_dir / "index.json").stat().st_mtime_ns
    again = prepare_dataset(str(src), TOK, cache, val_fraction=0.2, seed=1)
    assert again == (train_dir, val_dir, meta)
    assert (train_dir / "index.json").stat().st_mtime_ns == stamp  # reused, not rewritten
    other = prepare_dataset(str(src), TOK, cache, val_fraction=0.2, seed=2)
    assert other[2]["key"] != meta["key"] and len(os.listdir(cache)) == 2
    (src / "99.txt").write_text("new doc", encoding="utf-8")
    assert prepare_dataset(str(src), TOK, cache, val_fraction=0.2, seed=1)[2]["key"] != meta["key"]
