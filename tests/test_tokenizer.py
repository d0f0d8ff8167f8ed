"""Tests for rnope.tokenizer: layout, lossless round trips, training, persistence, errors."""

from __future__ import annotations

import functools
import json
import os

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import models

from rnope.tokenizer import Tokenizer, check_vocab_fits

EDGE_CASES = [
    "",
    " ",
    "   \t\t  \n\n  ",
    "a  b   c    ",
    "  leading spaces",
    "trailing spaces   ",
    "héllo wörld",
    "emoji 👋🏽 family 👨‍👩‍👧 flags 🇫🇷",
    "\u0301",  # lone combining mark
    "e\u0301\u0301 combining",
    "\x00nul\x00",
    "a\r\nb\rc\n",
    "\ufeffbom",
    "<eos><pad><bos> literal specials",
    "中文字符 日本語 한국어",
    "\u200b zero width \u00a0 nbsp",
    "tab\tand\x0bvertical\x0cfeed",
    "ﬁ ligature (NFKC would change it) Å vs A\u030a",
]

SAMPLE_TEXT = (
    "The quick brown fox jumps over the lazy dog. " * 20
    + "def encode(self, text):\n    return self.tokenizer.encode(text)\n" * 10
    + "Unicode: héllo wörld, 中文, emoji 👋🏽, combining e\u0301.\r\n" * 10
    + "Numbers 1234567890 and punctuation !?;:()[]{}<> are here.\t\n" * 10
)


@functools.lru_cache(maxsize=1)
def small_bpe() -> Tokenizer:
    return Tokenizer.train_bpe([SAMPLE_TEXT[i : i + 300] for i in range(0, len(SAMPLE_TEXT), 300)], 400)


def test_byte_level_layout() -> None:
    tok = Tokenizer.byte_level()
    assert (tok.pad_id, tok.bos_id, tok.eos_id, tok.vocab_size) == (0, 1, 2, 259)
    data = bytes(range(256))
    assert tok.encode(data.decode("latin-1")) == [3 + b for b in data.decode("latin-1").encode("utf-8")]
    assert tok.encode("Az\n") == [3 + ord("A"), 3 + ord("z"), 3 + ord("\n")]
    assert tok.encode("€") == [3 + b for b in "€".encode()]
    assert Tokenizer.byte_level().to_json() == tok.to_json()


@pytest.mark.parametrize("text", EDGE_CASES)
@pytest.mark.parametrize("kind", ["byte_level", "bpe"])
def test_round_trip_edge_cases(kind: str, text: str) -> None:
    tok = Tokenizer.byte_level() if kind == "byte_level" else small_bpe()
    ids = tok.encode(text)
    assert all(i not in (tok.pad_id, tok.bos_id, tok.eos_id) for i in ids)
    assert tok.decode(ids) == text
    assert tok.encode_batch([text, text]) == [ids, ids]


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_round_trip_property_byte_level(text: str) -> None:
    tok = Tokenizer.byte_level()
    ids = tok.encode(text)
    assert len(ids) == len(text.encode("utf-8"))
    assert tok.decode(ids) == text


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=200) | st.sampled_from(EDGE_CASES))
def test_round_trip_property_bpe(text: str) -> None:
    tok = small_bpe()
    assert tok.decode(tok.encode(text)) == text


def test_trained_bpe() -> None:
    tok = small_bpe()
    assert (tok.pad_id, tok.bos_id, tok.eos_id) == (0, 1, 2)
    assert 259 < tok.vocab_size <= 400
    text = "The quick brown fox jumps over the lazy dog."
    assert len(tok.encode(text)) < len(text.encode()) / 2


def test_decode_skips_specials_and_accepts_tensors() -> None:
    tok = Tokenizer.byte_level()
    ids = tok.encode("hi")
    assert tok.decode([tok.bos_id, *ids, tok.eos_id, tok.pad_id]) == "hi"
    assert tok.decode(torch.tensor(ids)) == "hi"


@pytest.mark.parametrize("bad", [b"bytes", None, 3, ["a"]])
def test_encode_rejects_non_str(bad: object) -> None:
    tok = Tokenizer.byte_level()
    with pytest.raises(TypeError):
        tok.encode(bad)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        tok.encode_batch([bad])  # type: ignore[list-item]


def test_encode_lone_surrogate_is_value_error() -> None:
    with pytest.raises(ValueError, match="lone surrogate"):
        Tokenizer.byte_level().encode("a\ud800b")


def test_train_bpe_errors() -> None:
    with pytest.raises(ValueError) as e:
        Tokenizer.train_bpe(["some text"], 259)
    assert "vocab_size" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ValueError) as e:
        Tokenizer.train_bpe([], 400)
    assert "empty" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ValueError):
        Tokenizer.train_bpe(iter(()), 400)


@functools.lru_cache(maxsize=1)
def digit_bpe() -> Tokenizer:
    return Tokenizer.train_bpe([SAMPLE_TEXT[i : i + 300] for i in range(0, len(SAMPLE_TEXT), 300)], 480, digit_pairs=True)


def test_digit_pairs_vocabulary() -> None:
    """Every two-digit string is one token at ids 259-358, merged first; no other token holds a digit."""
    tok = digit_bpe()
    assert tok.vocab_size <= 480
    vocab = tok.hf.get_vocab()
    pairs = [f"{i:02d}" for i in range(100)]
    assert [vocab[p] for p in pairs] == list(range(259, 359))
    spec = json.loads(tok.to_json())
    assert [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in spec["model"]["merges"][:100]] == [
        (p[0], p[1]) for p in pairs]
    assert [t for t, i in vocab.items() if i >= 359 and any(c.isdigit() for c in t)] == []
    # the corpus holds "1234567890" ten times: without digit_pairs, BPE learns digit merges from it
    assert any(i >= 259 and any(c.isdigit() for c in t) for t, i in small_bpe().hf.get_vocab().items())


@pytest.mark.parametrize("number,pieces", [("8700466", ["87", "00", "46", "6"]), ("2401972", ["24", "01", "9", "72"]),
                                           ("1234", ["12", "34"]), ("7", ["7"])])
def test_digit_pairs_split_numbers_the_same_everywhere(number, pieces) -> None:
    tok = digit_bpe()
    for before in ("", " ", ": ", "\n", "is ", "x"):
        ids = tok.encode(before + number + ".")
        tail = [tok.decode([i]) for i in ids[len(ids) - len(pieces) - 1:]]
        assert tail == pieces + ["."], (before, tail)
        assert tok.decode(ids) == before + number + "."


def test_digit_pairs_errors() -> None:
    with pytest.raises(ValueError) as e:
        Tokenizer.train_bpe(["some text 123"], 359, digit_pairs=True)
    assert str(e.value) == ("train_bpe: vocab_size must be at least 360 (3 specials + 256 bytes + 100 digit pairs + 1 merge), "
                            "got 359")
    assert Tokenizer.train_bpe(["some text 123"], 360, digit_pairs=True).vocab_size <= 360


@pytest.mark.parametrize("kind", ["byte_level", "bpe"])
def test_save_load_round_trip(tmp_path, kind: str) -> None:
    tok = Tokenizer.byte_level() if kind == "byte_level" else small_bpe()
    path = tmp_path / "a" / "b" / "tokenizer.json"
    tok.save(path)
    assert sorted(os.listdir(path.parent)) == ["tokenizer.json"]  # no temp file left behind
    for src in (path, path.parent, str(path)):
        loaded = Tokenizer.load(src)
        assert loaded.to_json() == tok.to_json()
        assert loaded.content_hash == tok.content_hash
        assert (loaded.vocab_size, loaded.pad_id, loaded.bos_id, loaded.eos_id) == (
            tok.vocab_size, tok.pad_id, tok.bos_id, tok.eos_id)
        for text in EDGE_CASES:
            assert loaded.encode(text) == tok.encode(text)
            assert loaded.decode(loaded.encode(text)) == text
    tok.save(path)  # overwrite in place
    assert Tokenizer.load(path).to_json() == tok.to_json()


def test_load_missing_special(tmp_path) -> None:
    hf = HFTokenizer(models.BPE(vocab={"<pad>": 0, "<bos>": 1, "a": 2}, merges=[]))
    hf.add_special_tokens(["<pad>", "<bos>"])
    path = tmp_path / "tokenizer.json"
    hf.save(str(path))
    with pytest.raises(ValueError) as e:
        Tokenizer.load(path)
    assert str(e.value) == f"tokenizer {path} lacks special token '<eos>'"


def test_load_errors(tmp_path) -> None:
    with pytest.raises(FileNotFoundError):
        Tokenizer.load(tmp_path / "nope.json")
    bad = tmp_path / "tokenizer.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError) as e:
        Tokenizer.load(bad)
    assert str(e.value).startswith(f"tokenizer {bad} is not a valid tokenizer.json")


def test_to_json_is_tokenizer_json() -> None:
    spec = json.loads(Tokenizer.byte_level().to_json())
    assert spec["normalizer"] is None
    assert spec["pre_tokenizer"]["add_prefix_space"] is False
    assert {t["content"] for t in spec["added_tokens"]} == {"<pad>", "<bos>", "<eos>"}


def test_check_vocab_fits_allows_fewer_tokens_and_refuses_more():
    tok = Tokenizer.byte_level()
    check_vocab_fits(tok, 259)
    check_vocab_fits(tok, 320)  # a padded embedding
    with pytest.raises(ValueError, match=r"^tokenizer has 259 tokens but the model's vocab_size is 258 "
                                         r"\(a tokenizer may have fewer tokens than vocab_size, never more\)$"):
        check_vocab_fits(tok, 258)
    with pytest.raises(ValueError, match=r"^ck/tokenizer.json: tokenizer has 259 tokens but the model's vocab_size is 64 "):
        check_vocab_fits(tok, 64, "ck/tokenizer.json")
