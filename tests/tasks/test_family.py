"""The retrieval family (rnope.tasks.family) and the held-out prose: wording split, item shapes,
and -- mechanically -- that nothing an evaluation item contains ever reaches training."""

from __future__ import annotations

import re

import pytest

from rnope.data.heldout import heldout_prose, load_essay
from rnope.tasks import TASKS, passkey, score_item
from rnope.tasks.family import (
    EVAL_KINDS,
    INTROS,
    NEEDLES,
    PREFIXES,
    QUESTIONS,
    TRAIN_KINDS,
    Wording,
    echo_wordings,
    echoes,
    lookup,
    lookup_document,
    wording_split,
    wordings,
)
from rnope.tasks.haystack import EVAL_ADJECTIVES, EVAL_NOUNS, NOISE_EVAL, split_sentences
from rnope.tasks.synthetic import eval_template_words, synthetic_documents

from ..conftest import wp_encode

TRAIN_PROSE = [
    "Bread begins with flour, water, salt and yeast. The baker mixes them and lets the dough rest so the gluten can "
    "form. After a long rise the dough is shaped into loaves. A hot oven sets the crust within minutes.",
    "Sourdough uses a starter of natural yeast. Bakers feed their starters daily, as one might feed a pet. Rye "
    "flour makes a denser crumb than wheat. In many towns the bakery opens before sunrise.",
]
STUDY_KINDS = ("lookup_near", "lookup_far", "lookup", "lookup_long")
EVAL_WORDS = set(EVAL_ADJECTIVES) | set(EVAL_NOUNS) | {w for pair in EVAL_KINDS for w in pair}


# ---------------------------------------------------------------------------------- the wording split
def test_wordings_partition_the_family_and_every_part_is_trained():
    train, ev = set(wordings("train")), set(wordings("eval"))
    total = len(NEEDLES) * len(QUESTIONS) * len(PREFIXES)
    assert not train & ev and len(train) + len(ev) == total
    assert 0.12 < len(ev) / total < 0.28  # about one in five held out
    # a held-out wording is a new combination of parts, each of which training uses
    for part, n in (("needle", len(NEEDLES)), ("question", len(QUESTIONS)), ("prefix", len(PREFIXES))):
        assert {getattr(w, part) for w in train} == set(range(n))
        assert {getattr(w, part) for w in ev} == set(range(n))


def test_wording_split_is_a_fixed_function_of_the_wording():
    w = Wording(3, 2, 5)
    assert wording_split(w) == wording_split(Wording(3, 2, 5))
    assert all(wording_split(x) == "train" for x in wordings("train"))


def test_echo_wordings_end_the_prefix_with_the_words_before_the_value():
    assert echoes(Wording(0, 0, 0))  # "The {K} is {V}." / "The {K} is"
    assert echoes(Wording(2, 0, 3))  # "{K}: {V}." / "{K}:"
    assert not echoes(Wording(2, 0, 0))  # "{K}: {V}." / "The {K} is"
    assert echo_wordings() and set(echo_wordings()) <= set(wordings("train"))


# ------------------------------------------------------------------------------------------- items
@pytest.mark.parametrize("haystack", ["noise", "essay", "words"])
@pytest.mark.parametrize("length", [128, 300, 1000])
def test_lookup_items_fit_their_length_and_place_the_needle(haystack, length):
    for seed in range(6):
        it = lookup(seed, length, 50.0, encode=wp_encode, split="eval", haystack=haystack, essay=heldout_prose())
        assert len(wp_encode(it.prompt)) + it.gen_tokens <= length
        value = it.answers[0]
        assert re.fullmatch(r"[1-9]\d{4,6}", value)  # evaluation values: 5-7 digit numbers
        a, b = it.needle_spans[0]
        assert value in it.prompt[a:b]
        assert it.meta["wording"] in {w.key() for w in wordings("eval")}
        a, b = it.query_span
        assert it.prompt.endswith(it.prompt[a:b])
        assert score_item(it, f" {value}.") == 1.0 and score_item(it, f" {value}9.") == 0.0


def test_lookup_multi_formats_answer_every_value_of_every_asked_key():
    it = lookup(5, 600, 30.0, encode=wp_encode, split="train", haystack="noise", n_keys=4, n_values=2, n_queries=2,
                essay=TRAIN_PROSE)
    assert len(it.answers) == 4 and len(it.needle_spans) == 8
    asked = it.meta["query_keys"]
    assert [k for k, v in zip(it.meta["keys"], it.meta["values"]) if v in it.answers] == [asked[0]] * 2 + [asked[1]] * 2
    assert score_item(it, " " + ", ".join(it.answers[:2])) == 0.5


def test_lookup_rejects_impossible_formats():
    with pytest.raises(ValueError, match="need 1 <= n_queries <= n_keys"):
        lookup(0, 300, 10.0, encode=wp_encode, n_keys=1, n_queries=2)


def test_items_and_documents_are_pure_functions_of_their_seed():
    a = lookup(7, 400, 25.0, encode=wp_encode, haystack="essay", essay=heldout_prose())
    b = lookup(7, 400, 25.0, encode=wp_encode, haystack="essay", essay=heldout_prose())
    assert a == b
    for kind in ("lookup_near", "lookup_far", "lookup"):
        assert lookup_document(11, kind, max_tokens=127, encode=wp_encode, essay=TRAIN_PROSE) == \
            lookup_document(11, kind, max_tokens=127, encode=wp_encode, essay=TRAIN_PROSE)


@pytest.mark.parametrize("kind", ["lookup_near", "lookup_far", "lookup"])
def test_documents_fit_and_end_with_their_answer(kind):
    for seed in range(40):
        doc = lookup_document(seed, kind, max_tokens=63 if kind == "lookup_near" else 127, encode=wp_encode,
                              essay=TRAIN_PROSE)
        assert len(wp_encode(doc)) <= (63 if kind == "lookup_near" else 127)
        *_, last = doc.split("\n")
        assert re.search(r" [^ ]+\.$", last)


def test_unknown_document_kind_is_one_line():
    with pytest.raises(ValueError, match="^unknown lookup document kind 'far'; known: lookup_near, lookup_far, lookup$"):
        lookup_document(0, "far")


# ----------------------------------------------------------------- evaluation never reaches training
def _training_text(n: int = 150) -> str:
    docs = []
    for kind in STUDY_KINDS:
        docs.extend(synthetic_documents(123, n, encode=wp_encode, lengths=[127 if kind != "lookup_long" else 400],
                                        kinds=[kind], essay=TRAIN_PROSE))
    return "\n\n".join(docs)


def _eval_items(n: int = 40) -> list:
    prose = heldout_prose()
    items = []
    for i in range(n):
        items.append(lookup(i, 400, 100.0 * i / n, encode=wp_encode, split="eval", haystack="essay", essay=prose))
        items.append(lookup(i, 400, 100.0 * i / n, encode=wp_encode, split="eval", haystack="noise"))
        items.append(passkey(i, 400, 100.0 * i / n, encode=wp_encode))
        for t in ("niah_single_1", "niah_multikey_1", "vt"):
            items.append(TASKS[t](i, 600, None, encode=wp_encode, essay=prose))
    return items


def test_no_evaluation_value_wording_key_or_haystack_sentence_appears_in_training():
    text = _training_text()
    items = _eval_items()
    # values
    for it in items:
        for v in it.answers + list(it.meta.get("values") or []):
            assert not re.search(r"(?<![0-9A-Za-z])" + re.escape(str(v)) + r"(?![0-9A-Za-z])", text), v
    # canonical evaluation wordings
    for phrase in ("pass key", "special magic", "What is the pass key", "VAR ", "mentioned in the provided text"):
        assert phrase not in text, phrase
    # haystack sentences: the evaluation filler and the held-out prose
    train_sents = set(split_sentences([text]))
    for s in NOISE_EVAL:
        assert s not in text
    for s in split_sentences(heldout_prose()):
        assert s not in train_sents


def test_training_draws_only_training_wordings_kinds_and_intros():
    from rnope.tasks.family import _draw, item_rng

    train_keys = {w.key() for w in wordings("train")}
    for i in range(300):
        d = _draw(item_rng("train", "t", i, 0, None), "train", TRAIN_PROSE, n_keys=2, n_values=1, n_queries=1,
                  value_kind=None, digits=None, wording=None)
        assert d.wording.key() in train_keys and d.kind in TRAIN_KINDS and d.intro in INTROS
        # key words: no training needle is keyed by a word of an evaluation key list or template
        assert not set(" ".join(d.keys).replace("-", " ").split()) & (EVAL_WORDS | eval_template_words())


def test_heldout_prose_is_disjoint_from_the_builtin_corpus():
    from rnope.data import builtin_documents

    corpus = "\n".join(builtin_documents("prose"))
    sents = split_sentences(heldout_prose())
    assert len(sents) > 250 and sum(map(len, sents)) > 30_000
    shared = [s for s in sents if len(s) > 30 and s in corpus]
    assert shared == []
    assert not re.search(r"\d", " ".join(heldout_prose()))  # the needle's value is the only number


def test_load_essay_errors_are_one_line(tmp_path):
    with pytest.raises(ValueError, match="^--essay: '.*nope.txt' does not exist$"):
        load_essay(tmp_path / "nope.txt")
    (tmp_path / "short.txt").write_text("Too short.")
    with pytest.raises(ValueError, match="holds 10 characters of text; a haystack needs at least 200$"):
        load_essay(tmp_path / "short.txt")
    (tmp_path / "d").mkdir()
    with pytest.raises(ValueError, match="holds no .txt files$"):
        load_essay(tmp_path / "d")
    (tmp_path / "ok.txt").write_text("A sentence of prose. " * 20 + "\n\n" + "Another paragraph here. " * 5)
    assert len(load_essay(tmp_path / "ok.txt")) == 2
