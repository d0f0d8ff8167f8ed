"""``rnope convert`` and ``rnope train --init``: every weight kept, logits as a model built with the
target config, only the rotation / window changed, loading, generating, exporting, continued training
from exactly the converted weights, and one-line refusals that write nothing (CPU, fp32, tiny models)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import rnope
from rnope import ModelConfig, Transformer
from rnope.cli import main
from rnope.convert import convert, convert_model, target_config
from rnope.tokenizer import Tokenizer

from .conftest import TINY, tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")

BYTE = {**TINY, "vocab_size": 259}  # the byte-level tokenizer's 259 tokens


def weights(d) -> dict[str, torch.Tensor]:
    return load_file(str(Path(d) / "model.safetensors"))


def listing(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir())


@pytest.fixture
def rope_ckpt(tmp_path) -> Path:
    """A 4-layer RoPE full-attention ('R') checkpoint with the byte tokenizer."""
    d = tmp_path / "rope"
    rnope.save(d, tiny_model("rope", **BYTE), Tokenizer.byte_level())
    return d


def convert_cli(*args) -> int:
    return main(["convert", *map(str, args)])


# ---- weights and logits ----------------------------------------------------------------------------
@pytest.mark.parametrize("args,pattern,window,chunk", [
    (["--to", "rnope-swa", "--window", "16"], "SSSN", 16, 8),
    (["--pattern", "N"], "N", 8, 8),
    (["--pattern", "RW", "--window", "4"], "RW", 4, 8),
    (["--pattern", "CCCN", "--chunk-size", "32"], "CCCN", 8, 32),
    (["--drop-pe"], "N", 8, 8),
])
def test_every_weight_is_kept_and_provenance_recorded(tmp_path, rope_ckpt, capsys, args, pattern, window, chunk):
    out = tmp_path / "dst"
    assert convert_cli("--ckpt", rope_ckpt, "--out", out, *args) == 0
    a, b = weights(rope_ckpt), weights(out)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) and a[k].dtype == b[k].dtype for k in a)
    meta = json.loads((out / "config.json").read_text())
    assert meta["model"] == {**json.loads((rope_ckpt / "config.json").read_text())["model"],
                             "pattern": pattern, "window": window, "chunk_size": chunk}
    src = json.loads((rope_ckpt / "checksums.json").read_text())["files"]["model.safetensors"]
    assert meta["converted_from"] == {"path": str(rope_ckpt.resolve()), "format": "rnope", "pattern": "R", "window": 8,
                                      "chunk_size": 8, "sha256": src, "added": []}
    assert (out / "tokenizer.json").read_text() == (rope_ckpt / "tokenizer.json").read_text()
    model, tok = rnope.load(out)
    assert model.config.pattern == pattern and tok.vocab_size == 259
    assert listing(tmp_path) == ["dst", "rope"]  # no temporary directory or lock left beside it
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"converted {rope_ckpt} (pattern R) -> {out} (pattern {pattern}")
    assert "rnope train --init" in lines[1]


def test_bf16_weights_keep_their_dtype(tmp_path):
    model = tiny_model("rope", **TINY).to(torch.bfloat16)
    rnope.save(tmp_path / "src", model)
    convert(tmp_path / "src", tmp_path / "dst", pattern="SSSN", window=4)
    a, b = weights(tmp_path / "src"), weights(tmp_path / "dst")
    assert all(b[k].dtype == torch.bfloat16 and torch.equal(a[k], b[k]) for k in a)


def test_converted_logits_equal_a_model_built_with_the_target_config(tmp_path, rope_ckpt):
    convert(rope_ckpt, tmp_path / "dst", to="rnope-swa", window=4)
    conv, _ = rnope.load(tmp_path / "dst")
    src, _ = rnope.load(rope_ckpt)
    direct = Transformer(ModelConfig.from_preset("rnope-swa", **{**BYTE, "window": 4})).eval()
    direct.load_state_dict(src.state_dict())
    x = torch.randint(0, 259, (2, 40))
    with torch.no_grad():
        assert torch.equal(conv(x), direct(x))
        assert (conv(x) - src(x)).abs().max() > 1e-2  # the conversion does change the model


def test_nope_and_window_change_logits_only_through_rotation_and_span():
    """RoPE at position 0 rotates by angle 0: with every position set to 0 the source's RoPE layers
    compute what the converted NoPE layers compute, and a window no shorter than the input is full
    attention. So those logits must be equal -- and differ with the real positions / a short window."""
    src = tiny_model("rope", **TINY)
    x = torch.randint(0, TINY["vocab_size"], (2, 24))
    zeros = torch.zeros_like(x)
    with torch.no_grad():
        nope = convert_model(src, target_config(src.config, drop_pe=True))
        assert [(s.rope, s.span) for s in nope.config.layers] == [(False, "full")] * 4
        torch.testing.assert_close(nope(x), src(x, positions=zeros), rtol=1e-5, atol=1e-5)
        assert (nope(x) - src(x)).abs().max() > 1e-2  # with real positions the rotation mattered
        wide = convert_model(src, target_config(src.config, pattern="S", window=24))
        torch.testing.assert_close(wide(x), src(x), rtol=1e-5, atol=1e-5)
        narrow = convert_model(src, target_config(src.config, pattern="S", window=4))
        assert (narrow(x) - src(x)).abs().max() > 1e-2
        # RNoPE-SWA: the NoPE layer is the only one that ignores positions
        swa = convert_model(src, target_config(src.config, to="rnope-swa", window=24))
        assert not torch.allclose(swa(x), src(x), atol=1e-3)
        torch.testing.assert_close(swa(x, positions=zeros), src(x, positions=zeros), rtol=1e-5, atol=1e-5)


def test_layers_that_become_qk_norm_or_ssmax_get_their_init_values(tmp_path, rope_ckpt, capsys):
    out = tmp_path / "q"
    assert convert_cli("--ckpt", rope_ckpt, "--out", out, "--pattern", "QQQN") == 0
    err = capsys.readouterr().err
    assert "rnope: note: 6 tensor(s) the source lacks start at their fresh-init values: QK-norm weights at 1" in err
    a, b = weights(rope_ckpt), weights(out)
    added = sorted(set(b) - set(a))
    assert len(added) == 6 and all(k.endswith(("q_norm.weight", "k_norm.weight")) for k in added)
    fresh = Transformer(ModelConfig.from_preset("rope", **{**BYTE, "pattern": "QQQN"})).state_dict()  # init_weights' values
    assert all(torch.equal(b[k], fresh[k]) for k in added) and all(torch.equal(a[k], b[k]) for k in a)
    assert sorted(json.loads((out / "config.json").read_text())["converted_from"]["added"]) == added
    # SSMax: NoPE layers of an ssmax model carry a learned scale; a layer that becomes NoPE gets the init value
    src = tiny_model("rope", **TINY, nope={"temperature": "ssmax"})
    new = convert_model(src, target_config(src.config, pattern="SSSN", window=8))
    fresh = Transformer(new.config).state_dict()
    assert torch.equal(new.state_dict()["layers.3.self_attn.ssmax_scale"], fresh["layers.3.self_attn.ssmax_scale"])


def test_drop_pe_makes_every_layer_nope_full(tmp_path):
    rnope.save(tmp_path / "swa", tiny_model("rnope-swa", **TINY))
    assert convert_cli("--ckpt", tmp_path / "swa", "--out", tmp_path / "dp", "--drop-pe") == 0
    model, _ = rnope.load(tmp_path / "dp")
    assert model.config.pattern == "N" and all(not s.rope and s.span == "full" for s in model.config.layers)
    meta = json.loads((tmp_path / "dp" / "config.json").read_text())
    assert meta["converted_from"]["pattern"] == "SSSN"
    # a conversion of a conversion keeps the chain
    assert convert_cli("--ckpt", tmp_path / "dp", "--out", tmp_path / "back", "--pattern", "SSSN", "--window", 8) == 0
    chain = json.loads((tmp_path / "back" / "config.json").read_text())["converted_from"]
    assert chain["pattern"] == "N" and chain["converted_from"]["pattern"] == "SSSN"


# ---- load, generate, export ------------------------------------------------------------------------
def test_converted_model_loads_generates_and_exports(tmp_path, rope_ckpt, capsys):
    dst = tmp_path / "dst"
    convert(rope_ckpt, dst, to="rnope-swa", window=8)
    model, tok = rnope.load(dst)
    direct = Transformer(model.config).eval()
    direct.load_state_dict(model.state_dict())
    prompt = tok.encode("The door code is 48213. The door code is")
    out = rnope.generate(model, [prompt], max_new_tokens=12)
    ref = rnope.generate(direct, [prompt], max_new_tokens=12)
    assert out == ref and len(out[0]) == 12
    assert main(["generate", "--ckpt", str(dst), "--max-new-tokens", "4", "--prompt", "abc"]) == 0
    assert main(["export", "--ckpt", str(dst), "--out", str(tmp_path / "hf")]) == 0
    meta = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert meta["model_type"] == "cohere2" and meta["sliding_window"] == 8
    back, _ = rnope.load(tmp_path / "hf")
    x = torch.randint(0, 259, (1, 30))
    with torch.no_grad():
        torch.testing.assert_close(back(x), model(x), rtol=0, atol=0)
    # a pattern cohere2 cannot express is refused by export, in one line
    convert(rope_ckpt, tmp_path / "chunked", pattern="CCCN", chunk_size=8)
    capsys.readouterr()
    assert main(["export", "--ckpt", str(tmp_path / "chunked"), "--out", str(tmp_path / "hf2")]) == 2
    assert "layer 0 uses chunked attention, which cohere/cohere2 cannot express" in capsys.readouterr().err
    assert not (tmp_path / "hf2").exists()


def test_hf_directory_converts(tmp_path):
    from rnope.interop import export

    model = tiny_model("rope", **BYTE)
    export(model, tmp_path / "hf", Tokenizer.byte_level(), log=None)
    res = convert(tmp_path / "hf", tmp_path / "dst", to="rnope-swa", window=8)
    assert res.source.kind == "hf"
    conv, tok = rnope.load(tmp_path / "dst")
    a = model.state_dict()
    assert tok is not None and all(torch.equal(a[k], v) for k, v in conv.state_dict().items())
    assert json.loads((tmp_path / "dst" / "config.json").read_text())["converted_from"]["format"] == "hf"


# ---- bad input -------------------------------------------------------------------------------------
def test_convert_bad_input_is_one_line_and_writes_nothing(tmp_path, rope_ckpt, capsys):
    q = tmp_path / "q"
    convert(rope_ckpt, q, pattern="Q")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    out = tmp_path / "out"
    cases = [
        (["--ckpt", rope_ckpt, "--to", "rope-yarn"],
         "--to 'rope-yarn': unknown pattern preset (known: nope, qknorm, rnope, rnope-swa, rope, swa; --pattern takes any pattern)"),
        (["--ckpt", rope_ckpt, "--pattern", "CCCN"], "pattern 'CCCN' has chunked layers ('C') but the source has none: give --chunk-size"),
        (["--ckpt", rope_ckpt, "--to", "rnope-swa"], "pattern 'SSSN' has sliding-window layers but the source has none: give --window"),
        (["--ckpt", rope_ckpt, "--pattern", "SN", "--window", "0"], "--window must be an integer >= 1, got 0"),
        (["--ckpt", rope_ckpt, "--pattern", "C", "--chunk-size", "-2"], "--chunk-size must be an integer >= 1, got -2"),
        (["--ckpt", rope_ckpt, "--pattern", "SXN"], "pattern 'SXN': unknown letter 'X' (known: S, R, Q, C, N, W)"),
        (["--ckpt", q, "--pattern", "SSSN", "--window", "8"],
         "the target config would drop 8 tensor(s) of the checkpoint, first 'layers.0.self_attn.q_norm.weight' "
         "(QK-norm weight of layer 0, which pattern 'SSSN' makes 'S'); conversion keeps every weight"),
        (["--ckpt", q, "--drop-pe"],
         "the target config would drop 8 tensor(s) of the checkpoint, first 'layers.0.self_attn.q_norm.weight' "
         "(QK-norm weight of layer 0, which pattern 'N' makes 'N'); conversion keeps every weight"),
        (["--ckpt", tmp_path / "nowhere", "--drop-pe"], f"checkpoint '{tmp_path / 'nowhere'}' does not exist"),
        (["--ckpt", rope_ckpt, "--pattern", "N", "--drop-pe"],
         "convert: argument --drop-pe: not allowed with argument --pattern (see 'rnope convert --help')"),
        (["--ckpt", rope_ckpt], "convert: one of the arguments --pattern --to --drop-pe is required (see 'rnope convert --help')"),
    ]
    before = listing(tmp_path)
    for args, msg in cases:
        assert convert_cli("--out", out, *args) == 2
        assert capsys.readouterr().err.splitlines() == [f"rnope: error: {msg}"], args
        assert listing(tmp_path) == before
    assert convert_cli("--ckpt", rope_ckpt, "--out", tmp_path / "full", "--drop-pe") == 2
    assert capsys.readouterr().err.strip() == f"rnope: error: output directory '{tmp_path / 'full'}' exists and is not empty"
    assert listing(tmp_path / "full") == ["x"] and listing(tmp_path) == before


def test_a_failed_write_leaves_nothing(tmp_path, rope_ckpt, monkeypatch, capsys):
    import rnope.checkpoint

    def full_disk(path, *a, **k):
        (Path(path) / "model.safetensors").write_bytes(b"partial")
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(rnope.checkpoint, "save", full_disk)
    (tmp_path / "empty").mkdir()  # an existing empty directory may be the output, and stays as it was
    before = listing(tmp_path)
    assert convert_cli("--ckpt", rope_ckpt, "--out", tmp_path / "empty", "--drop-pe") == 2
    assert capsys.readouterr().err.startswith("rnope: error: No space left on device: ")
    assert listing(tmp_path) == before and listing(tmp_path / "empty") == []


# ---- train --init ----------------------------------------------------------------------------------
TRAIN = ["--batch-size", "2", "--seq-len", "64", "--synthetic-ratio", "0", "--eval-batches", "1", "--save-every", "0"]


@pytest.fixture
def corpus(tmp_path, monkeypatch) -> Path:
    """A small JSONL corpus (pydoc help topics), and a shard cache of the test's own."""
    from pydoc_data.topics import topics

    monkeypatch.setenv("RNOPE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    p = tmp_path / "topics.jsonl"
    p.write_text("".join(json.dumps({"text": t}) + "\n" for _, t in sorted(topics.items()) if len(t) > 200))
    return p


def test_train_init_starts_at_step_0_from_exactly_the_converted_weights(tmp_path, rope_ckpt, corpus, monkeypatch, capsys):
    import rnope.train.loop as loop

    dst, run = tmp_path / "dst", tmp_path / "run"
    convert(rope_ckpt, dst, to="rnope-swa", window=16)
    built = []
    real = loop._build

    def spy(cfg, run_cfg, d, msd=None, osd=None):
        raw, fwd, optim = real(cfg, run_cfg, d, msd, osd)
        built.append(({k: v.detach().clone() for k, v in raw.state_dict().items()}, dict(optim.state), cfg))
        return raw, fwd, optim

    monkeypatch.setattr(loop, "_build", spy)
    assert main(["train", "--init", str(dst), "--out", str(run), "--data", str(corpus), "--max-steps", "2",
                 "--eval-every", "2", *TRAIN]) == 0
    err = capsys.readouterr().err
    assert f"rnope: starting from the weights of {dst} (pattern SSSN; step 0, a fresh optimizer)" in err
    state, optim_state, cfg = built[0]
    conv = weights(dst)
    assert state.keys() == conv.keys() and all(torch.equal(state[k], conv[k]) for k in conv)
    assert optim_state == {} and cfg.pattern == "SSSN" and cfg.window == 16
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2]
    # the step-0 validation loss is the converted model's on the first validation batch
    from rnope.data import PackedDataset, prepare_dataset

    model, tok = rnope.load(dst)
    _, val_dir, _ = prepare_dataset(str(corpus), tok, tmp_path / "cache", val_fraction=0.02)
    ds = PackedDataset(val_dir, 64, seed=0, shuffle=False)
    items = [ds[i] for i in range(min(2, ds.n_samples))]
    x, y = torch.stack([t[0] for t in items]), torch.stack([t[1] for t in items])
    with torch.no_grad():
        want = float(model(x, targets=y, reduction="sum")) / y.numel()
    assert rows[0]["val_loss"] == pytest.approx(want, rel=1e-6) and abs(want - math.log(259)) > 0.1
    info = json.loads((run / "run.json").read_text())
    assert info["run"]["init"] == str(dst.resolve()) and info["run"]["preset"] is None and info["run"]["model"] == model.config.to_dict()
    assert info["run"]["tokenizer"] == str(dst / "tokenizer.json") and info["resumed_from_step"] is None
    trained, _ = rnope.load(run)
    assert trained.config == model.config
    # a run directory converts too: its latest checkpoint's model.safetensors, not the optimizer state beside it
    back = convert(run, tmp_path / "back", pattern="R")
    ck = rnope.checkpoint.resolve(run)
    sha = json.loads((ck / "checksums.json").read_text())["files"]["model.safetensors"]
    assert json.loads((back.out / "config.json").read_text())["converted_from"]["sha256"] == sha
    assert weights(back.out).keys() == weights(ck).keys()
    # the run resumes from its own run.json, without the --init directory
    import shutil

    shutil.rmtree(dst)
    assert main(["train", "--out", str(run), "--resume", "--max-steps", "3"]) == 0
    assert [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()][-1] == 3


def test_train_init_applies_overrides_that_keep_the_shapes(tmp_path, rope_ckpt, corpus, capsys):
    run = tmp_path / "run"
    assert main(["train", "--init", str(rope_ckpt), "--out", str(run), "--data", str(corpus), "--max-steps", "1",
                 "--eval-every", "0", "--model.pattern", "SSSN", "--model.window", "16", *TRAIN]) == 0
    model, _ = rnope.load(run)
    assert model.config.pattern == "SSSN" and model.config.window == 16 and model.config.d_model == TINY["d_model"]


def test_train_init_bad_input_is_one_line_and_writes_nothing(tmp_path, rope_ckpt, corpus, capsys):
    small = tmp_path / "small"  # vocab 61, no tokenizer.json: the byte tokenizer's 259 tokens do not fit
    rnope.save(small, tiny_model("rope", **TINY))
    bpe = tmp_path / "bpe.json"
    Tokenizer.train_bpe(["abc def ghi " * 50], vocab_size=270).save(bpe)
    q = tmp_path / "q"
    convert(rope_ckpt, q, pattern="Q")
    out = tmp_path / "out"
    cases = [
        (["--init", rope_ckpt, "--resume"],
         "--init starts a new run from a checkpoint's weights and --resume continues the run in --out: give one of them"),
        (["--init", rope_ckpt, "--preset", "rope"],
         "--init takes the model config from the checkpoint: drop --preset (change fields with --model.FIELD)"),
        (["--init", small], f"--init '{small}': the tokenizer has 259 tokens but the checkpoint's vocab_size is 61"),
        (["--init", rope_ckpt, "--tokenizer", bpe],
         f"--init '{rope_ckpt}': --tokenizer {bpe} differs from the checkpoint's tokenizer.json (omit --tokenizer to train with the checkpoint's)"),
        (["--init", rope_ckpt, "--model.d_model", "64"],
         f"--init '{rope_ckpt}': tensor 'embed_tokens.weight' has shape (259, 32) in the checkpoint but the target config implies (259, 64)"),
        (["--init", q, "--model.pattern", "SSSN"],
         f"--init '{q}': the target config would drop 8 tensor(s) of the checkpoint, first 'layers.0.self_attn.q_norm.weight' "
         "(QK-norm weight of layer 0, which pattern 'SSSN' makes 'S'); conversion keeps every weight"),
        (["--init", tmp_path / "nowhere"], f"--init: checkpoint '{tmp_path / 'nowhere'}' does not exist"),
    ]
    for args, msg in cases:
        assert main(["train", "--out", str(out), "--data", str(corpus), *map(str, args), *TRAIN]) == 2
        assert capsys.readouterr().err.splitlines() == [f"rnope: error: {msg}"], args
        assert not out.exists() and not (tmp_path / "cache").exists()
