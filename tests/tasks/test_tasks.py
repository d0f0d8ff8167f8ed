"""Tests for rnope.tasks: synthetic long-context generators, length fitting, scoring, MQAR (CPU, fast)."""

from __future__ import annotations

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
    cwe_words,
    split_sentences,
)
from rnope.tasks.scoring import exact_value, metric_name, string_match_all, string_match_part
from rnope.tasks.synthetic import synthetic_documents, synthetic_items

from ..conftest import TRAIN_ESSAY, byte_encode, make, wp_encode

DEPTH_TASKS = ["passkey", *[t for t in TASKS if t.startswith("niah")], "vt"]



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


def test_synthetic_training_documents() -> None:
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
    from rnope.tasks.synthetic import copy_document, synthetic_documents
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
    from rnope.tasks.synthetic import RECALL_KINDS, recall_document
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
    from rnope.tasks.synthetic import _RECALL_WORDS, eval_template_words, key_words, recall_document

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
    from rnope.train.stream import synthetic_row

    tok = Tokenizer.byte_level()
    row, used = synthetic_row(tok, seed=0, kinds=["recall_near"], essay=["x"], L=1024, s=0)
    text = tok.decode(row[:used].tolist())
    assert used > 1024 - 64 and text.count("\nWhat is") >= 5  # dense: many questions per sequence
    with pytest.raises(ValueError, match="unknown task 'recal'; known: .*copy, recall_near, recall"):
        synthetic_row(tok, seed=0, kinds=["recal", "copy"], essay=["x"], L=256, s=0)
