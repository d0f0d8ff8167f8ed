"""Tests for rnope.tasks: synthetic long-context generators, length fitting, scoring, MQAR (CPU, fast)."""

from __future__ import annotations

import hashlib
import math
import random
import re
import string
import time
from collections import Counter

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rnope.tasks import RULER_TASKS, TASKS, copy_task, get_task, mqar, mqar_batch, score_item
from rnope.tasks import niah as niah_mod
from rnope.tasks import ruler as ruler_mod
from rnope.tasks.common import Item, fit_haystack, owned_by
from rnope.tasks.haystack import (
    EVAL_ADJECTIVES,
    EVAL_NOUNS,
    NOISE_EVAL,
    NOISE_TRAIN,
    TRAIN_ADJECTIVES,
    TRAIN_NOUNS,
    cwe_words,
    split_sentences,
)
from rnope.tasks.scoring import exact_value, metric_name, string_match_all, string_match_part
from rnope.tasks.train_mix import synthetic_documents, synthetic_items

_TOK = re.compile(r"\w+|[^\w\s]+")


def wp_encode(s: str) -> list[int]:
    """Word/punctuation tokenizer: a cheap stand-in for BPE (about one token per word)."""
    return [len(t) for t in _TOK.findall(s)]


def byte_encode(s: str) -> list[int]:
    return list(s.encode())


EVAL_ESSAY = [
    "Lighthouses were once tended by keepers who lived at the foot of the tower. Every evening the keeper climbed "
    "the stairs to light the lamp. On stormy nights the work went on until dawn. Fog was the hardest enemy, because "
    "no light could pierce it. Horns and bells were added so that ships could hear the coast when they could not see "
    "it. Later, electric lamps and clockwork made the keeper less needed.",
    "Today most towers run on their own and are checked only a few times a year. Some have become museums where "
    "visitors climb the same worn steps. Sailors still read their charts with care near rocky shores. A single light "
    "can mean the difference between a safe return and a wreck. The lens of a tower focuses the beam into a narrow "
    "ray. Each tower flashes in its own rhythm so that sailors can tell them apart.",
]
TRAIN_ESSAY = [
    "Bread begins with flour, water, salt and yeast. The baker mixes them and lets the dough rest so the gluten can "
    "form. After a long rise the dough is shaped into loaves. A hot oven sets the crust within minutes, and the "
    "kitchen fills with warmth. Steam keeps the surface soft long enough for the loaf to expand.",
    "Sourdough uses a starter of natural yeast instead of a packet from the shop. Bakers feed their starters daily, "
    "as one might feed a pet. Rye flour makes a denser crumb than wheat. In many towns the bakery opens before "
    "sunrise. Loaves cool on racks before they are sliced.",
]
ESSAYS = {"eval": EVAL_ESSAY, "train": TRAIN_ESSAY}
DEPTH_TASKS = ["passkey", *[t for t in TASKS if t.startswith("niah")], "vt"]


def make(task: str, seed: int, length: int, depth: float | None, split: str = "eval", encode=wp_encode):
    return get_task(task)(seed, length, depth, encode=encode, split=split, essay=ESSAYS[split])


# ---------------------------------------------------------------- oracles (use prompt + spans + meta only)
_NUM = re.compile(r"\b\d{5,7}\b")
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def oracle(item) -> str:
    """Solve ``item`` from its prompt, needle spans and public meta -- never from ``item.answers``."""
    ctx = item.prompt[slice(*item.meta["context_span"])]
    if item.task == "passkey":
        return _NUM.search(item.needles[0]).group(0)
    if item.task.startswith("niah"):
        out = []
        for qk in item.meta["query_keys"]:
            for text in item.needles:
                if qk in text:
                    after = text.split(qk, 1)[1]
                    pat = _UUID if item.meta["value_type"] == "uuids" else _NUM
                    out.append(pat.search(after).group(0))
        return ", ".join(out)
    if item.task == "vt":
        statements = [re.findall(r"\b[A-Z]{5}\b", t) + _NUM.findall(t) for t in item.needles]
        m = re.search(r"value (\d+)|bound to (\d+)|hold (\d+)", item.prompt[slice(*item.query_span)])
        assert m is not None
        value = next(g for g in m.groups() if g)
        names: list[str] = []
        for toks in statements:  # the chain reads in order
            if value in toks or any(n in names for n in toks):
                names += [t for t in toks if t not in names and t != value]
        return ", ".join(names)
    if item.task == "cwe":
        counts = Counter(re.findall(r"\d+\. (\S+)", ctx))
        k = int(re.search(r"(\d+) (?:most|words)", item.prompt[slice(*item.query_span)]).group(1))
        return ", ".join(w for w, _ in counts.most_common(k))
    if item.task == "fwe":
        counts = Counter(w for w in ctx.split() if w != item.meta["noise"])
        return ", ".join(w for w, _ in counts.most_common(3))
    raise AssertionError(item.task)


def haystack_position(item, j: int = 0) -> tuple[int, int, list[str]]:
    """(haystack chars before needle ``j``, haystack chars in total, haystack units), recomputed from
    the prompt by cutting the needles out of the context."""
    cs, ce = item.meta["context_span"]
    sep = item.meta["sep"]
    cuts = sorted(item.needle_spans)
    segs, pos = [], cs
    for a, b in cuts:
        segs.append((pos, item.prompt[pos:a].strip(sep)))
        pos = b
    segs.append((pos, item.prompt[pos:ce].strip(sep)))
    target = item.needle_spans[j][0]
    before = sep.join(s for p, s in segs if p < target and s)
    total = sep.join(s for _, s in segs if s)
    units = (re.split(r"(?<=[.!?]) ", total) if sep == " " else total.split(sep)) if total else []
    return len(before), len(total), units


def check_item(item, length: int, depth: float | None) -> None:
    """Fit, spans, gold-in-needle, oracle, and (for needle tasks) the depth at or just before ``depth``."""
    used = len(wp_encode(item.prompt)) + item.gen_tokens
    assert 0.9 * length <= used <= length, (used, length)
    assert item.length == length and item.query_span[1] == len(item.prompt)
    assert item.needle_spans and all(0 <= a < b <= len(item.prompt) for a, b in item.needle_spans)
    cs, ce = item.meta["context_span"]
    assert all(cs <= a and b <= ce for a, b in item.needle_spans) and ce <= item.query_span[0]
    assert all(ans in " ".join(item.needles) for ans in item.answers)
    assert len(wp_encode(" " + ", ".join(item.answers) + ".")) <= item.gen_tokens
    assert score_item(item, oracle(item)) == 1.0
    if item.task in DEPTH_TASKS and depth is not None:
        assert item.depth == depth
        before, total, units = haystack_position(item)
        assert total > 0 and item.meta["n_units"] == len(units)
        frac, want = before / total, depth / 100
        assert frac <= want + 1e-9  # at or before the requested depth ...
        assert want - frac <= (max(map(len, units)) + 2 * len(item.meta["sep"])) / total + 1e-9  # ... by < 1 unit
        if item.meta["haystack"] == "noise" and length >= 1024:
            assert want - frac <= 0.03


# ---------------------------------------------------------------- fit, spans, depth, oracle over the grid
@pytest.mark.parametrize("task", list(TASKS))
@pytest.mark.parametrize("length", [256, 1024, 4096])
def test_grid(task: str, length: int) -> None:
    for depth in (0, 50, 100):
        check_item(make(task, 7, length, depth), length, depth)


@settings(max_examples=50, deadline=None)
@given(task=st.sampled_from(DEPTH_TASKS), seed=st.integers(0, 2**31), length=st.integers(300, 3000),
       depth=st.floats(0, 100, allow_nan=False), split=st.sampled_from(["eval", "train"]))
def test_placement_property(task: str, seed: int, length: int, depth: float, split: str) -> None:
    check_item(make(task, seed, length, depth, split), length, depth)


def test_random_string_scores_near_zero() -> None:
    rng = random.Random(0)
    scores = []
    for task in TASKS:
        for seed in range(3):
            item = make(task, seed, 1024, 50)
            junk = "".join(rng.choice(string.ascii_letters + string.digits + " ") for _ in range(60))
            scores.append(score_item(item, junk))
    assert sum(scores) / len(scores) < 0.02


# ---------------------------------------------------------------- determinism and seeds
@pytest.mark.parametrize("task", list(TASKS))
def test_determinism(task: str) -> None:
    assert make(task, 3, 1024, 30) == make(task, 3, 1024, 30)
    assert make(task, 3, 1024, 30, "train") == make(task, 3, 1024, 30, "train")
    answers = {tuple(make(task, s, 1024, 30).answers) for s in range(4)}
    assert len(answers) > 1
    assert make(task, 3, 1024, 30).prompt != make(task, 3, 1024, 30, "train").prompt


def test_depth_forms() -> None:
    assert make("passkey", 0, 512, 50) == make("passkey", 0, 512, 50.0)  # int and float depth: same item
    a, b = make("niah_single_1", 1, 1024, None), make("niah_single_1", 2, 1024, None)
    assert a.depth is None and a.meta["depths"][0] != b.meta["depths"][0] and 0 <= a.meta["depths"][0] <= 100


# ---------------------------------------------------------------- train / eval disjointness
def _fragments(templates) -> set[str]:
    out = set()
    for t in templates:
        for f in vars(t).values():
            if isinstance(f, str):
                for lit, *_ in string.Formatter().parse(f):
                    if lit and len(lit.strip()) >= 12:
                        out.add(lit.strip())
    return out


EVAL_FRAGS = _fragments([niah_mod.EVAL_PASSKEY, niah_mod.EVAL_NIAH, ruler_mod.EVAL_VT, ruler_mod.EVAL_CWE,
                         ruler_mod.EVAL_FWE]) | set(NOISE_EVAL)
TRAIN_FRAGS = _fragments([*niah_mod.TRAIN_PASSKEY, *niah_mod.TRAIN_NIAH, *ruler_mod.TRAIN_VT, *ruler_mod.TRAIN_CWE,
                          *ruler_mod.TRAIN_FWE]) | {s for block in NOISE_TRAIN for s in block}


def test_templates_disjoint() -> None:
    assert EVAL_FRAGS and TRAIN_FRAGS
    eval_text = "\n".join(EVAL_FRAGS)
    train_text = "\n".join(TRAIN_FRAGS)
    assert not [f for f in EVAL_FRAGS if f in train_text]
    assert not [f for f in TRAIN_FRAGS if f in eval_text]


def _secrets(item) -> set[str]:
    """Generated strings that must stay in their split: answers, needle keys and values."""
    meta = item.meta
    out = set(item.answers) | {v for v in meta.get("values", []) if v} | {k for k in meta.get("keys", []) if k}
    return out | set(meta.get("vocab", [])[1:]) | ({meta["value"]} if "value" in meta else set())


def _items(split: str, n: int) -> list:
    tasks = list(TASKS)
    return [make(tasks[i % len(tasks)], i, 512, (i * 37) % 101, split) for i in range(n)]


def test_train_and_eval_items_disjoint() -> None:
    eval_words = set(EVAL_ADJECTIVES + EVAL_NOUNS)
    assert not eval_words & {w.lower() for w in re.findall(r"\w+", " ".join(TRAIN_ESSAY))}
    ev, tr = _items("eval", 200), _items("train", 200)
    ev_secrets = set().union(*map(_secrets, ev))
    tr_secrets = set().union(*map(_secrets, tr))
    assert not ev_secrets & tr_secrets
    assert all(owned_by(v) == "eval" for v in ev_secrets if re.fullmatch(r"\d+|[0-9a-f-]{36}", v))
    tok = re.compile(r"[\w-]+")
    tr_tokens = set().union(*(tok.findall(i.prompt) for i in tr))
    ev_tokens = set().union(*(tok.findall(i.prompt) for i in ev))
    # eval cwe answers are ordinary English words: the caller's prose may hold them (not rnope's train text)
    prose_words = {w.lower() for w in re.findall(r"\w+", " ".join(TRAIN_ESSAY))} & set(cwe_words())
    assert not ev_secrets & (tr_tokens - prose_words)
    assert not tr_secrets & ev_tokens
    for frag in EVAL_FRAGS:
        assert not any(frag in i.prompt for i in tr), frag
    for frag in TRAIN_FRAGS:
        assert not any(frag in i.prompt for i in ev), frag


def test_train_mix_documents() -> None:
    docs = list(synthetic_documents(0, 30, encode=wp_encode, lengths=[256, 512], essay=TRAIN_ESSAY))
    assert len(docs) == 30 and docs == list(synthetic_documents(0, 30, encode=wp_encode, lengths=[256, 512],
                                                                 essay=TRAIN_ESSAY))
    items = list(synthetic_items(0, 30, encode=wp_encode, lengths=[256, 512], essay=TRAIN_ESSAY))
    for doc, item in zip(docs, items):
        assert item.meta["split"] == "train" and doc.startswith(item.prompt) and doc.endswith(".")
        assert all(a in doc[len(item.prompt):] for a in item.answers)
        assert len(wp_encode(doc)) <= item.length
        assert not any(frag in doc for frag in EVAL_FRAGS)
    assert {i.task for i in items} >= {"passkey"} and any(i.task.startswith("niah_multikey") for i in items)
    other = list(synthetic_documents(0, 5, encode=wp_encode, lengths=[300], kinds=("vt", "cwe", "fwe")))
    assert len(other) == 5
    with pytest.raises(ValueError, match="needs an essay"):
        next(synthetic_documents(0, 1, encode=wp_encode, lengths=[300], kinds=("niah_multivalue",)))


# ---------------------------------------------------------------- errors
def test_too_short_message_exact() -> None:
    big = make("niah_single_1", 0, 1024, 50)
    cs, ce = big.meta["context_span"]
    bare = big.prompt[:cs] + big.needles[0] + big.prompt[ce:]
    needed = len(wp_encode(bare)) + 10  # gen budget at length 40: max(40 // 4, gold + 2) = 10
    with pytest.raises(ValueError) as e:
        make("niah_single_1", 0, 40, 50)
    assert str(e.value) == f"length 40 is too short for task 'niah_single_1': the template alone needs {needed} tokens"
    with pytest.raises(ValueError, match=r"^length 20 is too short for task 'fwe': the smallest valid item needs \d+"):
        make("fwe", 0, 20, None)
    with pytest.raises(ValueError, match=r"^length 30 is too short for task 'cwe'"):
        make("cwe", 0, 30, None)


def test_unknown_task_and_missing_essay() -> None:
    with pytest.raises(ValueError) as e:
        get_task("x")
    assert str(e.value) == "unknown task 'x'; known: " + ", ".join(TASKS)
    assert len(RULER_TASKS) == 11 and "passkey" not in RULER_TASKS
    with pytest.raises(ValueError, match="needs an essay"):
        TASKS["niah_single_2"](0, 512, 50, encode=wp_encode)
    assert split_sentences(["One two.  Three\nfour! Five?", "", "Six."]) == ["One two.", "Three four!", "Five?", "Six."]


# ---------------------------------------------------------------- eval templates are the documented ones
def test_eval_templates_match_eval_md() -> None:
    p = make("passkey", 0, 512, 50)
    assert re.fullmatch(r"The pass key is (\d{5})\. Remember it\. \1 is the pass key\.", p.needles[0])
    assert p.prompt.endswith("What is the pass key? The pass key is")
    assert "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again." in p.prompt
    n = make("niah_single_1", 0, 512, 50)
    key = n.meta["query_keys"][0]
    assert n.needles[0] == f"One of the special magic numbers for {key} is: {n.answers[0]}."
    assert n.prompt.endswith(f"The special magic number for {key} mentioned in the provided text is")
    u = make("niah_single_3", 0, 512, 50)
    assert _UUID.fullmatch(u.answers[0]) and "special magic uuids" in u.needles[0]
    v = make("vt", 0, 1024, 10)
    assert re.fullmatch(r"VAR [A-Z]{5} = \d{5}", v.needles[0]) and len(v.answers) == 5
    assert all(re.fullmatch(r"VAR [A-Z]{5} = VAR [A-Z]{5}", s) for s in v.needles[1:])
    c = make("cwe", 0, 4096, None)
    assert (c.meta["freq_cw"], c.meta["freq_ucw"]) == (30, 3)
    counts = Counter(re.findall(r"\d+\. (\S+)", c.prompt[slice(*c.meta["context_span"])]))
    assert all(counts[w] == 30 for w in c.answers) and set(counts.values()) == {30, 3}
    c2 = make("cwe", 0, 2048, None)
    assert (c2.meta["freq_cw"], c2.meta["freq_ucw"]) == (6, 1)
    f = make("fwe", 0, 2048, None)
    counts = Counter(f.prompt[slice(*f.meta["context_span"])].split())
    ranked = [w for w, _ in counts.most_common()]
    assert ranked[0] == "..." and ranked[1:4] == f.answers
    assert counts[f.answers[0]] > counts[f.answers[1]] > counts[f.answers[2]] > counts[ranked[4]]
    assert all(re.fullmatch(r"[a-z]{6}", w) for w in f.answers)


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


# ---------------------------------------------------------------- length fit efficiency and speed
def test_fit_haystack_exact_and_few_encodes() -> None:
    calls: list[int] = []
    enc = lambda s: calls.append(len(s)) or list(s.encode())  # noqa: E731
    build = lambda n: "head " + "ab cd. " * n + "tail"  # noqa: E731
    n = fit_haystack(build, enc, 10_000, 100)
    assert len(build(n)) + 100 <= 10_000 < len(build(n + 1)) + 100
    assert len(calls) <= 2 * math.log2(n) + 4
    # a non-affine cost (numbers growing in digits) still lands on the exact maximum
    build2 = lambda n: " ".join(str(i) for i in range(n))  # noqa: E731
    calls.clear()
    n2 = fit_haystack(build2, enc, 50_000, 0)
    assert len(build2(n2)) <= 50_000 < len(build2(n2 + 1)) and len(calls) <= 2 * math.log2(n2) + 4
    assert fit_haystack(build, enc, 10_000, 100, max_units=5) == 5


def test_generation_is_fast_at_8k_bytes() -> None:
    calls: list[int] = []
    enc = lambda s: calls.append(len(s)) or list(s.encode())  # noqa: E731
    for task in TASKS:
        calls.clear()
        t = time.perf_counter()
        item = make(task, 0, 8192, 50, encode=enc)
        assert time.perf_counter() - t < 0.2, task
        assert len(calls) <= 16, (task, len(calls))  # ~log2(n) encodes at most
        assert 0.9 * 8192 <= len(byte_encode(item.prompt)) + item.gen_tokens <= 8192


# ---------------------------------------------------------------- scoring
def test_scoring_hand_cases() -> None:
    assert string_match_all("a b", ["A", "c"]) == 0.5
    assert string_match_all("The answer is 123 and 456", ["123", "456"]) == 1.0
    assert string_match_all("nothing", ["x"]) == 0.0 and string_match_all("x", []) == 0.0
    assert string_match_part("Paris, France", ["paris", "lyon"]) == 1.0
    assert string_match_part("Berlin", ["paris", "lyon"]) == 0.0
    qa = Item("Q? Answer:", ["paris", "lyon"], "qa_1", 64, None, [], (0, 10), 8)
    assert score_item(qa, "Paris") == 1.0 and metric_name("qa_2") == "string_match_part"  # any gold, not all
    assert metric_name("cwe") == "string_match_all" and metric_name("passkey") == "exact_value"
    assert exact_value(" 12345. Remember", "12345") == 1.0
    assert exact_value(" 123456", "12345") == 0.0 and exact_value("no", "12345") == 0.0
    assert exact_value("id A1B2-c3", "a1b2-C3") == 1.0


# ---------------------------------------------------------------- MQAR and copy
@pytest.mark.parametrize("seq_len,n_pairs,vocab", [(64, 8, 64), (256, 16, 128), (1024, 64, 8192)])
def test_mqar(seq_len: int, n_pairs: int, vocab: int) -> None:
    tokens, targets, meta = mqar(5, seq_len, n_pairs, vocab)
    assert tokens.shape == targets.shape == (seq_len,) and tokens.dtype == targets.dtype == torch.long
    mid = 3 + (vocab - 3) // 2
    keys, values = meta["keys"], meta["values"]
    assert len(set(keys)) == n_pairs and all(3 <= k < mid for k in keys) and all(mid <= v < vocab for v in values)
    assert tokens[: 2 * n_pairs : 2].tolist() == keys and tokens[1 : 2 * n_pairs : 2].tolist() == values
    pair = dict(zip(keys, values))
    value_pos = (targets != -100).nonzero().flatten().tolist()
    assert value_pos == [q + 1 for q in meta["query_positions"]] and len(value_pos) == n_pairs
    assert all(p >= 2 * n_pairs for p in value_pos)
    for p in value_pos:
        assert targets[p].item() == tokens[p].item() == pair[tokens[p - 1].item()]
    assert sorted(tokens[q].item() for q in meta["query_positions"]) == sorted(keys)
    assert all(g > 0 for g in meta["gaps"])
    rest = set(range(2 * n_pairs, seq_len)) - set(value_pos) - set(meta["query_positions"])
    assert all(tokens[i].item() == 0 for i in rest)
    again = mqar(5, seq_len, n_pairs, vocab)
    assert torch.equal(again[0], tokens) and torch.equal(again[1], targets)
    assert not torch.equal(mqar(6, seq_len, n_pairs, vocab)[0], tokens)
    assert not torch.equal(mqar(5, seq_len, n_pairs, vocab, split="train")[0], tokens)


def test_mqar_power_law_and_errors() -> None:
    first = [mqar(s, 512, 8, 256)[2]["query_positions"] for s in range(200)]
    q = [p - 16 for qs in first for p in qs]  # offset into the query region
    assert sum(x < 124 for x in q) > sum(x >= 372 for x in q)  # near slots far more likely than far ones
    x, y = mqar_batch(0, 4, 64, 8, 64)
    assert x.shape == y.shape == (4, 64)
    with pytest.raises(ValueError, match="too short"):
        mqar(0, 30, 8, 64)
    with pytest.raises(ValueError, match="n_pairs"):
        mqar(0, 256, 40, 64)


def test_copy_task() -> None:
    tokens, targets, meta = copy_task(0, 100, 50, 16)
    assert tokens.shape == (100,) and (targets[:16] == -100).all()
    assert torch.equal(targets[16:], tokens[16:]) and torch.equal(tokens[16:32], tokens[:16])
    assert int(tokens.min()) >= 3 and int(tokens.max()) < 50 and meta["block"] == tokens[:16].tolist()
    assert torch.equal(copy_task(0, 100, 50, 16)[0], tokens)
    with pytest.raises(ValueError):
        copy_task(0, 10, 50, 10)


def test_copy_document_repeats_its_first_half_in_tokens():
    from rnope.tasks.train_mix import copy_document, synthetic_documents
    from rnope.tokenizer import Tokenizer

    tok = Tokenizer.byte_level()
    doc = copy_document(3, 200, encode=tok.encode)
    ids = tok.encode(doc)
    half = len(ids) // 2
    assert 150 <= len(ids) <= 200
    assert ids[half] == tok.encode(" ")[0] and ids[half + 1 :] == ids[:half]  # A + " " + A
    assert copy_document(3, 200, encode=tok.encode) == doc != copy_document(4, 200, encode=tok.encode)
    for d in synthetic_documents(0, 5, encode=tok.encode, lengths=[200], kinds=["copy"]):
        assert d == d[: len(d) // 2] + " " + d[: len(d) // 2]


def test_recall_document_is_a_short_train_split_question_with_its_answer():
    import re

    from rnope.tasks.common import owned_by
    from rnope.tasks.haystack import TRAIN_NOUNS
    from rnope.tasks.train_mix import RECALL_KINDS, recall_document
    from rnope.tokenizer import Tokenizer

    tok = Tokenizer.byte_level()
    keys = set()
    for seed in range(40):
        doc = recall_document(seed, "recall_near")
        body, last = doc.split("\n")
        value = re.search(r"(\d{5})\.", body).group(1)
        key = re.search(r"(?:The|My|Our) (\w+ \w+) (?:is|reads)", body).group(1)
        keys.add(key)
        assert owned_by(value) == "train" and key.split()[0] in TRAIN_NOUNS
        assert last.endswith(f" {value}.") and f" {key}" in last[: -len(value) - 2]  # question about that key + answer
        assert body.count(value) == 2 and "pass key" not in doc and "Remember it" not in doc
        assert body.count(". ") - 2 <= RECALL_KINDS["recall_near"]  # needle's 2 sentences + at most 2 filler
    assert len(keys) >= 30  # many key phrases, not a few memorisable ones
    assert recall_document(5, "recall") == recall_document(5, "recall") != recall_document(6, "recall")
    far = [len(tok.encode(recall_document(s, "recall"))) for s in range(30)]
    assert max(far) > 2 * max(len(tok.encode(recall_document(s, "recall_near"))) for s in range(30))
    capped = [len(tok.encode(recall_document(s, "recall", max_tokens=160, encode=tok.encode))) for s in range(30)]
    assert max(capped) <= 160
    with pytest.raises(ValueError, match="length 20 is too short for task 'recall'"):
        recall_document(0, "recall", max_tokens=20, encode=tok.encode)
    with pytest.raises(ValueError, match="unknown recall kind 'far'"):
        recall_document(0, "far")


def test_recall_keys_with_prose_use_open_words_and_never_an_eval_template_word():
    import re

    from rnope.tasks.haystack import TRAIN_NOUNS
    from rnope.tasks.train_mix import _RECALL_WORDS, eval_template_words, key_words, recall_document

    banned = eval_template_words()
    # every template's words are seen: passkey, NIAH (kinds too), RULER, the filler, the key lists
    assert {"pass", "key", "remember", "magic", "uuids", "variable", "frequently", "grass", "falcon", "calm"} <= banned
    essay = ["Return the value of the key in the dictionary.", "The pass key opens the old mill; nobody minds it."]
    assert key_words(essay) == ("dictionary", "mill", "minds", "nobody", "old", "opens", "return")
    assert key_words(None) == key_words([]) == ()
    prose = [f"The {w} wrote to the {v} about the {u}." for w, v, u in zip(TRAIN_NOUNS, TRAIN_NOUNS[1:], TRAIN_NOUNS[2:])]
    prose += ["Record store ledger office anchor harbor pocket scroll ribbon wallet parcel drawer"]
    firsts, lasts = set(), set()
    for seed in range(300):
        doc = recall_document(seed, "recall", essay=prose)
        key = re.search(r"(?:The|My|Our) (\w+ \w+) (?:is|reads)", doc).group(1)
        first, last = key.split()
        assert first not in banned and last not in banned
        assert last in _RECALL_WORDS or last in key_words(prose)
        firsts.add(first)
        lasts.add(last)
    # the word before "is" varies beyond the ten kind words, and both kinds of word are drawn
    assert len(lasts - set(_RECALL_WORDS)) >= 20 and len(lasts & set(_RECALL_WORDS)) == 10
    assert {"record", "ledger"} & lasts and not {"anchor", "harbor"} & (firsts | lasts)  # eval nouns are banned
    # without prose, and in "recall_near" documents, the closed vocabulary: rare train noun + kind word
    for doc in [recall_document(s, "recall") for s in range(20)] + [recall_document(s, "recall_near", essay=prose) for s in range(20)]:
        key = re.search(r"(?:The|My|Our) (\w+ \w+) (?:is|reads)", doc).group(1)
        assert key.split()[0] in TRAIN_NOUNS and key.split()[1] in _RECALL_WORDS


def test_training_rows_pack_many_recall_documents():
    from rnope.tokenizer import Tokenizer
    from rnope.train.mix import synthetic_row

    tok = Tokenizer.byte_level()
    row, used = synthetic_row(tok, seed=0, kinds=["recall_near"], essay=["x"], L=1024, s=0)
    text = tok.decode(row[:used].tolist())
    assert used > 1024 - 64 and text.count("\nWhat is") >= 5  # dense: many questions per sequence
    with pytest.raises(ValueError, match="unknown task 'recal'; known: .*copy, recall_near, recall"):
        synthetic_row(tok, seed=0, kinds=["recal", "copy"], essay=["x"], L=256, s=0)


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
