"""Inference-time NoPE-layer query scaling (rnope.nope_scale, docs/nope_scale.md): formulas, RoPE
layers untouched, ``none`` bit-identical, cached decode == full forward past the training length,
the c search and its storage, and the ``--nope-scale`` flags."""

from __future__ import annotations

import json
import math

import pytest
import torch

import rnope
from rnope import nope_scale as ns
from rnope.config import NopeOptions
from rnope.cli import main
from rnope.decode import Decoder
from rnope.tokenizer import Tokenizer

from .conftest import TINY, tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")

L_TRAIN = 16  # training length of the tiny models: decode tests run to 4x past it
BYTE = dict(vocab_size=259)


def _modes():
    # (mode, c, extra set_nope_scale kwargs); llama4 with a small floor so it changes something here
    return [("none", None, {}), ("llama4", None, {"floor": 4}), ("log", None, {}), ("log", 0.7, {})]


# ------------------------------------------------------------------------------------------ formulas
def test_beta_values_equal_the_formulas():
    pos = torch.tensor([0, 14, 15, 16, 31, 63, 1000, 8190, 8191, 100_000])
    L = 16
    log = [1 + 0.1 * math.log(max(1.0, (p + 1) / L)) for p in pos.tolist()]
    torch.testing.assert_close(ns.beta("log", pos, length=L), torch.tensor(log), rtol=0, atol=1e-6)
    log3 = [1 + 0.3 * math.log(max(1.0, (p + 1) / L)) for p in pos.tolist()]
    torch.testing.assert_close(ns.beta("log", pos, c=0.3, length=L), torch.tensor(log3), rtol=0, atol=1e-6)
    l4 = [1 + 0.1 * math.log(math.floor((p + 1) / 8192) + 1) for p in pos.tolist()]
    torch.testing.assert_close(ns.beta("llama4", pos), torch.tensor(l4), rtol=0, atol=1e-6)
    l4b = [1 + 0.2 * math.log(math.floor((p + 1) / 8) + 1) for p in pos.tolist()]
    torch.testing.assert_close(ns.beta("llama4", pos, c=0.2, length=8), torch.tensor(l4b), rtol=0, atol=1e-6)
    assert torch.equal(ns.beta("none", pos), torch.ones(len(pos)))
    # inside the training length the log scale is exactly 1
    assert torch.equal(ns.beta("log", torch.arange(L), c=0.5, length=L), torch.ones(L))
    # at p + 1 = 4 L: 1 + c ln 4 (DroPE's 1 + c ln(L_test / L_train))
    assert ns.beta("log", torch.tensor([4 * L - 1]), c=0.25, length=L).item() == pytest.approx(1 + 0.25 * math.log(4))


def test_config_of_each_mode():
    m = tiny_model("rnope-swa", max_seq_len=64)
    cfg = ns.set_nope_scale(m, "log", train_seq_len=L_TRAIN)
    assert cfg.nope == NopeOptions(temperature="log", scale=0.1, floor=L_TRAIN)
    assert m.config is cfg and m.layers[3].self_attn.spec.nope_options.temperature == "log"
    assert [s.nope_options and s.nope_options.temperature for s in cfg.layers] == [None, None, None, "log"]
    cfg = ns.set_nope_scale(m, "log", 0.3)  # L_train defaults to max_seq_len
    assert (cfg.nope.scale, cfg.nope.floor) == (0.3, 64)
    cfg = ns.set_nope_scale(m, "llama4")
    assert cfg.nope == NopeOptions(temperature="llama4", scale=0.1, floor=8192)
    cfg = ns.set_nope_scale(m, "none")
    assert cfg.nope.temperature == "none" and m.layers[3].self_attn.spec.nope_options.temperature == "none"
    # a checkpoint trained with llama4 keeps its own constants
    t = tiny_model("rnope-swa-temp", nope={"floor": 4, "scale": 0.2})
    cfg = ns.set_nope_scale(t, "llama4")
    assert (cfg.nope.scale, cfg.nope.floor) == (0.2, 4)
    # NoPE sliding layers (W) are NoPE layers too
    w = tiny_model("rnope-swa", pattern="SW")
    assert [s.nope_options and s.nope_options.temperature for s in ns.set_nope_scale(w, "log").layers] == [None, "log"] * 2


# ------------------------------------------------------------------------------------------ the model
@torch.no_grad()
def test_none_is_bit_identical():
    x = torch.randint(0, TINY["vocab_size"], (2, 5 * L_TRAIN))
    base = tiny_model("rnope-swa", max_seq_len=L_TRAIN)
    want = base(x)
    m = tiny_model("rnope-swa", max_seq_len=L_TRAIN)
    ns.set_nope_scale(m, "log", 0.5)
    ns.set_nope_scale(m, "none")
    assert torch.equal(m(x), want)
    # a model trained with a temperature, switched to none, is the unscaled model
    t = tiny_model("rnope-swa-temp", max_seq_len=L_TRAIN, nope={"floor": 4})
    assert not torch.equal(t(x), want)
    ns.set_nope_scale(t, "none")
    assert torch.equal(t(x), want)
    # log inside the training length: beta is exactly 1
    ns.set_nope_scale(m, "log", 0.5, train_seq_len=L_TRAIN)
    assert torch.equal(m(x[:, :L_TRAIN]), want[:, :L_TRAIN])


@pytest.mark.parametrize("mode,c,kw", _modes())
@torch.no_grad()
def test_rope_layers_untouched_nope_queries_scaled(mode, c, kw):
    x = torch.randint(0, TINY["vocab_size"], (1, 4 * L_TRAIN))
    seen = {}

    def obs(name):
        return lambda i, spec, q, k, *a: seen.setdefault(name, {}).__setitem__(i, (q.clone(), k.clone()))

    m = tiny_model("rnope-swa", max_seq_len=L_TRAIN)
    m(x, observer=obs("base"))
    ns.set_nope_scale(m, mode, c, train_seq_len=L_TRAIN, **kw)
    m(x, observer=obs("scaled"))
    for i in (0, 1, 2):  # RoPE layers: bit-identical queries and keys
        assert torch.equal(seen["base"][i][0], seen["scaled"][i][0])
        assert torch.equal(seen["base"][i][1], seen["scaled"][i][1])
    q0, q1 = seen["base"][3][0], seen["scaled"][3][0]
    assert torch.equal(seen["base"][3][1], seen["scaled"][3][1])  # keys unscaled
    b = ns.beta(mode, torch.arange(x.shape[1]), c, kw.get("floor", L_TRAIN))
    torch.testing.assert_close(q1, q0 * b[None, None, :, None], rtol=0, atol=1e-6)
    if mode != "none":
        assert not torch.equal(q0, q1)


def _decode_all(model, tokens, prefill, mask=None):
    """Logits at every position: prefill the first ``prefill`` tokens into a cache, then
    rnope.decode.Decoder one token at a time. Also returns the model's own cache path token by token."""
    B, T = tokens.shape
    cache = model.new_cache(B, T)
    out = [model(tokens[:, :prefill], cache=cache, attention_mask=None if mask is None else mask[:, :prefill])]
    dec = Decoder(model, cache)
    for i in range(prefill, T):
        out.append(dec(tokens[:, i])[:, None])
    cache2 = model.new_cache(B, T)
    out2 = [model(tokens[:, :prefill], cache=cache2, attention_mask=None if mask is None else mask[:, :prefill])]
    for i in range(prefill, T):
        out2.append(model(tokens[:, i : i + 1], cache=cache2))
    return torch.cat(out, 1), torch.cat(out2, 1)


@pytest.mark.parametrize("mode,c,kw", _modes())
@torch.no_grad()
def test_cached_decode_equals_full_forward_past_training_length(mode, c, kw):
    m = tiny_model("rnope-swa", max_seq_len=L_TRAIN)
    ns.set_nope_scale(m, mode, c, train_seq_len=L_TRAIN, **kw)
    x = torch.randint(0, TINY["vocab_size"], (2, 4 * L_TRAIN + 3))
    full = m(x)
    for prefill in (1, L_TRAIN + 5):
        fast, model_cache = _decode_all(m, x, prefill)
        assert (fast - full).abs().max().item() <= 1e-4
        assert (model_cache - full).abs().max().item() <= 1e-4
    if mode != "none":  # the scale changes the logits past the training length
        ns.set_nope_scale(m, "none")
        assert (m(x) - full)[:, 2 * L_TRAIN :].abs().max().item() > 1e-3


@torch.no_grad()
def test_cached_decode_left_padded_rows_use_their_own_positions():
    m = tiny_model("rnope-swa", max_seq_len=L_TRAIN)
    ns.set_nope_scale(m, "log", 0.5, train_seq_len=L_TRAIN)
    lens, extra = [3 * L_TRAIN, 2 * L_TRAIN + 1], 20
    T = max(lens) + extra
    rows = [torch.randint(0, TINY["vocab_size"], (n + extra,)) for n in lens]
    tokens = torch.zeros(2, T, dtype=torch.long)
    mask = torch.zeros(2, T, dtype=torch.long)
    for i, r in enumerate(rows):
        tokens[i, T - len(r) :], mask[i, T - len(r) :] = r, 1
    fast, _ = _decode_all(m, tokens, max(lens), mask)
    for i, r in enumerate(rows):
        alone = m(r[None])
        assert (fast[i, T - len(r) :] - alone[0]).abs().max().item() <= 1e-4


# ------------------------------------------------------------------------------------------ refusals
def test_refusals_are_one_line():
    swa = tiny_model("swa")
    ns.set_nope_scale(swa, "none")  # nothing to scale: fine
    for mode in ("llama4", "log"):
        with pytest.raises(ValueError) as e:
            ns.set_nope_scale(swa, mode)
        assert str(e.value) == f"nope_scale {mode}: the model has no NoPE layer (pattern S)"
    with pytest.raises(ValueError) as e:
        ns.check_config(tiny_model("rnope-swa", pattern="SSSS").config, "fitted", "--nope-scale", "runs/x")
    assert str(e.value) == "--nope-scale fitted: the model 'runs/x' has no NoPE layer (pattern SSSS)"
    with pytest.raises(ValueError) as e:
        ns.set_nope_scale(tiny_model("rnope-swa-ssmax"), "log")
    assert str(e.value) == ("nope_scale log: the model scales its NoPE queries by a learned Scalable-Softmax "
                            "(nope.temperature 'ssmax'), which nope_scale cannot replace")
    with pytest.raises(ValueError, match=r"^nope_scale must be none, llama4, log or fitted, got 'cubic'$"):
        ns.set_nope_scale(tiny_model("rnope-swa"), "cubic")
    with pytest.raises(ValueError, match=r"^nope_scale log: c must be a finite number >= 0, got -1$"):
        ns.set_nope_scale(tiny_model("rnope-swa"), "log", -1)


@pytest.mark.parametrize("value,msg", [
    ("cubic", "--nope-scale must be none, llama4, log, log:C or fitted, got 'cubic'"),
    ("LOG", "--nope-scale must be none, llama4, log, log:C or fitted, got 'LOG'"),
    ("log:", "--nope-scale log:: c must be a finite number >= 0, got ''"),
    ("log:x", "--nope-scale log:x: c must be a finite number >= 0, got 'x'"),
    ("log:-0.1", "--nope-scale log:-0.1: c must be a finite number >= 0, got '-0.1'"),
    ("log:nan", "--nope-scale log:nan: c must be a finite number >= 0, got 'nan'"),
])
def test_parse_mode_errors(value, msg):
    with pytest.raises(ValueError) as e:
        ns.parse_mode(value)
    assert str(e.value) == msg


def test_parse_mode_values():
    assert ns.parse_mode(None) == (None, None)
    assert [ns.parse_mode(m) for m in ns.MODES] == [(m, None) for m in ns.MODES]
    assert ns.parse_mode("log:0.25") == ("log", 0.25)


# ------------------------------------------------------------------------------------------ fitting
def test_minimize_returns_the_argmin_of_a_synthetic_objective():
    calls = []

    def f(x):
        calls.append(x)
        return (x - 0.37) ** 2

    x, fx, seen = ns.minimize(f, 0.0, 1.0, grid=11, iters=12)
    assert abs(x - 0.37) < 2e-3 and fx == min(v for _, v in seen) and len(calls) == len(seen) == 11 + 12
    # grid only: the grid point nearest the minimum; ties go to the first
    x, _, seen = ns.minimize(lambda v: abs(v - 0.62), 0.0, 1.0, grid=11, iters=0)
    assert x == pytest.approx(0.6) and len(seen) == 11
    x, _, _ = ns.minimize(lambda v: 1.0, 0.0, 1.0, grid=5, iters=0)
    assert x == 0.0
    # a minimum at the edge of the range
    x, _, _ = ns.minimize(lambda v: v, 0.0, 1.0, grid=5, iters=6)
    assert x == 0.0


@pytest.fixture
def ckpt(tmp_path):
    m = tiny_model("rnope-swa", max_seq_len=64, **BYTE)
    return rnope.save(tmp_path / "ck", m, Tokenizer.byte_level(), extra={"train_seq_len": L_TRAIN})


def test_fit_stores_c_and_a_reload_reuses_it(ckpt, monkeypatch):
    model, tok = rnope.load(ckpt)
    before = model.config
    res = ns.fit(model, tok, L_TRAIN, streams=2, grid=5, iters=2)
    assert model.config is before  # the config is restored
    evaluated = dict(map(tuple, res["evaluated"]))
    assert len(evaluated) == 7 and res["c"] in evaluated and res["nll"] == min(evaluated.values())
    assert res["nll_c0"] == evaluated[0.0] and res["scored_tokens"] == [2 * L_TRAIN, 4 * L_TRAIN]
    # the objective is the NLL of the scored tokens under log with that c
    ns.set_nope_scale(model, "log", res["c"], train_seq_len=L_TRAIN)
    from rnope.evals.ppl import heldout_documents, make_streams

    rows = make_streams(heldout_documents(), tok.encode, tok.eos_id, 4 * L_TRAIN, 2, 0)
    assert ns._nll(model, rows, 2 * L_TRAIN, 4) == pytest.approx(res["nll"], rel=1e-9)

    path = ns.save_fit(ckpt, res)
    meta = json.loads(path.read_text())
    assert meta["nope_scale"]["c"] == res["c"] and meta["nope_scale"]["train_seq_len"] == L_TRAIN
    assert "evaluated" not in meta["nope_scale"] and meta["model"]["nope"]["temperature"] == "none"
    rnope.load(ckpt)  # the checkpoint still loads and verifies (checksums cover the weights only)

    def no_refit(*a, **k):
        raise AssertionError("refitted")

    monkeypatch.setattr(ns, "fit", no_refit)
    m2, _ = ns.load(ckpt, "fitted")
    assert m2.config.nope == NopeOptions(temperature="log", scale=res["c"], floor=L_TRAIN)
    m3, _ = ns.load(ckpt)  # no mode: as saved
    assert m3.config.nope.temperature == "none"


def test_stored_fit_must_be_well_formed(ckpt):
    meta = json.loads((ckpt / "config.json").read_text())
    meta["nope_scale"] = {"c": -1, "train_seq_len": 16}
    (ckpt / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"config.json: 'nope_scale' must be an object with a number c >= 0"):
        ns.load(ckpt, "fitted")


def test_log_uses_the_checkpoints_training_length(ckpt):
    m, _ = ns.load(ckpt, "log")
    assert m.config.nope == NopeOptions(temperature="log", scale=0.1, floor=L_TRAIN)
    m, _ = ns.load(ckpt, "log:0.4")
    assert m.config.nope.scale == 0.4


# ------------------------------------------------------------------------------------------ CLI
def _err(capsys):
    return capsys.readouterr().err.strip()


def test_cli_eval_ppl_fits_stores_then_reuses(ckpt, tmp_path, capsys):
    out = tmp_path / "ppl"
    argv = ["eval", "ppl", "--ckpt", str(ckpt), "--lengths", "64,96", "--docs", "1", "--score-tokens", "16",
            "--device", "cpu"]
    assert main([*argv, "--out", str(out), "--nope-scale", "fitted", "--save-fit"]) == 0, _err(capsys)
    err = _err(capsys)
    c = json.loads((ckpt / "config.json").read_text())["nope_scale"]["c"]
    doc = json.loads((out / "ppl.json").read_text())
    info = doc["models"]["ck"]["nope_scale"]
    assert info["mode"] == "fitted" and info["c"] == c and info["train_seq_len"] == L_TRAIN
    assert doc["models"]["ck"]["config"]["nope"]["temperature"] == "log"
    assert "nope-scale fitted: beta = 1 + " in err and "fitted now, stored in" in err
    out2 = tmp_path / "ppl2"
    assert main([*argv, "--out", str(out2), "--nope-scale", "fitted"]) == 0
    err = _err(capsys)
    assert "stored in" in err and "fitting c" not in err
    assert json.loads((out2 / "ppl.json").read_text())["models"]["ck"]["nope_scale"]["c"] == c


def test_cli_eval_niah_generate_analyze_accept_the_flag(ckpt, tmp_path, capsys):
    out = tmp_path / "niah"
    assert main(["eval", "niah", "--ckpt", str(ckpt), "--out", str(out), "--lengths", "300", "--depths", "50",
                 "--samples", "1", "--device", "cpu", "--nope-scale", "log:0.2"]) == 0, _err(capsys)
    info = json.loads((out / "niah.json").read_text())["models"]["ck"]["nope_scale"]
    assert (info["mode"], info["c"], info["train_seq_len"]) == ("log", 0.2, L_TRAIN)
    assert "nope-scale log: beta = 1 + 0.2*ln(max(1, (p+1)/16)) on NoPE layers (given)" in _err(capsys)
    assert main(["generate", "--ckpt", str(ckpt), "--prompt", "hi", "--max-new-tokens", "3", "--device", "cpu",
                 "--nope-scale", "llama4"]) == 0
    assert "nope-scale llama4: beta = 1 + 0.1*ln(floor((p+1)/8192) + 1) on NoPE layers" in _err(capsys)
    out = tmp_path / "an"
    assert main(["analyze", "--ckpt", str(ckpt), "--lengths", "300", "--samples", "1", "--out", str(out),
                 "--no-figures", "--nope-scale", "log"]) == 0, _err(capsys)
    doc = json.loads((out / "analysis.json").read_text())
    assert doc["nope_scale"]["ck"]["mode"] == "log" and doc["nope_scale"]["ck"]["c"] == 0.1


@pytest.mark.parametrize("cmd", ["niah", "ppl", "mqar", "generate", "analyze"])
def test_cli_refusals(ckpt, tmp_path, capsys, cmd):
    swa = rnope.save(tmp_path / "swa", tiny_model("swa", max_seq_len=64, **BYTE), Tokenizer.byte_level())
    out = tmp_path / "out"

    def argv(path, mode):
        if cmd == "generate":
            return ["generate", "--ckpt", str(path), "--prompt", "hi", "--max-new-tokens", "2", "--nope-scale", mode]
        if cmd == "analyze":
            return ["analyze", "--ckpt", str(path), "--lengths", "300", "--out", str(out), "--nope-scale", mode]
        return ["eval", cmd, "--ckpt", str(path), "--out", str(out), "--nope-scale", mode]

    assert main(argv(ckpt, "cubic")) == 2
    assert _err(capsys) == "rnope: error: --nope-scale must be none, llama4, log, log:C or fitted, got 'cubic'"
    assert main(argv(ckpt, "log:-1")) == 2
    assert _err(capsys) == "rnope: error: --nope-scale log:-1: c must be a finite number >= 0, got '-1'"
    assert main(argv(swa, "fitted")) == 2
    assert _err(capsys) == f"rnope: error: --nope-scale fitted: the model '{swa}' has no NoPE layer (pattern S)"
    assert not out.exists()
    before = (swa / "config.json").read_text()
    if cmd == "ppl":
        assert main(argv(ckpt, "log") + ["--save-fit"]) == 2
        assert _err(capsys) == "rnope: error: --save-fit needs --nope-scale fitted"
        assert main(argv(swa, "fitted") + ["--save-fit"]) == 2
        assert "has no NoPE layer (pattern S)" in _err(capsys)
        assert (swa / "config.json").read_text() == before and not out.exists()
