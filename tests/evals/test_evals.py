"""Evaluations (rnope.evals, ``rnope eval``): pipeline correctness with oracle / random predictors,
output schemas and figures, perplexity bookkeeping, bad-input handling, the lm_eval adapter."""

from __future__ import annotations

import json
import math
import os
import random
import re
import subprocess
import sys
from collections import Counter
from types import SimpleNamespace

import pytest
import torch

import rnope
from rnope import ModelConfig, Transformer
from rnope.cli import main as cli_main
from rnope.evals import mqar as mqar_eval
from rnope.evals import niah as niah_eval
from rnope.evals import ppl as ppl_eval
from rnope.evals import ruler as ruler_eval
from rnope.evals.report import heatmap_size, png_size, write_outputs
from rnope.evals.args import parse_depths, parse_lengths
from rnope.evals.predictor import ModelPredictor, detect_train_seq_len, load_predictor
from rnope.inference import generate, score_tokens
from rnope.tokenizer import Tokenizer


TINY = dict(vocab_size=259, n_layer=4, d_model=32, n_head=4, n_kv_head=2, d_ff=64, max_seq_len=256, window=16)


def tiny_model(seed: int = 0, zero: bool = False, **over) -> Transformer:
    torch.manual_seed(seed)
    m = Transformer(ModelConfig.from_preset("rnope-swa", **{**TINY, **over}))
    if zero:  # every logit 0: the uniform distribution over the vocabulary
        with torch.no_grad():
            for p in m.parameters():
                p.zero_()
    return m.eval()


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpts")
    tok = Tokenizer.byte_level()
    rnope.save(root / "tiny", tiny_model(), tok)
    rnope.save(root / "uniform", tiny_model(zero=True), tok)
    rnope.save(root / "notok", tiny_model(), None)
    return root


# ------------------------------------------------------------------------------------ test doubles
def solve(prompt: str) -> str:
    """Answer any eval prompt by reading it (never the item's answers)."""
    m = re.search(r"The pass key is (\d+)\. Remember it\.", prompt)
    if m:
        return f" {m.group(1)}. Remember it."
    m = re.search(r"What (?:are all|is) the special magic (\w+?)s? for (.+?) mentioned in the provided text\?", prompt)
    if m:  # singular or plural question; the needles always say "numbers" / "uuids"
        kind, keys = m.group(1) + "s", re.split(r",? and |, ", m.group(2))
        vals = [v for k in keys for v in
                re.findall(rf"One of the special magic {kind} for {re.escape(k)} is: (\S+?)\.(?=\s|$)", prompt)]
        return " " + ", ".join(vals) + "."
    asked = re.findall(r"assigned the value (\d+) in the text above", prompt)
    if asked:  # the last question is the item's (a solved example may come first)
        holders = {a for a, b in re.findall(r"VAR ([A-Z]+) = (\d+)", prompt) if b == asked[-1]}
        links = re.findall(r"VAR ([A-Z]+) = VAR ([A-Z]+)", prompt)
        while True:
            new = {a for a, b in links if b in holders} - holders
            if not new:
                break
            holders |= new
        return " " + " ".join(sorted(holders))
    if prompt.startswith("Below is a numbered list of words"):
        ctx = prompt.rsplit("most often.\n", 1)[1].rsplit("\nQuestion:", 1)[0]
        return " " + ", ".join(w for w, _ in Counter(re.findall(r"\d+\. (\S+)", ctx)).most_common(10))
    if prompt.startswith("Read the following coded text"):
        ctx = prompt.split("coded words.", 1)[1].rsplit("\nQuestion:", 1)[0]
        return " " + ", ".join(w for w, _ in Counter(w for w in ctx.split() if w not in ("...", "....")).most_common(3))
    raise AssertionError(f"oracle cannot parse prompt: {prompt[:80]!r}")


class Oracle:
    """Predictor double that extracts the answer from the prompt text."""

    train_seq_len = 512

    def __init__(self, name: str = "oracle"):
        self.name = name
        self.info = {"kind": "oracle"}
        self.tokenizer = Tokenizer.byte_level()
        self.batches: list[int] = []

    def encode(self, text):
        return self.tokenizer.encode(text)

    def complete(self, prompts, max_new_tokens):
        self.batches.append(len(prompts))
        return [solve(p) for p in prompts]

    def nll(self, contexts, continuations):
        return [(0.0, True) for _ in contexts]


class Random(Oracle):
    def complete(self, prompts, max_new_tokens):
        rng = random.Random(len(self.batches))
        self.batches.append(len(prompts))
        return [" " + " ".join(str(rng.randint(10**4, 10**5 - 1)) for _ in range(3)) for _ in prompts]


# ------------------------------------------------------------------------------------ NIAH
def test_oracle_scores_one_on_every_niah_cell_and_random_zero(tmp_path):
    oracle = Oracle()
    doc = niah_eval.evaluate([oracle, Random("random")], lengths=[300, 512], depths="0:100:25", samples=3, seed=1,
                             batch_size=4, progress=False)
    assert max(oracle.batches) <= 4 and sum(oracle.batches) == 2 * 5 * 3
    cells = {r["model"]: r["cells"] for r in doc["results"]}
    assert len(cells["oracle"]) == 10 and all(c["accuracy"] == 1.0 and c["n"] == 3 for c in cells["oracle"])
    assert sum(c["accuracy"] for c in cells["random"]) / 10 < 0.05
    write_outputs(tmp_path, niah_eval.outputs(doc))
    back = json.loads((tmp_path / "niah.json").read_text())
    assert back["results"] == doc["results"]


def test_heldout_wording_items_that_do_not_fit_are_redrawn_and_the_rest_kept():
    from rnope.evals.args import item_seed
    from rnope.tasks.family import lookup

    o = Oracle()
    items = niah_eval.build_items(o, [200], [0.0, 50.0, 100.0], 20, 3, wording="heldout")
    assert len(items) == 60 and all(len(o.encode(it.prompt)) <= 200 for it in items)
    redrawn = 0
    for k, it in enumerate(items):
        d, i = [0.0, 50.0, 100.0][k // 20], k % 20
        try:
            first = lookup(item_seed(3, "niah-heldout", i), 200, d, encode=o.encode, split="eval")
        except ValueError as e:
            assert "too short" in str(e)
            redrawn += 1
            continue
        assert it.prompt == first.prompt and it.answers == first.answers  # a fitting first draw is kept
    assert redrawn >= 5  # byte-level tokens at 200: about a quarter of the first draws do not fit
    key = {it.prompt: " " + " ".join(it.answers) + "." for it in items}  # a double that knows these items
    o.complete = lambda prompts, n: [key[p] for p in prompts]
    doc = niah_eval.evaluate([o], lengths=[200], depths="0,50,100", samples=20, seed=3, wording="heldout",
                             progress=False)
    assert all(c["n"] == 20 and c["accuracy"] == 1.0 for c in doc["results"][0]["cells"])


def test_niah_json_schema_heatmap_and_markdown(tmp_path):
    doc = niah_eval.evaluate([Oracle("m1")], lengths="300,400", depths="0,50,100", samples=1, seed=3, progress=False)
    write_outputs(tmp_path / "out", niah_eval.outputs(doc))
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["niah.json", "niah.md", "niah_m1.png"]
    d = json.loads((out / "niah.json").read_text())
    assert set(d) == {"task", "results", "seed", "versions", "settings", "models"}
    assert d["seed"] == 3 and d["task"] == "niah"
    assert {"rnope", "torch", "python", "numpy"} <= set(d["versions"]) and d["versions"]["rnope"] == rnope.__version__
    (r,) = d["results"]
    assert set(r) == {"model", "train_seq_len", "cells"} and r["model"] == "m1" and r["train_seq_len"] == 512
    assert [(c["length"], c["depth"]) for c in r["cells"]] == [(L, dd) for L in (300, 400) for dd in (0.0, 50.0, 100.0)]
    for c in r["cells"]:
        assert set(c) == {"length", "depth", "accuracy", "n"}
        assert type(c["length"]) is int and type(c["depth"]) is float and type(c["accuracy"]) is float
        assert type(c["n"]) is int
    assert d["models"]["m1"]["train_seq_len"] == 512
    assert png_size((out / "niah_m1.png").read_bytes()) == heatmap_size(2, 3)
    # Markdown for a tiny hand-made case
    tiny = {"seed": 0, "settings": {"samples": 2, "haystack": "noise"}, "results": [
        {"model": "a", "train_seq_len": 300, "cells": [
            {"length": 300, "depth": 0.0, "accuracy": 1.0, "n": 2}, {"length": 300, "depth": 100.0, "accuracy": 0.5, "n": 2},
            {"length": 600, "depth": 0.0, "accuracy": 0.0, "n": 2}, {"length": 600, "depth": 100.0, "accuracy": 0.5, "n": 2}]}]}
    md = niah_eval.markdown(tiny)
    assert "| model | train len | 300 | 600 |\n|---|---|---|---|\n| a | 300 | 0.75 | 0.25 |\n" in md
    assert "| depth % | 300* | 600 |\n|---|---|---|\n| 0 | 1.00 | 0.00 |\n| 100 | 0.50 | 0.50 |\n" in md


# ------------------------------------------------------------------------------------ RULER
def test_oracle_scores_100_on_every_ruler_task_and_random_zero(tmp_path):
    oracle = Oracle()
    doc = ruler_eval.evaluate([oracle, Random("random")], lengths=[1024, 1536], tasks="all", samples=2, seed=0,
                              batch_size=3, progress=False)
    assert max(oracle.batches) <= 3
    res = {r["model"]: r for r in doc["results"]}
    assert len(res["oracle"]["scores"]) == 2 * 11
    assert all(s["score"] == 100.0 and s["n"] == 2 for s in res["oracle"]["scores"]), res["oracle"]["scores"]
    assert [m["score"] for m in res["oracle"]["means"]] == [100.0, 100.0]
    assert max(m["score"] for m in res["random"]["means"]) < 5.0
    files = ruler_eval.outputs(doc)
    write_outputs(tmp_path, files)
    md = (tmp_path / "ruler.md").read_text()
    assert "| oracle | 512 | 100.0 ± 0.0 | 100.0 ± 0.0 |" in md and "| niah_multiquery | 100.0 ± 0.0 | 100.0 ± 0.0 |" in md
    assert "## Synthetic mean over 11 tasks" in md and "Tasks: niah_single_1, niah_single_2," in md
    back = json.loads((tmp_path / "ruler.json").read_text())
    assert back["settings"]["tasks"][-1] == "fwe" and back["settings"]["metric"] == "string_match_all x100"
    assert all(m["tasks"] == back["settings"]["tasks"] for m in back["results"][0]["means"])
    # the essay haystack passkey grid goes through the same pipeline
    d2 = niah_eval.evaluate([oracle], lengths=[400], depths=[0, 100], samples=2, haystack="essay", progress=False)
    assert all(c["accuracy"] == 1.0 for c in d2["results"][0]["cells"])


def test_ruler_stderr_and_mean_over_tasks_run():
    assert ruler_eval.stderr(50.0, 4) == 25.0 and ruler_eval.stderr(100.0, 7) == 0.0
    assert ruler_eval.stderr(20.0, 100) == pytest.approx(4.0)
    tiny = {"seed": 1, "settings": {"samples": 4, "lengths": [512], "tasks": ["vt", "cwe"],
                                    "metric": "string_match_all x100"},
            "results": [{"model": "a", "train_seq_len": 512,
                         "scores": [{"length": 512, "task": "vt", "score": 50.0, "stderr": 25.0, "n": 4},
                                    {"length": 512, "task": "cwe", "score": 100.0, "stderr": 0.0, "n": 4}],
                         "means": [{"length": 512, "score": 75.0, "stderr": 12.5, "tasks": ["vt", "cwe"]}]}]}
    md = ruler_eval.markdown(tiny)
    assert "## Synthetic mean over 2 tasks\n" in md and "Tasks: vt, cwe." in md
    assert "| a | 512 | 75.0 ± 12.5 |" in md and "| vt | 50.0 ± 25.0 |" in md
    assert "| **synthetic mean (2 tasks)** | 75.0 ± 12.5 |" in md


def test_ruler_cli_defaults_to_50_samples():
    import argparse

    from rnope.commands import eval as eval_cmd

    p = argparse.ArgumentParser()
    eval_cmd.add_arguments(p)
    assert p.parse_args(["ruler", "--ckpt", "c", "--out", "o"]).samples == 50


# ------------------------------------------------------------------------------------ model paths
def test_generate_with_padding_and_chunked_prefill_matches_each_row_alone():
    m = tiny_model(1)
    with torch.no_grad():
        for p in m.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.3)
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(3, 259, (n,), generator=g).tolist() for n in (40, 57, 33)]
    ref = [generate(m, [p], 12)[0] for p in prompts]  # one row each: no padding
    assert generate(m, prompts, 12, pad_id=0) == ref
    assert generate(m, prompts, 12, pad_id=0, chunk_size=7) == ref
    # scoring: chunked == one pass == log_softmax of a plain forward
    rows = [prompts[0], prompts[1]]
    a = score_tokens(m, rows, [10, 20])
    b = score_tokens(m, rows, [10, 20], chunk_size=5)
    lp = torch.log_softmax(m(torch.tensor([prompts[1]])).double(), -1)[0]
    want = [lp[t, prompts[1][t + 1]].item() for t in range(len(prompts[1]) - 21, len(prompts[1]) - 1)]
    assert a[1][0] == pytest.approx(want, abs=1e-5) and b[1][0] == pytest.approx(want, abs=1e-5)
    assert a[0][0] == pytest.approx(b[0][0], abs=1e-5) and len(a[0][0]) == 10


def test_train_seq_len_detection(tmp_path):
    m, tok = tiny_model(), Tokenizer.byte_level()
    rnope.save(tmp_path / "a", m, tok, extra={"train_seq_len": 128})
    rnope.save(tmp_path / "b", m, tok, extra={"stage": "long", "run": {"seq_len": 64, "stages": [
        {"name": "pre", "seq_len": 64}, {"name": "long", "seq_len": 192}, {"name": "later", "seq_len": 512}]}})
    rnope.save(tmp_path / "c", m, tok)
    assert detect_train_seq_len(tmp_path / "a", 256) == (128, "config.json train_seq_len")
    assert detect_train_seq_len(tmp_path / "b", 256)[0] == 192
    assert detect_train_seq_len(tmp_path / "c", 256) == (256, "model max_seq_len")
    assert load_predictor(str(tmp_path / "a")).train_seq_len == 128


def test_predictor_refuses_a_tokenizer_larger_than_the_vocab():
    """The Python entry point takes any tokenizer: one with more tokens than the embedding is
    another model's and is refused; fewer tokens (a padded vocabulary) is fine."""
    with pytest.raises(ValueError, match=r"^model 'small': tokenizer has 259 tokens but the model's vocab_size is 64 "
                                         r"\(a tokenizer may have fewer tokens than vocab_size, never more\)$"):
        ModelPredictor(tiny_model(vocab_size=64), Tokenizer.byte_level(), name="small")
    padded = ModelPredictor(tiny_model(vocab_size=320), Tokenizer.byte_level(), name="padded")
    assert len(padded.complete(["ab"], 2)) == 1
    assert ModelPredictor(tiny_model(vocab_size=64), None).tokenizer is None  # token-space evaluations


def test_parsers():
    assert parse_lengths("512,256,1k,256") == [256, 512, 1024]
    assert parse_depths("0:100:25") == [0.0, 25.0, 50.0, 75.0, 100.0]
    for bad in ("0,101", "-5", "x"):
        with pytest.raises(ValueError, match="--depths"):
            parse_depths(bad)
    with pytest.raises(ValueError, match="--lengths"):
        parse_lengths("12a")


# ------------------------------------------------------------------------------------ CLI
def _run(argv, capsys):
    rc = cli_main(argv)
    err = capsys.readouterr().err
    return rc, err


def test_cli_niah_and_ruler_on_a_checkpoint(ckpts, tmp_path, capsys):
    out = tmp_path / "out"
    rc, err = _run(["eval", "niah", "--ckpt", str(ckpts / "tiny"), "--out", str(out), "--lengths", "300,400",
                    "--depths", "0,100", "--samples", "2", "--batch-size", "4"], capsys)
    assert rc == 0, err
    assert "niah tiny" in err  # progress on stderr
    d = json.loads((out / "niah.json").read_text())
    assert d["models"]["tiny"]["config"]["pattern"] == "SSSN" and d["results"][0]["train_seq_len"] == 256
    assert png_size((out / "niah_tiny.png").read_bytes()) == heatmap_size(2, 2)
    rc, err = _run(["eval", "ruler", "--ckpt", str(ckpts / "tiny"), "--names", "m", "--out", str(out),
                    "--lengths", "1024", "--tasks", "niah_single_1,vt", "--samples", "1", "--gen-tokens", "4"], capsys)
    assert rc == 0, err
    r = json.loads((out / "ruler.json").read_text())["results"][0]
    assert r["model"] == "m" and [s["task"] for s in r["scores"]] == ["niah_single_1", "vt"]
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def test_cli_niah_heldout_wording_over_a_users_essay(ckpts, tmp_path, capsys):
    prose = tmp_path / "prose.txt"
    prose.write_text("The harbour was quiet that morning and the gulls sat on the posts.\n\n" * 20)
    out = tmp_path / "out"
    rc, err = _run(["eval", "niah", "--ckpt", str(ckpts / "tiny"), "--out", str(out), "--lengths", "400",
                    "--depths", "50", "--samples", "2", "--haystack", "essay", "--essay", str(prose),
                    "--wording", "heldout"], capsys)
    assert rc == 0, err
    d = json.loads((out / "niah.json").read_text())
    assert d["settings"]["wording"] == "heldout" and d["settings"]["haystack"] == "essay"
    assert d["settings"]["essay"] == "user essay"
    cell = d["results"][0]["cells"][0]
    assert cell["length"] == 400 and cell["n"] == 2 and 0.0 <= cell["accuracy"] <= 1.0


@pytest.mark.parametrize("argv, needle", [
    (["niah", "--lengths", "16"], ["length 16", "'passkey'"]),
    (["ruler", "--lengths", "16", "--tasks", "vt"], ["length 16", "'vt'"]),
    (["niah", "--depths", "0,150"], ["--depths", "150"]),
    (["niah", "--depths=-10,50"], ["--depths", "-10"]),
    (["ruler", "--tasks", "niah_single_1,bogus"], ["unknown task 'bogus'"]),
    (["ppl", "--lengths", "64,128", "--score-tokens", "64"], ["--score-tokens 64"]),
    (["mqar", "--lengths", "16", "--pairs", "8"], ["length 16", "8 pairs"]),
    (["niah", "--samples", "0"], ["--samples"]),
    (["niah", "--names", "a,b"], ["--names"]),
    (["niah", "--wording", "bogus"], ["--wording", "'bogus'"]),
    (["niah", "--essay", "prose.txt"], ["--essay needs --haystack essay"]),
    (["niah", "--haystack", "essay", "--essay", "missing.txt"], ["--essay: 'missing.txt' does not exist"]),
    (["ruler", "--essay", "missing_dir/"], ["--essay: 'missing_dir/' does not exist"]),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(ckpts, tmp_path, capsys, argv, needle):
    out = tmp_path / "out"
    rc, err = _run(["eval", argv[0], "--ckpt", str(ckpts / "tiny"), "--out", str(out), *argv[1:]], capsys)
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rnope: error: "), err
    for n in needle:
        assert n in lines[0], lines[0]
    assert not out.exists()


def test_bad_checkpoint_and_out(ckpts, tmp_path, capsys):
    out = tmp_path / "out"
    rc, err = _run(["eval", "niah", "--ckpt", str(ckpts / "notok"), "--out", str(out), "--lengths", "300"], capsys)
    assert rc == 2 and "tokenizer.json" in err and len(err.strip().splitlines()) == 1 and not out.exists()
    rc, err = _run(["eval", "niah", "--ckpt", str(tmp_path / "missing"), "--out", str(out)], capsys)
    assert rc == 2 and "does not exist" in err and not out.exists()
    f = tmp_path / "file"
    f.write_text("x")
    rc, err = _run(["eval", "niah", "--ckpt", str(ckpts / "tiny"), "--out", str(f)], capsys)
    assert rc == 2 and "not a directory" in err and f.read_text() == "x"
    rc, err = _run(["eval", "niah", "--ckpt", str(ckpts / "tiny"), "--ckpt", str(ckpts / "tiny"), "--out", str(out)],
                   capsys)
    assert rc == 2 and "--names" in err


# ------------------------------------------------------------------------------------ perplexity
class Recording(ModelPredictor):
    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.calls = []

    def token_logprobs(self, rows, n_score):
        self.calls.append(([list(r) for r in rows], n_score))
        return super().token_logprobs(rows, n_score)


def test_ppl_scores_identical_tokens_at_every_length(tmp_path):
    docs = [f"Document {i}: " + " ".join(f"w{i}x{j}" for j in range(40)) for i in range(12)]
    p = Recording(tiny_model(), Tokenizer.byte_level(), name="tiny", batch_size=2)
    lengths, S = [64, 128, 256], 32
    doc = ppl_eval.evaluate([p], lengths=lengths, score_tokens=S, streams=3, docs=docs, seed=0, progress=False)
    scored: dict[int, list[list[int]]] = {}
    for rows, n in p.calls:
        if n == S:
            scored.setdefault(len(rows[0]), []).extend(r[-S:] for r in rows)
    full = [r for rows, n in p.calls if n == 255 for r in rows]
    scored[256] = [r[-S:] for r in full]
    assert sorted(scored) == lengths and len(scored[64]) == 3
    assert scored[64] == scored[128] == scored[256]  # the very same token ids at every length
    for L in (64, 128):
        ctx = [r for rows, n in p.calls if n == S and len(rows[0]) == L for r in rows]
        assert all(c == f[-L:] for c, f in zip(ctx, full))  # contexts end where the streams end
    shas = {pt["scored_sha256"] for pt in doc["results"][0]["points"]}
    assert len(shas) == 1
    streams = ppl_eval.make_streams(docs, p.encode, 2, 256, 3, 0)
    ctxs = [ppl_eval.contexts(s, lengths) for s in streams]
    assert all(c[64][-S:] == c[256][-S:] for c in ctxs) and [c[256] for c in ctxs] == full


def test_ppl_uniform_model_is_vocab_size_via_cli(ckpts, tmp_path, capsys):
    out = tmp_path / "ppl"
    docs = tmp_path / "held.jsonl"
    docs.write_text("".join(json.dumps({"text": f"held-out document {i} " * 30}) + "\n" for i in range(10)))
    rc, err = _run(["eval", "ppl", "--ckpt", str(ckpts / "uniform"), "--ckpt", str(ckpts / "tiny"), "--out", str(out),
                    "--data", str(docs), "--val-fraction", "0", "--lengths", "64,128,256", "--score-tokens", "32",
                    "--docs", "2"], capsys)
    assert rc == 0, err
    d = json.loads((out / "ppl.json").read_text())
    uni = next(r for r in d["results"] if r["model"] == "uniform")
    assert [pt["length"] for pt in uni["points"]] == [64, 128, 256]
    for pt in uni["points"]:
        assert pt["ppl"] == pytest.approx(259.0, rel=1e-6) and pt["n_tokens"] == 64
    assert len({pt["scored_sha256"] for r in d["results"] for pt in r["points"]}) == 1
    assert all(v == pytest.approx(math.log(259), rel=1e-6) for v in uni["position_nll"]["nll"])
    for name in ("ppl.png", "ppl_position.png", "ppl.md"):
        assert (out / name).stat().st_size > 0
    rc, err = _run(["eval", "ppl", "--ckpt", str(ckpts / "tiny"), "--out", str(tmp_path / "x"), "--data", str(docs),
                    "--val-fraction", "0", "--lengths", "64,100000", "--score-tokens", "8"], capsys)
    assert rc == 2 and "fewer than one stream of 100000" in err and not (tmp_path / "x").exists()


# ------------------------------------------------------------------------------------ MQAR
class RecallFake:
    """Token-level double: perfect recall (``good``) or never right."""

    name, train_seq_len, batch_size = "fake", 128, 4
    info: dict = {}

    def __init__(self, good: bool):
        self.good = good
        self.config = SimpleNamespace(vocab_size=64)

    def token_logprobs(self, rows, n):
        out = []
        for r in rows:
            first: dict[int, tuple[int, int]] = {}  # key -> (position, value) of its pair
            greedy = []
            for k in range(len(r) - 1):  # greedy[k] is about token k + 1
                t = r[k]
                if t != 0 and k % 2 == 0 and t not in first:
                    first[t] = (k, r[k + 1])
                    greedy.append(False)
                else:
                    greedy.append(self.good and t in first and first[t][1] == r[k + 1])
            out.append(([0.0] * n, greedy[-n:]))
        return out


def test_mqar_accuracy_alignment_and_cli(ckpts, tmp_path, capsys):
    good = mqar_eval.evaluate([RecallFake(True)], lengths=[64, 128], pairs=[4, 8], samples=3, progress=False)
    bad = mqar_eval.evaluate([RecallFake(False)], lengths=[64, 128], pairs=[4, 8], samples=3, progress=False)
    assert all(c["accuracy"] == 1.0 for c in good["results"][0]["cells"])
    assert all(c["accuracy"] == 0.0 and c["n"] == 3 * c["pairs"] for c in bad["results"][0]["cells"])
    out = tmp_path / "mq"
    rc, err = _run(["eval", "mqar", "--ckpt", str(ckpts / "notok"), "--out", str(out), "--lengths", "32,64",
                    "--pairs", "4", "--samples", "2"], capsys)
    assert rc == 0, err  # token space: no tokenizer needed
    d = json.loads((out / "mqar.json").read_text())
    cell = d["results"][0]["cells"][0]
    assert set(cell) == {"length", "pairs", "accuracy", "n", "sequences", "by_gap"} and cell["n"] == 8
    assert (out / "mqar.png").exists() and (out / "mqar.md").exists()


# ------------------------------------------------------------------------------------ lm_eval
def test_lm_eval_adapter_loglikelihoods_are_exact_on_a_uniform_model(ckpts):
    adapter = pytest.importorskip("rnope.evals.lm_eval_adapter")
    if adapter.RnopeLM is None:
        pytest.skip("lm_eval not installed")
    lm = adapter.RnopeLM(pretrained=str(ckpts / "uniform"), device="cuda", batch_size=2)  # falls back to CPU
    reqs = [SimpleNamespace(args=("The pass key is", " 12345")), SimpleNamespace(args=("", "abc")),
            SimpleNamespace(args=("ctx ", "x"))]
    ll = lm.loglikelihood(reqs, disable_tqdm=True)
    assert [round(v / -math.log(259), 6) for v, _ in ll] == [6, 3, 2]  # "ctx " -> "ctx" + " x"
    text = "z" * 700  # longer than max_length 256: rolling windows
    (roll,) = lm.loglikelihood_rolling([SimpleNamespace(args=(text,))], disable_tqdm=True)
    assert roll == pytest.approx(-700 * math.log(259), rel=1e-6)
    gen = lm.generate_until([SimpleNamespace(args=("hello", {"until": ["\n"], "max_gen_toks": 5}))], disable_tqdm=True)
    assert isinstance(gen[0], str) and len(gen[0]) <= 5
    from lm_eval.api.registry import get_model

    assert get_model("rnope") is adapter.RnopeLM


def _lm_eval_task(tmp_path, monkeypatch):
    adapter = pytest.importorskip("rnope.evals.lm_eval_adapter")
    if adapter.RnopeLM is None:
        pytest.skip("lm_eval not installed")
    for k in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.setenv(k, "1")
    task_dir = tmp_path / "tasks"
    adapter.write_passkey_task(task_dir, n=3, lengths=[300])
    return adapter, task_dir


def test_lm_eval_oracle_scores_one_on_the_local_passkey_task(tmp_path, monkeypatch):
    adapter, task_dir = _lm_eval_task(tmp_path, monkeypatch)
    import lm_eval
    from lm_eval.tasks import TaskManager

    # the oracle through lm_eval's own prompt building, generation requests and metric: 1.0
    lm = adapter.RnopeLM(predictor=Oracle())
    tm = TaskManager(include_path=str(task_dir), include_defaults=False)
    res = lm_eval.simple_evaluate(model=lm, tasks=["rnope_passkey"], task_manager=tm)
    assert res["results"]["rnope_passkey"]["exact_match,none"] == 1.0
    assert list((task_dir / ".hf_cache").rglob("*.arrow"))  # the datasets cache stays in the task dir


@pytest.mark.slow
def test_lm_eval_cli_runs_the_local_tasks_offline(ckpts, tmp_path, monkeypatch):
    adapter, task_dir = _lm_eval_task(tmp_path, monkeypatch)
    # the real CLI path: registration by name, checkpoint loading, all three request types, no downloads
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "rnope.evals.lm_eval_adapter", "run", "--model", "rnope", "--model_args",
           f"pretrained={ckpts / 'tiny'}", "--device", "cpu", "--batch_size", "4", "--tasks",
           "rnope_passkey,rnope_passkey_ll,rnope_passkey_rolling", "--include_path", str(task_dir),
           "--output_path", str(tmp_path / "lm_out")]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (res_file,) = list((tmp_path / "lm_out").rglob("results_*.json"))
    r = json.loads(res_file.read_text())["results"]
    assert set(r) == set(adapter.TASK_NAMES)
    assert 0.0 <= r["rnope_passkey"]["exact_match,none"] <= 1.0
    assert r["rnope_passkey_rolling"]["byte_perplexity,none"] > 1.0
    assert not (tmp_path / "hf").exists() or not list((tmp_path / "hf").rglob("*.arrow"))


def test_models_are_labelled_by_run_name_and_the_preset_they_were_trained_from(tmp_path):
    """A run directory named like another preset ('swa' holding an rnope-swa) is labelled
    'swa (rnope-swa)' in every table and plot; its figure file name stays file-name safe."""
    from rnope.evals.args import file_safe, model_names

    m = tiny_model()
    swa = rnope.save(tmp_path / "swa", m, extra={"run": {"preset": "rnope-swa"}})
    same = rnope.save(tmp_path / "rnope-swa", m, extra={"run": {"preset": "rnope-swa"}})
    plain = rnope.save(tmp_path / "plain", m)
    assert model_names([str(swa), str(same), str(plain)]) == ["swa (rnope-swa)", "rnope-swa", "plain"]
    assert model_names([str(swa)], ["mine"]) == ["mine"]
    assert file_safe("swa (rnope-swa)") == "swa_rnope-swa"


def test_niah_default_lengths_start_where_the_template_fits(ckpts, tmp_path, capsys):
    """--lengths auto (the default): 1x-8x the training length, shifted to the first multiple the
    passkey template fits: a byte-level model of 256 tokens cannot hold it in 256 (259 needed)."""
    out = tmp_path / "ev"
    assert cli_main(["eval", "niah", "--ckpt", str(ckpts / "tiny"), "--out", str(out), "--samples", "1",
                     "--depths", "50"]) == 0
    assert "lengths: 512, 1024, 2048, 4096 (--lengths auto: 1x-8x the training length from the first multiple " \
           "the passkey template fits)" in capsys.readouterr().err
    doc = json.loads((out / "niah.json").read_text())
    assert doc["settings"]["lengths"] == [512, 1024, 2048, 4096] and doc["results"][0]["train_seq_len"] == 256
    with pytest.raises(ValueError, match=r"length 256 is too short for task 'passkey': the template alone needs 259 tokens"):
        niah_eval.build_items(load_predictor(str(ckpts / "tiny")), [256], [50.0], 1, 0)
