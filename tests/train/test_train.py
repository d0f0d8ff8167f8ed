"""Training: schedule, loss falls, exact resume, stages and the 3:1 long/short mix, atomic
checkpoints, signals, NaN stop, bad input (CPU, fp32, tiny models)."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import pytest
import torch

import rnope
from rnope.cli import main
from rnope.train import RunConfig, Stage, lr_at, stage_model_configs
from rnope.train.stream import long_fraction, micro_shape, step_batches

TINY = ["--preset", "rnope-swa", "--model.d_model", "64", "--model.d_ff", "128", "--model.window", "32",
        "--batch-size", "4", "--seq-len", "256"]
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("shard-cache")


@pytest.fixture(scope="session")
def small_corpus(tmp_path_factory) -> Path:
    """~0.5 MB of English (pydoc help topics) as JSONL: cheap to scan in a fresh process."""
    from pydoc_data.topics import topics

    p = tmp_path_factory.mktemp("corpus") / "topics.jsonl"
    p.write_text("".join(json.dumps({"text": t}) + "\n" for _, t in sorted(topics.items()) if len(t) > 200))
    return p


@pytest.fixture(autouse=True)
def _cache(monkeypatch, cache_dir):
    monkeypatch.setenv("RNOPE_CACHE", str(cache_dir))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # subprocesses: tiny models, a shared 2-core machine


pytestmark = pytest.mark.usefixtures("one_thread")


def train(out, *args) -> int:
    return main(["train", *TINY, "--out", str(out), *map(str, args)])


def metrics(out) -> list[dict]:
    return [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]


def losses(out) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in metrics(out) if "loss" in r}


# ---- schedule -------------------------------------------------------------------------------------
def test_schedule_warmup_then_cosine():
    kw = dict(total=100, peak=1e-2, min_lr=1e-3, warmup=10)
    lrs = [lr_at(s, **kw) for s in range(100)]
    assert lrs[0] == pytest.approx(1e-3) and lrs[9] == pytest.approx(1e-2) and lrs[10] == pytest.approx(1e-2)
    assert all(a < b for a, b in zip(lrs[:10], lrs[1:10]))  # linear warm-up
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))  # cosine decay
    assert lrs[55] == pytest.approx(1e-3 + 0.5 * 9e-3)  # half way: mean of peak and min
    assert lr_at(100, **kw) == 1e-3 and lr_at(10**6, **kw) == 1e-3 and lrs[-1] > 1e-3
    assert lr_at(0, total=5, peak=1.0, min_lr=0.0, warmup=0) == 1.0


# ---- training ---------------------------------------------------------------------------------------
def test_loss_falls_on_builtin_corpus(tmp_path):
    out = tmp_path / "run"
    assert train(out, "--max-steps", 30, "--eval-every", 30, "--save-every", 0) == 0
    rows = metrics(out)
    assert [r["step"] for r in rows] == list(range(31))  # every step once (step 0: initial validation)
    v0, v30 = rows[0]["val_loss"], rows[-1]["val_loss"]
    assert v0 > math.log(200)  # ~ uniform over the byte vocabulary at init
    assert v30 < v0 - 1.5, (v0, v30)  # stated margin: 1.5 nats
    assert all(k in rows[5] for k in ("step", "loss", "lr", "tokens", "tok_per_s", "stage", "grad_norm"))
    assert rows[5]["tokens"] == 5 * 4 * 256 and rows[5]["stage"] == "pretrain"
    info = json.loads((out / "run.json").read_text())
    for k in ("run", "model", "seed", "corpus_hash", "tokenizer_hash", "git_sha", "versions", "hardware"):
        assert k in info
    assert info["versions"]["torch"] == torch.__version__ and info["run"]["max_steps"] == 30
    model, tok = rnope.load(out)  # the run directory resolves to its latest checkpoint
    assert model.config.d_model == 64 and tok.vocab_size == 259 == model.config.vocab_size


def test_resume_after_20_equals_uninterrupted_40(tmp_path):
    full, cut = tmp_path / "full", tmp_path / "cut"
    assert train(full, "--max-steps", 40, "--save-every", 10, "--eval-every", 10, "--keep", 5) == 0
    shutil.copytree(full, cut)  # the state a crash after step 20 leaves behind ...
    for s in (30, 40):
        shutil.rmtree(cut / "checkpoints" / f"step_{s}")
    with open(cut / "metrics.jsonl", "a") as f:  # ... with lines past the checkpoint
        f.write('{"step": 21, "loss": 9.0}\n{"step": 22, "lo')
    assert main(["train", "--out", str(cut), "--resume"]) == 0  # the run's own config, from its checkpoint
    a, b = metrics(full), metrics(cut)
    assert [r["step"] for r in b] == list(range(41))  # every step exactly once
    assert losses(full) == losses(cut)  # bit-exact on CPU
    assert [r.get("val_loss") for r in a] == [r.get("val_loss") for r in b]
    from safetensors.torch import load_file

    wa = load_file(rnope.checkpoint.resolve(full) / "model.safetensors")
    wb = load_file(rnope.checkpoint.resolve(cut) / "model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_resume_config_mismatch_names_the_field(tmp_path, capsys):
    out = tmp_path / "run"
    assert train(out, "--max-steps", 2, "--eval-every", 0, "--synthetic-ratio", 0) == 0
    capsys.readouterr()
    assert train(out, "--max-steps", 4, "--resume", "--model.n_kv_head", 4) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["rnope: error: cannot resume '%s': model config field 'n_kv_head' differs (checkpoint: 2, this run: 4)" % out]
    assert train(out, "--max-steps", 4, "--resume", "--model.rope.theta", "5e5") == 2  # an option: named by its nested path
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["rnope: error: cannot resume '%s': model config field 'rope.theta' differs (checkpoint: 10000.0, "
                   "this run: 500000.0)" % out]


def test_killed_checkpoint_write_keeps_previous(tmp_path, small_corpus):
    """SIGKILL while the step-4 checkpoint is being written: step 2 stays loadable, resume works."""
    out = tmp_path / "run"
    script = (
        "import os, signal, sys\n"
        "import rnope.train.state as s\n"
        "orig = s._fsync_path\n"
        "def boom(p):\n"
        "    if '.tmp-step_4' in str(p) and str(p).endswith('trainer_state.json'): os.kill(os.getpid(), signal.SIGKILL)\n"
        "    orig(p)\n"
        "s._fsync_path = boom\n"
        "from rnope.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    args = ["train", *TINY, "--out", str(out), "--data", str(small_corpus), "--max-steps", "6", "--save-every", "2", "--eval-every", "0"]
    r = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=120, env=os.environ)
    assert r.returncode == -signal.SIGKILL, r.stderr[-2000:]
    ck = out / "checkpoints"
    assert (ck / ".tmp-step_4").is_dir() and not (ck / "step_4").exists()
    model, _ = rnope.load(out)  # the previous checkpoint
    assert rnope.checkpoint.resolve(out).name == "step_2"
    assert main(["train", *TINY, "--out", str(out), "--data", str(small_corpus), "--max-steps", "6", "--save-every", "2", "--resume"]) == 0
    assert sorted(p.name for p in ck.iterdir()) == ["step_2", "step_4", "step_6"]
    assert [r["step"] for r in metrics(out)] == list(range(1, 7))  # eval_every 0: no step-0 line


def test_sigint_saves_and_resume_continues_exactly(tmp_path, small_corpus):
    ref, out = tmp_path / "ref", tmp_path / "run"
    common = ["--data", str(small_corpus), "--max-steps", "16", "--save-every", "0", "--eval-every", "0"]
    assert train(ref, *common) == 0
    p = subprocess.Popen([sys.executable, "-m", "rnope", "train", *TINY, "--out", str(out), *common],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ)
    mfile = out / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (mfile.exists() and len(mfile.read_text().splitlines()) >= 4):
        time.sleep(0.05)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130, err[-2000:]
    stopped = max(losses(out))
    assert 3 <= stopped < 16 and rnope.checkpoint.resolve(out).name == f"step_{stopped}"
    assert train(out, *common, "--resume") == 0
    assert losses(out) == losses(ref)


def test_nonfinite_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch, capsys):
    import torch.nn.functional as F

    real, calls = F.cross_entropy, {"n": 0}

    def poisoned(*a, **k):
        calls["n"] += 1
        out = real(*a, **k)
        return out * float("nan") if calls["n"] == 5 else out  # the 5th training micro-step

    out = tmp_path / "run"
    monkeypatch.setattr(F, "cross_entropy", poisoned)
    assert train(out, "--max-steps", 10, "--save-every", 2, "--eval-every", 0, "--synthetic-ratio", 0) == 1
    err = capsys.readouterr().err
    assert "rnope: error: non-finite loss (nan) at step 5; training stopped (last good checkpoint: " in err
    assert rnope.checkpoint.resolve(out).name == "step_4"
    assert max(r["step"] for r in metrics(out)) == 4


def test_training_prints_validation_losses_and_an_end_summary(tmp_path, capsys):
    out = tmp_path / "run"
    assert train(out, "--max-steps", 4, "--eval-every", 2, "--synthetic-ratio", 0) == 0
    err = [ln.strip() for ln in capsys.readouterr().err.replace("\r", "\n").splitlines()]
    rows = {r["step"]: r for r in metrics(out)}
    for s in (0, 2, 4):
        assert f"step {s}: val_loss {rows[s]['val_loss']:.4f} (256 tokens, held-out split)" in err
    summary = [ln for ln in err if ln.startswith("done: ")]
    assert summary == [f"done: steps 1-4 ({rows[4]['tokens']:,} tokens in all) in {summary[0].split(' in ')[2].split(';')[0]}; "
                       f"train loss {rows[4]['loss']:.4f}, val_loss {rows[4]['val_loss']:.4f} at 256 tokens; "
                       f"checkpoint {out / 'checkpoints' / 'step_4'}"]


def test_max_steps_below_the_stages_says_which_stages_it_cuts(tmp_path, capsys):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("stages:\n  - {name: a, steps: 3, seq_len: 128}\n  - {name: b, steps: 3, seq_len: 256}\n"
                   "  - {name: c, steps: 3, seq_len: 256}\n")
    assert main(["train", *TINY[:-2], "--config", str(cfg), "--out", str(tmp_path / "r"), "--max-steps", "4",
                 "--eval-every", "0", "--synthetic-ratio", "0"]) == 0
    err = capsys.readouterr().err
    assert "rnope: note: --max-steps 4 ends the run in stage 'b' at step 1 of 3 (9 planned in all); stage(s) 'c' will not run" in err
    assert max(r["step"] for r in metrics(tmp_path / "r")) == 4


# ---- failures after a good start ---------------------------------------------------------------------
def _flip_byte(d: Path) -> str:
    w = d / "model.safetensors"
    raw = bytearray(w.read_bytes())
    raw[-5] ^= 0x01  # weight data: safetensors itself would load it without complaint
    w.write_bytes(bytes(raw))
    return r"model.safetensors does not match its sha256 in checksums.json: the file is corrupt or was modified"


def _drop_optimizer(d: Path) -> str:
    (d / "trainer_state.safetensors").unlink()
    return r"trainer_state.safetensors is missing"


def _half_state_json(d: Path) -> str:
    f = d / "trainer_state.json"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    return r"trainer_state.json does not match its sha256 in checksums.json"


def test_resume_falls_back_to_the_newest_checkpoint_that_verifies(tmp_path, capsys):
    """A flipped byte in the weights, a missing optimizer file, a half-written trainer state: --resume
    says which checkpoint it skips (one line), sets it aside and continues from the one before,
    bit-exactly; rnope.load of the run stays a one-line error until then."""
    full = tmp_path / "full"
    assert train(full, "--max-steps", 30, "--save-every", 10, "--eval-every", 0, "--keep", 5, "--synthetic-ratio", 0) == 0
    for i, corrupt in enumerate((_flip_byte, _drop_optimizer, _half_state_json)):
        cut = tmp_path / f"cut{i}"
        shutil.copytree(full, cut)
        why = corrupt(cut / "checkpoints" / "step_30")
        if corrupt is not _drop_optimizer:  # rnope.load needs the model files only
            with pytest.raises(rnope.checkpoint.CheckpointError, match=why):
                rnope.load(cut)
        capsys.readouterr()
        assert main(["train", "--out", str(cut), "--resume"]) == 0
        err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("rnope:")]
        assert len(err) == 1 and err[0].startswith("rnope: step_30 does not verify (") and err[0].endswith(
            "); resuming from step_20 instead"), err
        assert re.search(why, err[0])
        ck = cut / "checkpoints"
        assert sorted(p.name for p in ck.iterdir()) == ["step_10", "step_20", "step_30", "step_30.corrupt"]
        assert [r["step"] for r in metrics(cut)] == list(range(1, 31))
        assert losses(cut) == losses(full)
        from safetensors.torch import load_file

        wa, wb = load_file(ck / "step_30" / "model.safetensors"), load_file(full / "checkpoints" / "step_30" / "model.safetensors")
        assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_resume_with_no_checkpoint_that_verifies_is_one_line(tmp_path, capsys):
    out = tmp_path / "run"
    assert train(out, "--max-steps", 2, "--save-every", 2, "--eval-every", 0, "--synthetic-ratio", 0) == 0
    _flip_byte(out / "checkpoints" / "step_2")
    capsys.readouterr()
    assert main(["train", "--out", str(out), "--resume"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"rnope: error: --resume: no checkpoint of '{out}' verifies (newest: ") and "\n" not in err
    assert err.endswith("the file is corrupt or was modified)")


def test_a_failed_checkpoint_write_stops_the_run_and_keeps_the_previous(tmp_path, monkeypatch, capsys):
    """A full disk while step 4 is saved: one line naming the checkpoint and the cause, no partial
    step_4 anywhere, step_2 intact and loadable, and --resume continues once the disk has room."""
    import errno

    import safetensors.torch

    real = safetensors.torch.save_file

    def full_disk(tensors, filename, *a, **k):
        if ".tmp-step_4" in str(filename) and str(filename).endswith("trainer_state.safetensors"):
            raise OSError(errno.ENOSPC, "No space left on device", str(filename))
        return real(tensors, filename, *a, **k)

    out, ref = tmp_path / "run", tmp_path / "ref"
    common = ["--max-steps", 6, "--save-every", 2, "--eval-every", 0, "--synthetic-ratio", 0]
    assert train(ref, *common) == 0
    monkeypatch.setattr(safetensors.torch, "save_file", full_disk)
    capsys.readouterr()
    assert train(out, *common) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == (f"rnope: error: cannot write checkpoint '{out / 'checkpoints' / 'step_4'}': No space left on device; "
                   "training stopped at step 4; last checkpoint: step_2 (intact; rerun with --resume)")
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_2"]
    model, _ = rnope.load(out)
    assert rnope.checkpoint.resolve(out).name == "step_2"
    monkeypatch.setattr(safetensors.torch, "save_file", real)
    assert train(out, *common, "--resume") == 0
    assert [r["step"] for r in metrics(out)] == list(range(1, 7)) and losses(out) == losses(ref)


# ---- stages -------------------------------------------------------------------------------------------
def test_stage_switch_raises_theta_and_length(tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(
        "preset: rnope-swa\nmodel: {d_model: 64, d_ff: 128, window: 32, max_seq_len: 256}\nbatch_size: 2\neval_every: 0\n"
        "stages:\n"
        "  - {name: pretrain, steps: 6, seq_len: 256}\n"
        "  - {name: long, steps: 7, seq_len: 512, short_seq_len: 256, long_ratio: 0.25, rope_theta: 2e6}\n"
    )
    out = tmp_path / "run"
    assert main(["train", "--config", str(cfg), "--out", str(out)]) == 0
    rows = [r for r in metrics(out) if "loss" in r]
    assert [r["stage"] for r in rows] == ["pretrain"] * 6 + ["long"] * 7
    assert rows[6]["loss"] < rows[0]["loss"] - 0.5  # the long stage starts from the trained weights
    assert rows[-1]["tokens"] == 6 * 2 * 256 + 7 * 2 * 512  # equal tokens per micro-batch
    model, _ = rnope.load(out)
    assert model.config.rope.theta == 2e6 and model.config.max_seq_len == 512
    for layer in model.layers:
        spec = layer.self_attn.spec
        if spec.rope:
            assert spec.rope_options.theta == 2e6
            assert torch.allclose(layer.self_attn.inv_freq, rnope.rope.inv_frequencies(model.config.head_dim, 2e6))
    step6 = json.loads((out / "checkpoints" / "step_6" / "config.json").read_text())
    assert step6["model"]["rope"]["theta"] == 10_000.0 and step6["stage"] == "pretrain"


def test_long_short_mix_is_three_to_one(tmp_path):
    from rnope.data import prepare_dataset
    from rnope.tokenizer import Tokenizer
    from rnope.train.stream import TrainStream

    stage = Stage(name="long", steps=14, seq_len=1024, short_seq_len=256, long_ratio=0.25)
    assert long_fraction(0.25, 1024, 256) == Fraction(4, 7)
    shapes = [micro_shape(stage, 2, s, m, 2) for s in range(14) for m in range(2)]
    n_long = sum(r for L, r in shapes if L == 1024)
    n_short = sum(r for L, r in shapes if L == 256)
    assert n_short == 3 * n_long and {L * r for L, r in shapes} == {2048}  # 3:1 by sequences, equal tokens

    tok = Tokenizer.byte_level()
    train_dir, _, _ = prepare_dataset("builtin", tok, os.environ["RNOPE_CACHE"])
    stream = TrainStream(train_dir, tok, seed=0, kinds=("passkey",))
    seen = {256: 0, 1024: 0}
    for _, micros, _ in step_batches(stream, (stage,), [0], batch_size=1, grad_accum=1, default_ratio=0.0,
                                     rank=0, world=1, start=0, stop=7):
        for x, y, n in micros:
            seen[x.shape[1]] += x.shape[0]
            assert x.numel() == 1024 and n == 1024
    assert seen == {1024: 4, 256: 12}


def test_stream_is_a_pure_function_of_position_and_splits_across_ranks(tmp_path):
    from rnope.data import prepare_dataset
    from rnope.tokenizer import Tokenizer
    from rnope.train.stream import IGNORE, TrainStream, prefetch

    tok = Tokenizer.byte_level()
    train_dir, _, _ = prepare_dataset("builtin", tok, os.environ["RNOPE_CACHE"])
    one = TrainStream(train_dir, tok, seed=3, kinds=("passkey",))
    x1, y1 = one.take(256, 8, 0.25)  # one process, 8 rows
    assert one.positions == {"256": {"rows": 8, "corpus": 6, "synthetic": 2}}
    halves = [TrainStream(train_dir, tok, seed=3, kinds=("passkey",)).take(256, 4, 0.25, rank=r, world=2) for r in (0, 1)]
    assert torch.equal(torch.cat([h[0] for h in halves]), x1) and torch.equal(torch.cat([h[1] for h in halves]), y1)
    assert torch.equal(x1[:, 1:], y1[:, :-1].masked_fill(y1[:, :-1] == IGNORE, tok.pad_id))  # targets are shifted inputs
    resumed = TrainStream(train_dir, tok, seed=3, kinds=("passkey",), positions={"256": {"rows": 4, "corpus": 3, "synthetic": 1}})
    assert torch.equal(resumed.take(256, 4, 0.25)[0], x1[4:])
    phrases = ("secret code", "access number", "locker combination")  # the train-split passkey templates
    synthetic = [i for i in range(8) if any(p in tok.decode(x1[i]) for p in phrases)]
    assert synthetic == [3, 7]  # ratio 1/4, evenly spread

    assert list(prefetch(iter(range(50)))) == list(range(50))

    def boom():
        yield 1
        raise ValueError("bad corpus")

    with pytest.raises(ValueError, match="bad corpus"):
        list(prefetch(boom()))


def test_run_config_file_and_stage_models():
    run = RunConfig.from_dict({"preset": "rnope-swa", "stages": [{"name": "a", "steps": 2, "seq_len": 64},
                                                               {"name": "b", "steps": 2, "seq_len": 4096, "rope_theta": "2e6"}]})
    run.validate()
    base = rnope.ModelConfig.from_preset("rnope-swa")
    a, b = stage_model_configs(base, run.stages)
    assert a == base and b.rope.theta == 2e6 and b.max_seq_len == 4096 and b.window == base.window
    assert run.total_steps == 4 and run.replace(max_steps=3).total_steps == 3
    with pytest.raises(ValueError, match="stages\\[0\\]: unknown key 'step'"):
        RunConfig.from_dict({"stages": [{"name": "a", "step": 2, "seq_len": 64}]})


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_example_configs_are_valid(path):
    from rnope.train import load_run_file

    run = RunConfig.from_dict(load_run_file(path), f"{path}: ")
    run.validate()
    base = rnope.ModelConfig.from_preset(run.preset, **{"vocab_size": 259, **run.model})
    models = stage_model_configs(base, run.resolved_stages())
    assert len(models) == len(run.resolved_stages()) >= 1


# ---- bad input ------------------------------------------------------------------------------------------
BAD = [
    (["--preset", "nope-nope"], "rnope: error: unknown preset 'nope-nope' (known: "),
    (["--seq-len", "4096"], "rnope: error: seq_len 4096 exceeds the model's max_seq_len 2048; raise it with --model.max_seq_len 4096"),
    (["--seq-len", "128"], "rnope: error: synthetic_ratio 0.25 needs retrieval documents, but sequences of 128 tokens cannot hold one"),
    (["--data", "/nonexistent/corpus.txt"], "rnope: error: --data '/nonexistent/corpus.txt' does not exist"),
    (["--batch-size", "0"], "rnope: error: --batch-size must be an integer >= 1, got 0"),
    (["--lr", "fast"], "rnope: error: --lr: 'fast' is not a valid number"),
    (["--synthetic-ratio", "1.5"], "rnope: error: --synthetic-ratio must be a number >= 0 and <= 1, got 1.5"),
    (["--model.colour", "red"], "rnope: error: unknown model config key 'colour' (known: "),
    (["--model.rope.factr", "4"], "rnope: error: unknown model config key 'rope.factr' (known: rope.factor, rope.fope_sigma, "
                                  "rope.fraction, rope.original_len, rope.qk_l2norm, rope.scaling, rope.theta)"),
    (["--model.n_head", "3"], "rnope: error: n_head=3 does not divide d_model=64"),
    (["--tokenizer", "/nonexistent/tok.json"], "rnope: error: --tokenizer '/nonexistent/tok.json' does not exist"),
    (["--resume"], "rnope: error: --resume: run directory '{out}' does not exist"),
    (["--distributed", "gpu"], None),  # argparse choices: exit 2 as well
]


@pytest.mark.parametrize("args,expect", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_input_one_line_exit_2_nothing_written(tmp_path, capsys, args, expect):
    out = tmp_path / "out"
    try:
        code = main(["train", *TINY, "--out", str(out), *args])
    except SystemExit as e:  # argparse usage errors
        code = e.code
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and not out.exists()
    if expect is not None:
        assert len(err) == 1 and err[0].startswith(expect.format(out=out)), err


def test_bad_files(tmp_path, capsys):
    empty, cfg, afile = tmp_path / "empty.txt", tmp_path / "run.yaml", tmp_path / "afile"
    empty.write_text("")
    afile.write_text("x")
    cfg.write_text("preset: rnope-swa\nbogus: 1\n")
    bad_stage = tmp_path / "stage.yaml"
    bad_stage.write_text("stages:\n  - {name: long, steps: 2, seq_len: 1000, short_seq_len: 256, long_ratio: 0.25}\n")
    bad_kind = tmp_path / "kinds.yaml"
    bad_kind.write_text("stages:\n  - {name: near, steps: 2, seq_len: 64, synthetic_kinds: [lookup_near, lookup_nera]}\n")
    cases = [
        (["--config", str(bad_kind)], f"rnope: error: config file '{bad_kind}': stages[0] ('near'): synthetic_kinds: "
                                      "unknown kind 'lookup_nera'; known: niah_single, "),
        (["--data", str(empty)], f"rnope: error: --data '{empty}' is empty"),
        (["--config", str(cfg)], f"rnope: error: config file '{cfg}': unknown key 'bogus' (known: "),
        (["--config", str(bad_stage)], f"rnope: error: config file '{bad_stage}': stages[0] ('long'): short_seq_len 256 must be smaller than seq_len 1000 and divide it"),
    ]
    for args, expect in cases:
        out = tmp_path / "out"
        assert main(["train", "--preset", "rnope-swa", "--out", str(out), *args]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(expect), err
        assert not out.exists()
    assert main(["train", "--preset", "rnope-swa", "--out", str(afile)]) == 2
    assert capsys.readouterr().err.strip() == f"rnope: error: --out '{afile}' exists and is not a directory"


def test_existing_run_needs_resume(tmp_path, capsys):
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    assert train(out, "--max-steps", 1) == 2
    assert "already holds a run; pass --resume" in capsys.readouterr().err


# ---- tokenizer command --------------------------------------------------------------------------------
def test_tokenizer_train_command(tmp_path, small_corpus, capsys):
    out = tmp_path / "tok.json"
    assert main(["tokenizer", "train", "--vocab-size", "320", "--data", str(small_corpus), "--out", str(out)]) == 0
    from rnope.tokenizer import Tokenizer

    tok = Tokenizer.load(out)
    assert tok.vocab_size == 320 and tok.decode(tok.encode("def f(x): return x")) == "def f(x): return x"
    assert main(["tokenizer", "train", "--vocab-size", "100", "--data", str(small_corpus), "--out", str(tmp_path / "t2.json")]) == 2
    assert main(["tokenizer", "train", "--vocab-size", "300", "--data", str(tmp_path / "none.txt"), "--out", str(tmp_path / "t3.json")]) == 2
    assert not (tmp_path / "t2.json").exists() and not (tmp_path / "t3.json").exists()
    # and training with it sets the model's vocabulary
    run = tmp_path / "run"
    assert main(["train", *TINY, "--tokenizer", str(out), "--data", str(small_corpus), "--out", str(run), "--max-steps", "2",
                 "--eval-every", "0", "--synthetic-ratio", "0"]) == 0
    model, tok2 = rnope.load(run)
    assert model.config.vocab_size == 320 and tok2.vocab_size == 320


def test_tokenizer_train_learns_from_the_training_split_only(tmp_path, capsys):
    import json
    import random

    from rnope.data import split_documents

    rng = random.Random(0)
    words = ["".join(rng.choice("abcdefghij") for _ in range(rng.randint(3, 8))) for _ in range(300)]
    docs = [" ".join(rng.choice(words[i * 5 : i * 5 + 40]) for _ in range(60)) for i in range(50)]  # each its own words
    train, val = split_documents(docs, 0.2)
    assert 3 <= len(val) <= 20
    for name, part in (("all", docs), ("train", train)):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in part))

    def tok(name, data, *extra):
        assert main(["tokenizer", "train", "--vocab-size", "400", "--data", str(tmp_path / data), "--out", str(tmp_path / name), *extra]) == 0
        return json.loads((tmp_path / name).read_text())

    capsys.readouterr()
    split = tok("a.json", "all.jsonl", "--val-fraction", "0.2")
    err = capsys.readouterr().err
    assert f"from {len(train)} documents" in err and f"; {len(val)} validation documents left out)" in err
    assert split == tok("b.json", "train.jsonl", "--val-fraction", "0")  # exactly the training split's tokenizer
    assert split != tok("c.json", "all.jsonl", "--val-fraction", "0")  # the held-out documents do change it
    assert main(["tokenizer", "train", "--vocab-size", "400", "--data", str(tmp_path / "all.jsonl"), "--out", str(tmp_path / "d.json"),
                 "--val-fraction", "1"]) == 2
    assert "--val-fraction must be in [0, 1), got 1" in capsys.readouterr().err and not (tmp_path / "d.json").exists()


def test_train_cli_takes_nested_and_flat_model_options(tmp_path):
    from rnope.cli import build_parser
    from rnope.commands.train import build_plan
    from rnope.config import RopeOptions

    def plan(*extra):
        args, rest = build_parser().parse_known_args(["train", *TINY, "--out", str(tmp_path / "o"), *extra])
        args._extra = rest
        return build_plan(args)

    cfg = plan("--model.rope.scaling", "yarn", "--model.rope.factor", "4", "--model.nope.temperature", "log").models[0]
    assert (cfg.rope.scaling, cfg.rope.factor, cfg.nope.temperature) == ("yarn", 4.0, "log")
    assert cfg.layers[0].rope_options.original_len == cfg.max_seq_len and cfg.layers[3].nope_options.floor == 8192
    flat = plan("--model.rope_scaling", "yarn", "--model.rope_factor", "4", "--model.nope_temperature", "log").models[0]
    assert flat == cfg
    # --config's model: and the flags merge option by option, the flags winning
    run = tmp_path / "run.yaml"
    run.write_text("model: {rope_scaling: yarn, rope_factor: 2.0, rope: {original_len: 64}}\n")
    merged = plan("--config", str(run), "--model.rope.factor", "4")
    assert merged.models[0].rope == RopeOptions(scaling="yarn", factor=4.0, original_len=64)
    assert merged.run.model["rope"] == {"scaling": "yarn", "factor": 4.0, "original_len": 64}
    assert not (tmp_path / "o").exists()  # planning writes nothing


def test_stage_model_overrides_and_kinds_carry_forward():
    from rnope.config import ModelConfig
    from rnope.train.runconfig import RunConfig, stage_model_configs

    run = RunConfig.from_dict({"stages": [
        {"name": "warm", "steps": 2, "seq_len": 64, "synthetic_kinds": ["copy"]},
        {"name": "pre", "steps": 2, "seq_len": 64},
        {"name": "long", "steps": 2, "seq_len": 256, "model": {"rope": {"scaling": "yarn", "factor": 4.0, "original_len": 64}}},
    ]})
    run.validate()
    assert run.stages[0].synthetic_kinds == ("copy",) and run.stages[1].synthetic_kinds is None
    base = ModelConfig.from_preset("rope", max_seq_len=64)
    cfgs = stage_model_configs(base, run.stages)
    assert [c.rope.scaling for c in cfgs] == ["none", "none", "yarn"]
    assert cfgs[2].max_seq_len == 256 and cfgs[2].layers[0].rope_options.original_len == 64
    # an old YAML's flat names give the same stage models; a stage's rope_theta wins over its model's
    flat = RunConfig.from_dict({"stages": [
        {"name": "warm", "steps": 2, "seq_len": 64}, {"name": "pre", "steps": 2, "seq_len": 64},
        {"name": "long", "steps": 2, "seq_len": 256, "rope_theta": 5e5,
         "model": {"rope_scaling": "yarn", "rope_factor": 4.0, "rope_original_len": 64, "rope": {"theta": 2e6}}},
    ]})
    assert stage_model_configs(base, flat.stages) == cfgs[:2] + [cfgs[2].replace(rope={"theta": 5e5})]
    bad = RunConfig.from_dict({"stages": [{"name": "a", "steps": 1, "seq_len": 8, "model": {"d_model": 8}}]})
    with pytest.raises(ValueError, match=r"^stages\[0\] \('a'\): model: 'd_model' changes the weights' shapes or layout and cannot change between stages$"):
        bad.validate()
