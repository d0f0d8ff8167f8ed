"""RULER eval prompts against RULER's template text, the cwe vocabulary, and train items pinned byte for byte."""

from __future__ import annotations

import hashlib
import re
from collections import Counter

import pytest

from rnope.tasks import niah as niah_mod
from rnope.tasks import ruler as ruler_mod
from rnope.tasks.haystack import TRAIN_ADJECTIVES, TRAIN_NOUNS, cwe_words
from rnope.tasks.synthetic import synthetic_documents

from ..conftest import TRAIN_ESSAY, byte_encode, make, wp_encode
from .test_tasks import TRAIN_FRAGS, _fragments

# ---------------------------------------------------------------- eval prompts follow RULER's template text
BLOCK = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
VT_INTRO = "Memorize and track the chain(s) of variable assignment hidden in the following text."
CWE_INTRO = ("Below is a numbered list of words. In these words, some appear more often than others. "
             "Memorize the ones that appear most often.")
CWE_QA = ("Question: What are the 10 most common words in the above list? "
          "Answer: The top 10 words that appear most often in the list are:")


def _vt_qa(value: str) -> str:
    return (f"Question: Find all variables that are assigned the value {value} in the text above. Answer: According "
            f"to the chain(s) of variable assignment in the text above, 5 variables are assigned the value {value}, "
            "they are:")


def _noise_lines(ctx: str, needles: list[str]) -> list[str]:
    """The context's lines, checked to be whole noise blocks or needles, one per line."""
    lines = ctx.split("\n")
    assert [ln for ln in lines if ln != BLOCK] == needles
    return lines


@pytest.mark.parametrize("task, one", [("niah_single_1", True), ("niah_single_3", True), ("niah_multikey_2", True),
                                       ("niah_multivalue", False), ("niah_multiquery", False)])
def test_niah_eval_prompt_golden(task: str, one: bool) -> None:
    it = make(task, 4, 700, 30)
    kind = {"numbers": "number", "uuids": "uuid"}[it.meta["value_type"]]
    keys = it.meta["query_keys"]
    q = keys[0] if len(keys) == 1 else ", ".join(keys[:-1]) + ", and " + keys[-1]
    if one:  # RULER: Some -> A, are all / are -> is, value type singular
        intro = (f"A special magic {kind} is hidden within the following text. Make sure to memorize it. "
                 f"I will quiz you about the {kind} afterwards.")
        tail = (f"What is the special magic {kind} for {q} mentioned in the provided text? "
                f"The special magic {kind} for {q} mentioned in the provided text is")
    else:
        intro = (f"Some special magic {kind}s are hidden within the following text. Make sure to memorize it. "
                 f"I will quiz you about the {kind}s afterwards.")
        tail = (f"What are all the special magic {kind}s for {q} mentioned in the provided text? "
                f"The special magic {kind}s for {q} mentioned in the provided text are")
    ctx = it.prompt[slice(*it.meta["context_span"])]
    assert it.prompt == intro + "\n" + ctx + "\n" + tail
    for needle, k, v in zip(it.needles, it.meta["keys"], it.meta["values"]):
        assert needle == f"One of the special magic {kind}s for {k} is: {v}."  # needles stay plural
    if task == "niah_single_1":  # noise: blocks and the needle each on a line of their own
        _noise_lines(ctx, it.needles)
    if task == "niah_multikey_2":
        assert all(re.fullmatch(r"One of the special magic numbers for [a-z]+-[a-z]+(-[a-z]+)? is: \d{7}\.", ln)
                   for ln in ctx.split("\n"))


@pytest.mark.parametrize("length", [700, 4096])
def test_vt_eval_prompt_golden(length: int) -> None:
    it = make("vt", 2, length, 20)
    assert it.meta["example"] is True
    example, main = it.prompt.split("\n\n" + VT_INTRO + "\n\n")
    # the solved example: its own chain of 3-letter variables, one assignment per line, then the answer
    assert example.startswith(VT_INTRO + "\n\n")
    ex_lines = example[len(VT_INTRO) + 2:].split("\n")
    chain = [ln for ln in ex_lines[:-1] if ln != BLOCK]
    m = re.fullmatch(r"VAR ([A-Z]{3}) = (\d{5})", chain[0])
    assert m and len(chain) == 5
    names, ex_value = [m.group(1)], m.group(2)
    for ln in chain[1:]:
        m = re.fullmatch(r"VAR ([A-Z]{3}) = VAR ([A-Z]{3})", ln)
        assert m and m.group(2) == names[-1]
        names.append(m.group(1))
    assert ex_lines[-1] == _vt_qa(ex_value) + " " + " ".join(names)
    if length >= 4096:  # RULER's example is about 500 tokens of its own noise
        assert BLOCK in ex_lines and 300 <= len(wp_encode(example)) <= 500
    # the item: blocks and assignments on lines of their own, no periods, the answer prefix last
    ctx = it.prompt[slice(*it.meta["context_span"])]
    value = it.meta["value"]
    want = [f"VAR {it.answers[0]} = {value}"] + [f"VAR {b} = VAR {a}" for a, b in zip(it.answers, it.answers[1:])]
    _noise_lines(ctx, want)
    assert main == ctx + "\n" + _vt_qa(value) and it.needles == want and ex_value != value


@pytest.mark.parametrize("length, n_ex, fc, fu", [(700, 20, 3, 1), (4096, 40, 10, 3)])
def test_cwe_eval_prompt_golden(length: int, n_ex: int, fc: int, fu: int) -> None:
    it = make("cwe", 5, length, None)
    assert it.meta["example"] is True
    example, main = it.prompt.split("\n" + CWE_INTRO + "\n")
    m = re.fullmatch(re.escape(CWE_INTRO) + r"\n(.*)\n" + re.escape(CWE_QA) + r" (.*)", example)
    assert m
    entries = re.findall(r"(\d+)\. (\S+)", m.group(1))
    assert [int(i) for i, _ in entries] == list(range(1, len(entries) + 1))
    counts = Counter(w for _, w in entries)
    answer = re.findall(r"(\d+)\. (\S+)", m.group(2))
    assert [int(i) for i, _ in answer] == list(range(1, 11))
    common = [w for _, w in answer]
    assert m.group(2) == " ".join(f"{i + 1}. {w}" for i, w in enumerate(common))
    assert len(counts) == n_ex and all(counts[w] == fc for w in common)
    assert sorted(counts.values()) == sorted([fc] * 10 + [fu] * (n_ex - 10))
    # the item itself: numbered real words, then RULER's question and answer prefix
    ctx = it.prompt[slice(*it.meta["context_span"])]
    assert main == ctx + "\n" + CWE_QA
    words = set(re.findall(r"\d+\. (\S+)", ctx))
    vocab = set(cwe_words())
    assert words <= vocab and set(counts) <= vocab and not words & set(counts)  # example words are its own
    assert set(it.answers) <= words


def test_fwe_eval_prompt_golden() -> None:
    it = make("fwe", 1, 700, None)
    cs, ce = it.meta["context_span"]
    assert it.prompt[:cs] == ("Read the following coded text and track the frequency of each coded word. "
                              "Find the three most frequently appeared coded words. ")  # same line, as RULER
    assert all(re.fullmatch(r"\.\.\.|[a-z]{6}", w) for w in it.prompt[cs:ce].split(" "))
    assert it.prompt[ce:] == ("\nQuestion: Do not provide any explanation. Please ignore the dots '....'. What are "
                              "the three most frequently appeared words in the above coded text? Answer: According "
                              "to the coded text above, the three most frequently appeared words are:")


def test_example_left_out_only_when_it_cannot_fit() -> None:
    for task in ("vt", "cwe"):
        assert make(task, 0, 1024, None).meta["example"] is True
    small = make("cwe", 0, 256, None)  # the 40-entry example does not fit in 256 tokens
    assert small.meta["example"] is False and small.prompt.startswith(CWE_INTRO + "\n1. ")
    assert "example" not in make("vt", 0, 1024, None, "train").meta


def test_cwe_vocabulary_real_words_disjoint_from_train() -> None:
    vocab = cwe_words()
    assert len(vocab) >= 4000 and len(set(vocab)) == len(vocab)
    assert all(re.fullmatch(r"[a-z]{3,10}", w) for w in vocab)
    s = set(vocab)
    assert not [w for w in vocab if any(w[i:j] in s for i in range(len(w)) for j in range(i + 3, len(w) + 1)
                                        if (i, j) != (0, len(w)))]  # no word inside another
    assert not s & set(TRAIN_ADJECTIVES + TRAIN_NOUNS)
    train_text = " ".join(_fragments([*niah_mod.TRAIN_NIAH, *ruler_mod.TRAIN_VT, *ruler_mod.TRAIN_CWE,
                                      *ruler_mod.TRAIN_FWE, *niah_mod.TRAIN_PASSKEY]) | TRAIN_FRAGS)
    assert not s & set(re.findall(r"[a-z]+", train_text.lower()))
    for seed in range(20):  # train cwe lists (real and pseudo-words) never use an eval word
        tr = make("cwe", seed, 2048, None, "train")
        assert not set(re.findall(r"\d+\. (\S+)", tr.prompt)) & s


def test_cwe_vocabulary_exhausted_is_one_line(monkeypatch) -> None:
    monkeypatch.setattr(ruler_mod, "cwe_words", lambda: cwe_words()[:80])
    with pytest.raises(ValueError) as e:
        make("cwe", 0, 4096, None)
    assert str(e.value) == "length 4096 is too long for task 'cwe': its vocabulary of 80 words runs out"


# ---------------------------------------------------------------- train items are pinned
# Training runs consume split="train" items: any change to them changes running experiments' data.
# Digest of 30 items (prompt, answers, spans, budget, meta) per task and length, recorded before the
# eval-only RULER fidelity changes; they must never move.
TRAIN_FINGERPRINTS: dict[tuple[str, int, str], str] = {
    ("passkey", 300, "wp"): "39b4942daafc46f9",
    ("niah_single_1", 300, "wp"): "8ec6dd8f6624ce8a",
    ("niah_single_2", 300, "wp"): "67fbcbc6bc6fbdf3",
    ("niah_single_3", 300, "wp"): "da2d36f697fbb6a7",
    ("niah_multikey_1", 300, "wp"): "f39c93f0d3d66f3b",
    ("niah_multikey_2", 300, "wp"): "d6f5281ebaf22696",
    ("niah_multikey_3", 300, "wp"): "a83928d9496ae853",
    ("niah_multivalue", 300, "wp"): "0ebbfb380636bd4c",
    ("niah_multiquery", 300, "wp"): "34c60a574593a7fa",
    ("vt", 300, "wp"): "bfec3aaac8ee8c2c",
    ("cwe", 300, "wp"): "1c103748c49aa9c7",
    ("fwe", 300, "wp"): "c01734fa8eb8197f",
    ("passkey", 1024, "wp"): "0796dce8f6356975",
    ("niah_single_1", 1024, "wp"): "4ad9adc0742426c3",
    ("niah_single_2", 1024, "wp"): "ab72ba0a974e76a0",
    ("niah_single_3", 1024, "wp"): "17a74d80f53e7af2",
    ("niah_multikey_1", 1024, "wp"): "df91420bc4b6a058",
    ("niah_multikey_2", 1024, "wp"): "2cf3650348b1bda1",
    ("niah_multikey_3", 1024, "wp"): "df710e501573a65e",
    ("niah_multivalue", 1024, "wp"): "e2b95bc402539e0f",
    ("niah_multiquery", 1024, "wp"): "48b7315655c2b141",
    ("vt", 1024, "wp"): "c5459eed7203ce28",
    ("cwe", 1024, "wp"): "98707a0556ef73df",
    ("fwe", 1024, "wp"): "76ce0421b596af1a",
    ("passkey", 4096, "wp"): "b346b201bf3cac5f",
    ("niah_single_1", 4096, "wp"): "64acaa018b7841d3",
    ("niah_single_2", 4096, "wp"): "c4ad55def1c9b937",
    ("niah_single_3", 4096, "wp"): "73977376903bb4d0",
    ("niah_multikey_1", 4096, "wp"): "2d145b6e01050084",
    ("niah_multikey_2", 4096, "wp"): "f401632a24fb0308",
    ("niah_multikey_3", 4096, "wp"): "7b3811a5ff94f539",
    ("niah_multivalue", 4096, "wp"): "b7ecedbfa13ee399",
    ("niah_multiquery", 4096, "wp"): "62936bb8eb36fe6f",
    ("vt", 4096, "wp"): "39b8e7b82ae16581",
    ("cwe", 4096, "wp"): "e45a194a11494d99",
    ("fwe", 4096, "wp"): "bd1ce1d15b7872d4",
    ("passkey", 2048, "byte"): "f2be3f94ee175cb1",
    ("niah_single_1", 2048, "byte"): "3a7aa90ad7f931ff",
    ("niah_single_2", 2048, "byte"): "0f0ac40505636f2a",
    ("niah_single_3", 2048, "byte"): "c5a0555ef563aaaf",
    ("niah_multikey_1", 2048, "byte"): "f7a97113b241ce66",
    ("niah_multikey_2", 2048, "byte"): "93314d2b1294ee74",
    ("niah_multikey_3", 2048, "byte"): "264f0e92a559c1a8",
    ("niah_multivalue", 2048, "byte"): "bd075f7d1b16a5d4",
    ("niah_multiquery", 2048, "byte"): "9f96a63a8d9b64d8",
    ("vt", 2048, "byte"): "1212c06e901bac68",
    ("cwe", 2048, "byte"): "3ba7c11421dfaa42",
    ("fwe", 2048, "byte"): "59419a1e75b6494d",
}
TRAIN_DOCS_FINGERPRINT = "f7887cf11a5ff260"  # synthetic_documents(0, 30, lengths=[256, 512, 1024])


def _fingerprint(task: str, length: int, split: str, encode) -> str:
    h = hashlib.sha256()
    for i in range(30):
        depth = None if i % 3 == 0 else (i * 37) % 101
        it = make(task, i, length, depth, split, encode=encode)
        h.update(repr((it.prompt, it.answers, it.needle_spans, it.query_span, it.gen_tokens, it.depth,
                       sorted(it.meta.items()))).encode())
    return h.hexdigest()[:16]


@pytest.mark.parametrize("task, length, enc", list(TRAIN_FINGERPRINTS))
def test_train_items_unchanged(task: str, length: int, enc: str) -> None:
    encode = wp_encode if enc == "wp" else byte_encode
    assert _fingerprint(task, length, "train", encode) == TRAIN_FINGERPRINTS[(task, length, enc)]


def test_train_documents_unchanged() -> None:
    docs = list(synthetic_documents(0, 30, encode=wp_encode, lengths=[256, 512, 1024], essay=TRAIN_ESSAY))
    assert hashlib.sha256("\x00".join(docs).encode()).hexdigest()[:16] == TRAIN_DOCS_FINGERPRINT
