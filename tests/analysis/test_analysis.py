"""Attention analysis: chunked capture, segment masses, entropy, report and CLI."""

import json
import math

import numpy as np
import pytest
import torch
import torch.nn as nn

from rnope import ModelConfig, save
from rnope.analysis import (
    SEGMENTS,
    analyze,
    attention_rows,
    build_probe,
    capture_weights,
    layer_groups,
    measure,
    row_entropy,
    segment_labels,
    segment_mass,
    token_span,
    uniform_reference,
    write_report,
)
from rnope.analysis.plots import plot_entropy_positions, plot_position_profile, plot_segments
from rnope.analysis.segments import BEGIN, CONTEXT, END, NEEDLE, encode_with_offsets
from rnope.cli import main
from rnope.kernels import reference_attention, visibility
from rnope.tokenizer import Tokenizer

from ..conftest import TINY, tiny_model
from ..figcheck import SCIENTIFIC, captured_figures, renderer, tick_labels, unreadable

BYTE = dict(TINY, vocab_size=259)  # byte-level tokenizer ids
LEN = 300  # just above the passkey minimum with the byte-level tokenizer (259 tokens)


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.byte_level()


@pytest.fixture(scope="module")
def probe(tok):
    return build_probe(tok, LEN, 0)


def _zero_q(model):
    with torch.no_grad():
        for block in model.layers:
            block.self_attn.q_proj.weight.zero_()
    return model


def _expected_uniform(probe, spec):
    """Segment fractions and ln n of uniform attention over each End query's visible keys."""
    labels = probe.labels
    segs, refs = [], []
    for t in probe.end_index:
        lo = max(0, t - spec.window + 1) if spec.span == "sliding" else 0
        window = labels[lo : t + 1]
        n = len(window)
        segs.append([np.sum(window == s) / n for s in range(4)])
        refs.append(math.log(n))
    return np.mean(segs, axis=0), float(np.mean(refs))


# ------------------------------------------------------------------------------------------- segments
def test_token_spans_follow_character_offsets_with_multibyte_chars(tok):
    text = "ab é€ 😀x. The pass"
    ids, offsets = encode_with_offsets(tok, text)
    assert ids == tok.encode(text) and len(ids) == len(text.encode("utf-8"))
    e = text.index("é")
    assert token_span(offsets, (e, e + 1)) == (3, 5)  # both UTF-8 bytes of é
    s = text.index("😀")
    a, b = token_span(offsets, (s, s + 1))
    assert b - a == 4 and bytes(i - 3 for i in ids[a:b]).decode() == "😀"
    assert token_span(offsets, (3, 3)) == (0, 0)  # empty span
    bpe = Tokenizer.train_bpe(["The pass key is 12345. Remember it. é€ 😀 " * 40], 300)
    ids, offsets = encode_with_offsets(bpe, text)
    span = (text.index("The"), len(text))
    a, b = token_span(offsets, span)
    assert bpe.decode(ids[a:b]).strip() == "The pass"


def test_segment_labels_precedence():
    offsets = [(i, i + 1) for i in range(30)]
    lab = segment_labels(30, offsets, [(8, 14)], (25, 30), begin_tokens=10)
    assert list(lab[:10]) == [BEGIN] * 10  # Begin wins over the needle's first tokens
    assert list(lab[10:14]) == [NEEDLE] * 4 and list(lab[14:25]) == [CONTEXT] * 11 and list(lab[25:]) == [END] * 5


def test_probe_segments(probe, tok):
    assert len(probe.tokens) <= LEN and probe.item.depth == 50.0 and probe.item.meta["split"] == "eval"
    counts = probe.segment_tokens()
    assert counts["begin"] == 10 and counts["end"] == len("What is the pass key? The pass key is")
    needle = [probe.tokens[i] for i in np.flatnonzero(probe.labels == NEEDLE)]
    assert tok.decode(needle) == probe.item.needles[0]
    assert probe.end_index[-1] == len(probe.tokens) - 1


# ------------------------------------------------------------------------------------------- capture
@pytest.mark.parametrize("preset", ["rnope-swa", "rnope", "qknorm"])
def test_chunked_capture_equals_reference_attention(preset, probe):
    model = tiny_model(preset, **BYTE)
    tokens = torch.tensor([probe.tokens])
    queries = probe.end_index
    seen = {}

    def keep(i, spec, q, k, q_time, k_time, start):
        seen[i] = (spec, q.clone(), k.clone(), q_time, k_time)

    with torch.no_grad():
        model(tokens, observer=keep)
    chunked = capture_weights(model, tokens, queries, chunk_bytes=1)  # one query row per chunk
    whole = capture_weights(model, tokens, queries)
    assert len(chunked) == model.config.n_layer
    for i, (spec, q, k, q_time, k_time) in seen.items():
        allowed = visibility(q_time, k_time, spec)
        _, ref = reference_attention(q, k, k, allowed, need_weights=True)
        torch.testing.assert_close(chunked[i], ref[:, :, queries], atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(whole[i], chunked[i], atol=1e-6, rtol=1e-5)


def test_attention_rows_chunks_are_bounded(probe):
    q = torch.randn(1, 4, 64, 8)
    k = torch.randn(1, 2, 64, 8)
    t = torch.arange(64)
    spec = ModelConfig.from_preset("rope", **TINY).layers[0]
    sizes = [idx.numel() for idx, _, _ in attention_rows(q, k, t, t, spec, queries=range(64), chunk_bytes=4 * 64 * 9 * 5)]
    assert sizes == [5] * 12 + [4]


def test_rows_sum_to_one_and_segment_masses_sum_to_one(probe):
    model = tiny_model("rnope-swa", **BYTE)
    labels = torch.as_tensor(probe.labels)
    for w in capture_weights(model, torch.tensor([probe.tokens]), probe.end_index):
        torch.testing.assert_close(w.sum(-1), torch.ones(w.shape[:-1]), atol=1e-5, rtol=0)
        mass = segment_mass(w, labels)
        assert mass.shape[-1] == 4
        torch.testing.assert_close(mass.sum(-1), torch.ones(w.shape[:-1]), atol=1e-4, rtol=0)
    st = measure(model, probe)
    np.testing.assert_allclose(st["segments"].sum(-1), 1.0, atol=1e-4)


# -------------------------------------------------------------------------------------- known attention
def test_uniform_attention_gives_token_fractions_and_ln_n(probe, tok):
    """q = 0 => every row is uniform over its visible keys: masses = token fractions, entropy = ln n."""
    model = _zero_q(tiny_model("rnope-swa", **BYTE))
    specs = model.config.layers
    st = measure(model, probe, positions=[0, 1, 5, 7, 8, 100, len(probe.tokens) - 1])
    for i, spec in enumerate(specs):
        seg, ref = _expected_uniform(probe, spec)
        np.testing.assert_allclose(st["segments"][i], np.broadcast_to(seg, st["segments"][i].shape), atol=1e-6)
        np.testing.assert_allclose(st["entropy"][i], ref, atol=1e-5)
        assert st["reference"][i] == pytest.approx(ref, abs=1e-9)
        n = [min(p + 1, spec.window) if spec.span == "sliding" else p + 1 for p in (0, 1, 5, 7, 8, 100, len(probe.tokens) - 1)]
        np.testing.assert_allclose(st["pos_entropy"][i], np.broadcast_to(np.log(n), st["pos_entropy"][i].shape), atol=1e-5)
        np.testing.assert_allclose(st["pos_reference"][i], np.log(n), atol=1e-9)
    assert st["segments"][3, 0, 2] > 0.5  # the full layer spreads over the whole prompt: mostly Context
    # the same through the public API (JSON numbers rounded to 6 significant digits)
    (r,) = analyze(model, tok, [LEN], 1, 0)
    for i, spec in enumerate(specs):
        seg, ref = _expected_uniform(probe, spec)
        row = r["per_layer"][i]
        assert [row[k] for k in SEGMENTS] == pytest.approx(list(seg), abs=1e-5)
        assert row["entropy"] == pytest.approx(ref, abs=1e-4) and row["uniform_reference"] == pytest.approx(ref, abs=1e-4)
    assert r["entropy"]["all"] == pytest.approx(r["entropy"]["uniform_reference"], abs=1e-4)
    assert r["entropy"]["base"] == "e"


class _Const(nn.Module):
    """A stand-in projection: the same vector at every position (``first`` overrides position 0)."""

    def __init__(self, width, value, first=None):
        super().__init__()
        self.width, self.value, self.first = width, value, first

    def forward(self, x):
        out = torch.full((*x.shape[:-1], self.width), self.value, dtype=x.dtype)
        if self.first is not None:
            out[:, 0] = self.first
        return out


def test_sink_on_key_zero_puts_all_mass_on_begin(probe, tok):
    model = tiny_model("nope", **BYTE)
    cfg = model.config
    for block in model.layers:  # q = 1 everywhere; k = 40 at position 0, 0 elsewhere
        block.self_attn.q_proj = _Const(cfg.n_head * cfg.head_dim, 1.0)
        block.self_attn.k_proj = _Const(cfg.n_kv_head * cfg.head_dim, 0.0, first=40.0)
    st = measure(model, probe)
    np.testing.assert_allclose(st["segments"][..., 0], 1.0, atol=1e-6)
    np.testing.assert_allclose(st["entropy"], 0.0, atol=1e-4)
    (r,) = analyze(model, tok, [LEN], 1, 0)
    assert r["segments"]["all"]["begin"] == pytest.approx(1.0, abs=1e-6)
    assert set(r["segments"]) == {"all", "nope_layers", "global_layers"}  # absent layer types omitted


def test_synthetic_qk_sink_on_rope_spec():
    """Observer-level check on synthetic post-RoPE q/k: a huge q.k for key 0 only => Begin gets it all."""
    spec = ModelConfig.from_preset("rope", **TINY).layers[0]
    T, D = 40, 8
    q = torch.ones(1, 4, T, D)
    k = torch.randn(1, 2, T, D) * 0.01
    k[:, :, 0] = 100.0
    t = torch.arange(T)
    labels = torch.full((T,), CONTEXT)
    labels[:10] = BEGIN
    labels[-5:] = END
    for idx, w, allowed in attention_rows(q, k, t, t, spec, queries=range(T - 5, T), chunk_bytes=1):
        torch.testing.assert_close(segment_mass(w, labels)[..., 0], torch.ones(1, 4, 1))
        assert float(row_entropy(w).max()) < 1e-4 and uniform_reference(allowed).item() == pytest.approx(math.log(int(idx) + 1))


def test_row_entropy_nats():
    w = torch.tensor([[0.25, 0.25, 0.25, 0.25, 0.0], [1.0, 0, 0, 0, 0]])
    torch.testing.assert_close(row_entropy(w), torch.tensor([math.log(4), 0.0]))


# ------------------------------------------------------------------------------------------ aggregates
def test_layer_type_aggregates_use_the_right_layers(tok):
    model = tiny_model("rnope-swa", **BYTE)
    assert layer_groups(model.config.layers) == {
        "all": [0, 1, 2, 3], "rope_layers": [0, 1, 2], "nope_layers": [3], "sliding_layers": [0, 1, 2], "global_layers": [3]
    }
    (r,) = analyze(model, tok, [LEN], 2, 0)
    assert [(p["layer"], p["rope"], p["span"]) for p in r["per_layer"]] == [
        (0, True, "sliding"), (1, True, "sliding"), (2, True, "sliding"), (3, False, "full")
    ]
    seg = r["segments"]
    assert set(seg) == {"all", "rope_layers", "nope_layers", "sliding_layers", "global_layers"}
    for k in SEGMENTS:
        rope = np.mean([r["per_layer"][i][k] for i in (0, 1, 2)])
        assert seg["rope_layers"][k] == pytest.approx(rope, abs=1e-5) and seg["sliding_layers"][k] == seg["rope_layers"][k]
        assert seg["nope_layers"][k] == pytest.approx(r["per_layer"][3][k], abs=1e-5) and seg["global_layers"] == seg["nope_layers"]
        assert seg["all"][k] == pytest.approx(np.mean([p[k] for p in r["per_layer"]]), abs=1e-5)
        for p in r["per_layer"]:  # per-layer value = mean over heads
            assert p[k] == pytest.approx(np.mean([h[k] for h in p["heads"]]), abs=1e-5)
    assert sum(seg["all"].values()) == pytest.approx(1.0, abs=1e-4)
    assert r["entropy"]["per_layer"] == pytest.approx([p["entropy"] for p in r["per_layer"]])
    pp = r["position_profile"]
    assert len(pp["mass"]["all"]) == pp["bins"] and pp["excluded"] == {"first_tokens": 10, "last_fraction": 0.03}
    assert 0.4 < pp["needle_position"] < 0.7 and pp["bin_centers"][0] > 10 / r["tokens"] - 1e-9
    assert pp["bin_centers"][-1] < 0.97


def test_rope_only_model_omits_nope_and_sliding_groups(tok):
    (r,) = analyze(tiny_model("rope", **BYTE), tok, [LEN], 1, 0)
    assert set(r["segments"]) == {"all", "rope_layers", "global_layers"}


def test_bad_api_input(tok):
    model = tiny_model("rnope-swa", **BYTE)
    with pytest.raises(ValueError, match="length 64 is too short"):
        analyze(model, tok, [64], 1, 0)
    with pytest.raises(ValueError, match="samples"):
        analyze(model, tok, [LEN], 0, 0)


def test_analyze_refuses_a_tokenizer_larger_than_the_vocab(tok):
    """The byte-level tokenizer (259 tokens) on a 61-token model: refused by name and sizes before
    any probe is built, not left to fail on whichever id first falls outside the embedding."""
    with pytest.raises(ValueError, match=r"^model 'small': tokenizer has 259 tokens but the model's vocab_size is 61 "
                                         r"\(a tokenizer may have fewer tokens than vocab_size, never more\)$"):
        analyze(tiny_model("rnope-swa"), tok, [LEN], 1, 0, name="small")


# -------------------------------------------------------------------------------------------- report
def test_write_report_files_and_schema(tmp_path, tok):
    model = tiny_model("rnope-swa", **BYTE)
    res = analyze(model, tok, [LEN], 1, 0, name="swa")
    res += analyze(tiny_model("rope", **BYTE), tok, [400], 1, 0, name="rope")
    doc = {"results": res, "seed": 0, "versions": {"rnope": "x"}}
    paths = write_report(tmp_path / "o", doc)
    names = sorted(p.name for p in paths)
    assert "analysis.json" in names and "segments.png" in names and "position_profile.png" in names
    assert "entropy_swa_300.png" in names and "entropy_rope_400.png" in names
    assert not [p for p in (tmp_path / "o").iterdir() if p.name.startswith(".")]  # no temp files left
    back = json.loads((tmp_path / "o" / "analysis.json").read_text())
    assert back == json.loads(json.dumps(doc))
    md = (tmp_path / "o" / "analysis.md").read_text()
    assert "| length | model | begin | needle | context | end |" in md
    assert "| NoPE-layer needle | NoPE-layer end | RoPE-layer needle | RoPE-layer end |" in md
    assert "| rope | 400 | – | – |" in md  # the RoPE-only model has no NoPE layers
    assert "nats" in md


# ----------------------------------------------------------------------------------------------- CLI
@pytest.fixture
def ckpts(tmp_path, tok):
    save(tmp_path / "a", tiny_model("rnope-swa", **BYTE), tok)
    save(tmp_path / "b", tiny_model("nope", **BYTE), tok)
    return tmp_path


def test_cli_two_models(ckpts, capsys):
    out = ckpts / "out"
    rc = main(["analyze", "--ckpt", str(ckpts / "a"), "--ckpt", str(ckpts / "b"), "--names", "swa,nope",
               "--lengths", "300,400", "--samples", "2", "--out", str(out), "--seed", "3", "--no-figures"])
    assert rc == 0
    doc = json.loads((out / "analysis.json").read_text())
    assert [(r["model"], r["length"]) for r in doc["results"]] == [("swa", 300), ("swa", 400), ("nope", 300), ("nope", 400)]
    assert doc["seed"] == 3 and "rnope" in doc["versions"]
    for r in doc["results"]:
        assert set(r["segments"]["all"]) == set(SEGMENTS) and r["samples"] == 2
    assert (out / "analysis.md").exists() and not (out / "segments.png").exists()


@pytest.mark.parametrize(
    "argv,msg",
    [
        (["--lengths", "64"], "length 64 is too short for task 'passkey'"),
        (["--lengths", "300,abc"], "--lengths: 'abc' is not a positive integer (e.g. 256, 4096 or 4k)"),
        (["--lengths", "300", "--samples", "0"], "--samples must be >= 1"),
        (["--lengths", "300", "--names", "x,y"], "--names: 2 name(s) for 1 --ckpt"),
        (["--lengths", "300", "--haystack", "essay"], "--haystack essay needs --essay FILE"),
    ],
)
def test_cli_bad_arguments(ckpts, capsys, argv, msg):
    out = ckpts / "out"
    assert main(["analyze", "--ckpt", str(ckpts / "a"), "--out", str(out), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("rnope: error:") and msg in err and "\n" not in err
    assert not out.exists()


@pytest.mark.parametrize("breakage", ["missing", "bad_config", "bad_weights"])
def test_cli_unloadable_checkpoint(ckpts, capsys, breakage):
    bad = ckpts / "bad"
    if breakage != "missing":
        save(bad, tiny_model("rnope-swa", **BYTE), Tokenizer.byte_level())
        if breakage == "bad_config":
            (bad / "config.json").write_text("{not json")
        else:
            (bad / "model.safetensors").write_bytes(b"\0" * 16)
    out = ckpts / "out"
    # the good checkpoint first: still nothing written when a later one fails
    rc = main(["analyze", "--ckpt", str(ckpts / "a"), "--ckpt", str(bad), "--lengths", "300", "--samples", "1", "--out", str(out)])
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len([l for l in err if l.startswith("rnope: error:")]) == 1 and "bad" in err[-1]
    assert not out.exists()


# ------------------------------------------------------------------------------------------ figures
def _fake_result(model: str, length: int, n_layer: int, nope_every: int = 0, sliding: bool = False) -> dict:
    """The parts of one :func:`analyze` result the figures read, made up (no model is run)."""
    rng = np.random.default_rng(length + n_layer)
    layers = [{"layer": i, "rope": not (nope_every and (i + 1) % nope_every == 0),
               "span": "sliding" if sliding and (i + 1) % max(nope_every, 1) else "full"} for i in range(n_layer)]
    groups = ["all"] + [g for g, ok in (("rope_layers", any(x["rope"] for x in layers)),
                                         ("nope_layers", not all(x["rope"] for x in layers)),
                                         ("sliding_layers", sliding), ("global_layers", sliding)) if ok]
    segs = {}
    for g in groups:
        v = rng.dirichlet([3, 1, 6, 2])
        segs[g] = dict(zip(SEGMENTS, map(float, v)))
    pos = np.unique(np.geomspace(1, length, 40).astype(int)) - 1
    bins = np.linspace(0.02, 0.98, 48)
    return {"model": model, "length": length, "segments": segs, "per_layer": layers,
            "entropy": {"by_query_position": {"positions": pos.tolist(),
                                              "per_layer": [(np.log(pos + 1) * rng.uniform(0.3, 0.9)).tolist() for _ in layers]}},
            "position_profile": {"bin_centers": bins.tolist(), "needle_position": 0.6,
                                 "mass": {"all": (rng.dirichlet(np.ones(len(bins)))).tolist()}}}


@pytest.fixture
def fake_results():
    return [_fake_result(m, L, n, e, s) for m, n, e, s in (("rnope-swa", 4, 4, True), ("rope-twelve-layers", 12, 0, False),
                                                        ("nope", 4, 1, False)) for L in (300, 1024)]


def test_segments_figure_suptitle_clears_the_panel_titles(fake_results, tmp_path, monkeypatch):
    """The figure title used to sit on the middle panel's title; model names under the bars used to run
    into each other."""
    with captured_figures(monkeypatch) as figs:
        plot_segments(fake_results, tmp_path / "segments.png")
    (fig,) = figs
    r = renderer(fig)
    sup = fig._suptitle.get_window_extent(r)
    titles = [ax.title for ax in fig.axes if ax.get_visible() and ax.title.get_text()]
    assert len(titles) == 5  # all, RoPE, NoPE, sliding, global layers
    for t in titles:
        b = t.get_window_extent(r)
        assert not sup.overlaps(b), t.get_text()
        assert sup.y0 - b.y1 >= sup.height / 3, t.get_text()  # a clear gap above every panel title, not a touch
    assert unreadable(fig) == []
    # a model without a layer group gets "n/a", not an empty bar that reads as zero
    nope_panel = next(ax for ax in fig.axes if ax.get_title() == "NoPE layers")
    assert [t.get_text() for t in nope_panel.texts] == ["n/a", "n/a"]


def test_entropy_and_position_figures_keep_legends_off_the_data(fake_results, tmp_path, monkeypatch):
    with captured_figures(monkeypatch) as figs:
        for res in fake_results[1:3]:
            plot_entropy_positions(res, tmp_path / "e.png")
        plot_position_profile(fake_results, tmp_path / "p.png")
    assert len(figs) == 3
    for fig in figs:
        assert unreadable(fig) == []
        for ax in fig.axes:
            assert ax.get_xlabel()
            assert not [t for t in tick_labels(ax, "x") + tick_labels(ax, "y") if SCIENTIFIC.search(t)]
        assert fig.axes[0].get_ylabel()
    assert "nats" in figs[0].axes[0].get_ylabel()
