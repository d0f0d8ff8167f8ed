"""The bad-input catalogue (docs/reliability.md): every ``rnope`` command, fed a user mistake, prints
exactly one line ``rnope: error: ...`` naming the problem on stderr (no traceback unless
``--debug``), returns exit code 2, and writes nothing: the test directory holds the same files, with
the same bytes, before and after the call.

Cases that other test files already assert (train flags, resume mismatch, eval / analyze flags, HF
import refusals, chunked export ...) are not repeated here; docs/reliability.md lists both.
Everything runs in-process through ``rnope.cli.main`` on tiny checkpoints, except the two
subprocess checks of the console entry point (``--debug`` traceback, and the plain one-liner).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import rnope
from rnope import ModelConfig, Transformer
from rnope.cli import main
from rnope.tokenizer import Tokenizer

SHAPE = dict(vocab_size=259, n_layer=2, d_model=32, n_head=4, n_kv_head=2, d_ff=64, max_seq_len=64, window=8)
TRAIN_MODEL = dict(d_model=64, d_ff=128, window=32)  # the overrides of the fake run below (as test_train's TINY)
REPO = Path(__file__).resolve().parents[1]


def _model(preset: str, **over) -> Transformer:
    torch.manual_seed(0)
    return Transformer(ModelConfig.from_preset(preset, **{**SHAPE, **over})).eval()


def _edit_json(path: Path, fn) -> None:
    meta = json.loads(path.read_text())
    fn(meta)
    path.write_text(json.dumps(meta))


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Path:
    """Read-only workspace: tiny good and broken checkpoints, HF directories, bad data files."""
    root = tmp_path_factory.mktemp("bad-inputs")
    byte = Tokenizer.byte_level()
    rnope.save(root / "ck", _model("rnope-swa"), byte)
    rnope.save(root / "rope", _model("rope", max_seq_len=32), byte)
    rnope.save(root / "notok", _model("rnope-swa"), None)

    def broken(name: str) -> Path:
        shutil.copytree(root / "ck", root / name)
        return root / name

    w = broken("trunc") / "model.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    _edit_json(broken("mism") / "config.json", lambda m: m["model"].update(d_ff=128))
    (broken("badjson") / "config.json").write_text('{"format": "rnope", "model": {')
    (broken("nonutf") / "config.json").write_bytes(b'\xff\xfe{"model": {}}')
    (broken("array") / "config.json").write_text("[1, 2]")
    (broken("noweights") / "model.safetensors").unlink()
    big = Tokenizer.train_bpe(["hello world, the quick brown fox " * 50, "jumps over the lazy dog " * 50], 300)
    assert big.vocab_size > 259
    big.save(broken("bigtok") / "tokenizer.json")
    (root / "emptyrun" / "checkpoints").mkdir(parents=True)
    (root / "afile").write_text("x")

    from rnope.interop import export

    hf = export(_model("rnope-swa"), root / "hf_gpt2", byte, log=None)
    _edit_json(hf / "config.json", lambda m: m.update(model_type="gpt2"))
    hf = export(_model("rnope-swa"), root / "hf_trunc", byte, log=None)
    (hf / "model.safetensors").write_bytes((hf / "model.safetensors").read_bytes()[:200])

    # data files
    (root / "bad.txt").write_bytes(b"\xff\xfe not utf-8 at all")
    (root / "notext.jsonl").write_text('{"body": "no text field"}\n')
    (root / "blank.txt").write_text("   \n\n  ")
    (root / "empty.txt").write_text("")
    (root / "data.csv").write_text("text\nhello\n")
    (root / "badcfg.yaml").write_bytes(b"preset: \xff\n")
    (root / "broken.yaml").write_text("preset: [rnope-swa\n")
    (root / "list.yaml").write_text("- preset: rnope-swa\n")
    # prompts files
    (root / "p_nonstr.jsonl").write_text('{"prompt": 3}\n')
    (root / "p_nonutf.jsonl").write_bytes(b'{"prompt": "caf\xe9"}\n')
    (root / "p_empty.jsonl").write_text('{"prompt": ""}\n')
    (root / "p_blank.jsonl").write_text("\n  \n")
    (root / "p_badjson.jsonl").write_text('{"prompt": "ok"}\n{"prompt": \n')
    (root / "p_surrogate.jsonl").write_text('{"prompt": "a\\ud800b"}\n')
    (root / "p_ok.jsonl").write_text('{"prompt": "hello"}\n')
    return root


@pytest.fixture(scope="module")
def fake_run(ws) -> Path:
    """A run directory with one complete checkpoint of rnope-swa (no training: files only)."""
    d = ws / "run_swa" / "checkpoints" / "step_1"
    cfg = ModelConfig.from_preset("rnope-swa", vocab_size=259, **TRAIN_MODEL)
    rnope.save(d, Transformer(cfg), Tokenizer.byte_level())
    run = {"preset": "rnope-swa", "model": TRAIN_MODEL, "max_steps": 2, "seq_len": 256, "batch_size": 4}
    (d / "trainer_state.json").write_text(json.dumps({"step": 1, "stage": 0, "stage_name": "pretrain", "run": run}))
    from safetensors.torch import save_file

    save_file({"rng.torch": torch.zeros(1, dtype=torch.uint8)}, str(d / "trainer_state.safetensors"))
    return ws / "run_swa"


@pytest.fixture(autouse=True)
def _env(monkeypatch, tmp_path_factory):
    monkeypatch.setenv("RNOPE_CACHE", str(tmp_path_factory.mktemp("cache")))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


pytestmark = pytest.mark.usefixtures("one_thread")


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every path under ``root`` with its bytes (None for directories)."""
    return {str(p.relative_to(root)): (None if p.is_dir() else p.read_bytes()) for p in sorted(root.rglob("*"))}


# (id, argv, substrings the one error line must contain, what OUT is beforehand)
# {ws}: the read-only workspace; {out}: the output path of the case (under a fresh directory).
# OUT kinds: None = absent, "file" = a file, "dir" = a non-empty directory, "under_file" = OUT's
# parent is a file, "run" = a copy of the fake rnope-swa run.
CASES = [
    # ---- info
    ("info-unknown-preset", ["info", "--preset", "x"], ["unknown preset 'x' (known: ", "rnope-swa"], None),
    ("info-n_head-3", ["info", "--preset", "rnope-swa", "--model.n_head", "3"], ["n_head=3 does not divide d_model=128"], None),
    ("info-window-0", ["info", "--preset", "rnope-swa", "--model.window", "0"], ["window must be >= 1, got 0"], None),
    ("info-window-not-int", ["info", "--preset", "rnope-swa", "--model.window", "abc"], ["--model.window: 'abc' is not a valid int"], None),
    ("info-unknown-key", ["info", "--preset", "rnope-swa", "--model.colour", "red"], ["unknown model config key 'colour'"], None),
    ("info-bad-pattern", ["info", "--preset", "rnope-swa", "--model.pattern", "SXN"], ["pattern 'SXN': unknown letter 'X'"], None),
    ("info-override-value-missing", ["info", "--preset", "rnope-swa", "--model.window"], ["--model.window needs a value"], None),
    ("info-length-0", ["info", "--preset", "rnope-swa", "--length", "0"], ["--length must be >= 1, got 0"], None),
    ("info-invalid-config-json", ["info", "--ckpt", "{ws}/badjson"], ["badjson/config.json: cannot read JSON (JSONDecodeError"], None),
    ("info-overrides-with-ckpt", ["info", "--ckpt", "{ws}/ck", "--model.window", "4"], ["--model.* overrides apply to --preset only"], None),
    ("info-no-source", ["info"], ["info: one of the arguments --preset --ckpt is required"], None),
    ("info-unknown-flag", ["info", "--preset", "rnope-swa", "--bogus"], ["unrecognized argument '--bogus'"], None),
    # ---- generate: arguments and prompts
    ("gen-missing-ckpt", ["generate", "--prompt", "hi"], ["generate: the following arguments are required: --ckpt"], None),
    ("gen-empty-prompt", ["generate", "--ckpt", "{ws}/ck", "--prompt", ""], ["--prompt is empty"], None),
    ("gen-surrogate-prompt", ["generate", "--ckpt", "{ws}/ck", "--prompt", "a\udcffb"], ["--prompt is not valid text (lone surrogate at index 1"], None),
    ("gen-max-new-tokens-0", ["generate", "--ckpt", "{ws}/ck", "--prompt", "hi", "--max-new-tokens", "0"], ["--max-new-tokens must be >= 1, got 0"], None),
    ("gen-max-new-tokens-abc", ["generate", "--ckpt", "{ws}/ck", "--prompt", "hi", "--max-new-tokens", "abc"], ["argument --max-new-tokens: invalid int value: 'abc'"], None),
    ("gen-temperature-negative", ["generate", "--ckpt", "{ws}/ck", "--prompt", "hi", "--temperature", "-1"], ["--temperature must be >= 0"], None),
    ("gen-top-k-0", ["generate", "--ckpt", "{ws}/ck", "--prompt", "hi", "--top-k", "0"], ["--top-k must be >= 1, got 0"], None),
    ("gen-top-p-2", ["generate", "--ckpt", "{ws}/ck", "--prompt", "hi", "--top-p", "2"], ["--top-p must be in (0, 1], got 2.0"], None),
    ("gen-device-cuda-absent", ["generate", "--ckpt", "{ws}/ck", "--prompt", "hi", "--device", "cuda"], ["--device cuda: CUDA is not available"], None),
    ("gen-device-unknown", ["generate", "--ckpt", "{ws}/ck", "--prompt", "hi", "--device", "tpu9"], ["--device: unknown device 'tpu9'"], None),
    ("gen-dtype-unknown", ["generate", "--ckpt", "{ws}/ck", "--prompt", "hi", "--dtype", "int8"], ["--dtype: unknown dtype 'int8' (known: auto, float32"], None),
    ("gen-batch-size-0", ["generate", "--ckpt", "{ws}/ck", "--input", "{ws}/p_ok.jsonl", "--output", "{out}", "--batch-size", "0"], ["--batch-size must be >= 1, got 0"], None),
    ("gen-input-without-output", ["generate", "--ckpt", "{ws}/ck", "--input", "{ws}/p_ok.jsonl"], ["--input needs --output"], None),
    ("gen-output-without-input", ["generate", "--ckpt", "{ws}/ck", "--prompt", "hi", "--output", "{out}"], ["--output is only used with --input"], None),
    ("gen-nonstring-prompt", ["generate", "--ckpt", "{ws}/ck", "--input", "{ws}/p_nonstr.jsonl", "--output", "{out}"], ["p_nonstr.jsonl line 1: no string field 'prompt'"], None),
    ("gen-prompts-not-utf8", ["generate", "--ckpt", "{ws}/ck", "--input", "{ws}/p_nonutf.jsonl", "--output", "{out}"], ["p_nonutf.jsonl' is not valid UTF-8 (byte at offset 15)"], None),
    ("gen-prompts-empty-prompt", ["generate", "--ckpt", "{ws}/ck", "--input", "{ws}/p_empty.jsonl", "--output", "{out}"], ["p_empty.jsonl line 1: empty prompt"], None),
    ("gen-prompts-no-prompts", ["generate", "--ckpt", "{ws}/ck", "--input", "{ws}/p_blank.jsonl", "--output", "{out}"], ["p_blank.jsonl' has no prompts"], None),
    ("gen-prompts-bad-json", ["generate", "--ckpt", "{ws}/ck", "--input", "{ws}/p_badjson.jsonl", "--output", "{out}"], ["p_badjson.jsonl line 2: not valid JSON"], None),
    ("gen-prompts-surrogate", ["generate", "--ckpt", "{ws}/ck", "--input", "{ws}/p_surrogate.jsonl", "--output", "{out}"], ["p_surrogate.jsonl line 1: prompt has a lone surrogate"], None),
    ("gen-prompts-missing", ["generate", "--ckpt", "{ws}/ck", "--input", "{ws}/nope.jsonl", "--output", "{out}"], ["nope.jsonl' does not exist"], None),
    ("gen-output-is-dir", ["generate", "--ckpt", "{ws}/ck", "--input", "{ws}/p_ok.jsonl", "--output", "{out}"], ["is a directory"], "dir"),
    ("gen-output-under-file", ["generate", "--ckpt", "{ws}/ck", "--input", "{ws}/p_ok.jsonl", "--output", "{out}"], ["is not a directory"], "under_file"),
    # ---- generate: checkpoints
    ("gen-ckpt-missing", ["generate", "--ckpt", "{ws}/nothing", "--prompt", "hi"], ["checkpoint '", "nothing' does not exist"], None),
    ("gen-ckpt-is-file", ["generate", "--ckpt", "{ws}/afile", "--prompt", "hi"], ["afile' is not a directory"], None),
    ("gen-ckpt-truncated", ["generate", "--ckpt", "{ws}/trunc", "--prompt", "hi"], ["trunc/model.safetensors does not match its sha256 in checksums.json"], None),
    ("gen-ckpt-config-weights-disagree", ["generate", "--ckpt", "{ws}/mism", "--prompt", "hi"], ["mism/config.json: d_ff is 128 but model.safetensors holds 64 (layers.0.mlp.gate_proj.weight)"], None),
    ("gen-ckpt-tokenizer-larger-than-vocab", ["generate", "--ckpt", "{ws}/bigtok", "--prompt", "hi"], ["bigtok/tokenizer.json: tokenizer has", "tokens but the model's vocab_size is 259"], None),
    ("gen-ckpt-invalid-json", ["generate", "--ckpt", "{ws}/badjson", "--prompt", "hi"], ["badjson/config.json: cannot read JSON (JSONDecodeError"], None),
    ("gen-ckpt-config-not-utf8", ["generate", "--ckpt", "{ws}/nonutf", "--prompt", "hi"], ["nonutf/config.json: cannot read JSON (UnicodeDecodeError"], None),
    ("gen-ckpt-config-not-object", ["generate", "--ckpt", "{ws}/array", "--prompt", "hi"], ["array/config.json: not an rnope config (no 'model' section)"], None),
    ("gen-ckpt-no-weights", ["generate", "--ckpt", "{ws}/noweights", "--prompt", "hi"], ["noweights/model.safetensors is missing"], None),
    ("gen-ckpt-empty-run", ["generate", "--ckpt", "{ws}/emptyrun", "--prompt", "hi"], ["emptyrun' has no complete checkpoint under checkpoints/"], None),
    ("gen-ckpt-no-tokenizer", ["generate", "--ckpt", "{ws}/notok", "--prompt", "hi"], ["notok' has no tokenizer.json: cannot encode text prompts"], None),
    ("gen-hf-unknown-model-type", ["generate", "--ckpt", "{ws}/hf_gpt2", "--prompt", "hi"], ["unsupported model_type 'gpt2' in", "(supported: cohere, cohere2, llama, mistral, qwen2, qwen3, smollm3)"], None),
    # ---- tokenizer train
    ("tok-corpus-not-utf8", ["tokenizer", "train", "--vocab-size", "300", "--data", "{ws}/bad.txt", "--out", "{out}"], ["bad.txt' is not valid UTF-8 (byte 0xff at offset 0)"], None),
    ("tok-jsonl-no-text-field", ["tokenizer", "train", "--vocab-size", "300", "--data", "{ws}/notext.jsonl", "--out", "{out}"], ["notext.jsonl line 1: no field 'text'"], None),
    ("tok-vocab-not-int", ["tokenizer", "train", "--vocab-size", "x", "--out", "{out}"], ["--vocab-size: 'x' is not a valid integer"], None),
    ("tok-digit-pairs-small-vocab", ["tokenizer", "train", "--vocab-size", "300", "--digit-pairs", "--out", "{out}"], ["--vocab-size must be >= 360 with --digit-pairs (3 specials + 256 bytes + 100 digit pairs + 1 merge), got 300"], None),
    ("tok-max-chars-0", ["tokenizer", "train", "--vocab-size", "300", "--max-chars", "0", "--out", "{out}"], ["--max-chars must be >= 1, got 0"], None),
    ("tok-val-fraction-nan", ["tokenizer", "train", "--vocab-size", "300", "--val-fraction", "x", "--out", "{out}"], ["--val-fraction: 'x' is not a number"], None),
    ("tok-val-fraction-1", ["tokenizer", "train", "--vocab-size", "300", "--val-fraction", "1", "--out", "{out}"], ["--val-fraction must be in [0, 1), got 1"], None),
    ("tok-empty-corpus", ["tokenizer", "train", "--vocab-size", "300", "--data", "{ws}/empty.txt", "--out", "{out}"], ["empty.txt' is empty"], None),
    ("tok-blank-corpus", ["tokenizer", "train", "--vocab-size", "300", "--data", "{ws}/blank.txt", "--out", "{out}"], ["blank.txt' has no documents"], None),
    ("tok-unsupported-type", ["tokenizer", "train", "--vocab-size", "300", "--data", "{ws}/data.csv", "--out", "{out}"], ["data.csv' has unsupported type '.csv'"], None),
    ("tok-out-is-dir", ["tokenizer", "train", "--vocab-size", "300", "--out", "{out}"], ["is a directory"], "dir"),
    ("tok-out-under-file", ["tokenizer", "train", "--vocab-size", "300", "--out", "{out}"], ["is not a directory"], "under_file"),
    ("tok-unknown-action", ["tokenizer", "bogus"], ["tokenizer: argument ACTION: invalid choice: 'bogus'"], None),
    # ---- train (train/test_train.py has the flag and resume-field cases)
    ("train-corpus-not-utf8", ["train", "--preset", "rnope-swa", "--out", "{out}", "--data", "{ws}/bad.txt"], ["bad.txt' is not valid UTF-8 (byte 0xff at offset 0)"], None),
    ("train-jsonl-no-text-field", ["train", "--preset", "rnope-swa", "--out", "{out}", "--data", "{ws}/notext.jsonl"], ["notext.jsonl line 1: no field 'text'"], None),
    ("train-window-0", ["train", "--preset", "rnope-swa", "--out", "{out}", "--model.window", "0"], ["window must be >= 1, got 0"], None),
    ("train-n_layer-0", ["train", "--preset", "rnope-swa", "--out", "{out}", "--model.n_layer", "0"], ["n_layer must be >= 1, got 0"], None),
    ("train-seq-len-0", ["train", "--preset", "rnope-swa", "--out", "{out}", "--seq-len", "0"], ["--seq-len must be an integer >= 1, got 0"], None),
    ("train-max-steps-0", ["train", "--preset", "rnope-swa", "--out", "{out}", "--max-steps", "0"], ["--max-steps must be an integer >= 1, got 0"], None),
    ("train-config-not-utf8", ["train", "--out", "{out}", "--config", "{ws}/badcfg.yaml"], ["badcfg.yaml' is not valid UTF-8"], None),
    ("train-config-bad-yaml", ["train", "--out", "{out}", "--config", "{ws}/broken.yaml"], ["broken.yaml' is not valid YAML at line"], None),
    ("train-config-not-mapping", ["train", "--out", "{out}", "--config", "{ws}/list.yaml"], ["list.yaml' must hold a mapping of run settings, got list"], None),
    ("train-tokenizer-invalid", ["train", "--preset", "rnope-swa", "--out", "{out}", "--tokenizer", "{ws}/badjson/config.json"], ["is not a valid tokenizer.json"], None),
    ("train-tokenizer-larger-than-vocab", ["train", "--preset", "rnope-swa", "--out", "{out}", "--tokenizer", "{ws}/bigtok/tokenizer.json", "--model.vocab_size", "259"], ["vocab_size 259 is smaller than the tokenizer's"], None),
    ("train-out-under-file", ["train", "--preset", "rnope-swa", "--out", "{out}"], ["is not a directory"], "under_file"),
    ("train-cache-dir-is-file", ["train", "--preset", "rnope-swa", "--out", "{out}", "--cache-dir", "{ws}/afile"], ["cache directory '", "afile' (--cache-dir / RNOPE_CACHE) exists and is not a directory"], None),
    ("train-resume-other-config", ["train", "--out", "{out}", "--resume", "--preset", "rope"], ["cannot resume '", "model config field 'pattern' differs (checkpoint: 'SSSN', this run: 'R')"], "run"),
    ("train-resume-corrupt-state", ["train", "--out", "{out}", "--resume"], ["trainer_state.json is unreadable (JSONDecodeError"], "run-corrupt"),
    ("train-resume-empty-run", ["train", "--out", "{out}", "--resume", "--preset", "rnope-swa"], ["has no complete checkpoint under checkpoints/"], "dir"),
    # ---- eval (evals/test_evals.py has lengths / depths / tasks / names / samples / no-tokenizer)
    ("eval-ckpt-truncated", ["eval", "niah", "--ckpt", "{ws}/trunc", "--out", "{out}", "--lengths", "300"], ["trunc/model.safetensors does not match its sha256"], None),
    ("eval-ckpt-tokenizer-larger-than-vocab", ["eval", "niah", "--ckpt", "{ws}/bigtok", "--out", "{out}", "--lengths", "300"], ["tokenizer has", "vocab_size is 259"], None),
    ("eval-ckpt-config-weights-disagree", ["eval", "ruler", "--ckpt", "{ws}/mism", "--out", "{out}", "--lengths", "1024"], ["d_ff is 128 but model.safetensors holds 64"], None),
    ("eval-length-0", ["eval", "niah", "--ckpt", "{ws}/ck", "--out", "{out}", "--lengths", "0"], ["--lengths"], None),
    ("eval-depth-step-0", ["eval", "niah", "--ckpt", "{ws}/ck", "--out", "{out}", "--depths", "0:100:0"], ["--depths: '0:100:0'"], None),
    ("eval-dtype", ["eval", "niah", "--ckpt", "{ws}/ck", "--out", "{out}", "--dtype", "bogus"], ["--dtype: unknown dtype 'bogus'"], None),
    ("eval-device", ["eval", "niah", "--ckpt", "{ws}/ck", "--out", "{out}", "--device", "nonsense"], ["--device: unknown device 'nonsense'"], None),
    ("eval-batch-size-0", ["eval", "niah", "--ckpt", "{ws}/ck", "--out", "{out}", "--batch-size", "0"], ["--batch-size must be >= 1, got 0"], None),
    ("eval-ppl-corpus-not-utf8", ["eval", "ppl", "--ckpt", "{ws}/ck", "--out", "{out}", "--data", "{ws}/bad.txt"], ["bad.txt' is not valid UTF-8"], None),
    ("eval-ppl-jsonl-no-text-field", ["eval", "ppl", "--ckpt", "{ws}/ck", "--out", "{out}", "--data", "{ws}/notext.jsonl"], ["notext.jsonl line 1: no field 'text'"], None),
    ("eval-ppl-val-fraction", ["eval", "ppl", "--ckpt", "{ws}/ck", "--out", "{out}", "--val-fraction", "2"], ["--val-fraction must be in [0, 1), got 2.0"], None),
    ("eval-mqar-vocab-too-small", ["eval", "mqar", "--ckpt", "{ws}/ck", "--out", "{out}", "--vocab-size", "5"], ["8 pairs", "ids per half"], None),
    ("eval-out-under-file", ["eval", "niah", "--ckpt", "{ws}/ck", "--out", "{out}"], ["is not a directory"], "under_file"),
    ("eval-unknown-eval", ["eval", "bogus", "--ckpt", "{ws}/ck", "--out", "{out}"], ["eval: argument EVAL: invalid choice: 'bogus'"], None),
    # ---- analyze (analysis/test_analysis.py has lengths / samples / names / essay-needed / unloadable)
    ("analyze-length-0", ["analyze", "--ckpt", "{ws}/ck", "--out", "{out}", "--lengths", "0"], ["--lengths: 0 must be >= 1"], None),
    ("analyze-device", ["analyze", "--ckpt", "{ws}/ck", "--out", "{out}", "--lengths", "300", "--device", "nonsense"], ["--device: unknown device 'nonsense'"], None),
    ("analyze-essay-not-utf8", ["analyze", "--ckpt", "{ws}/ck", "--out", "{out}", "--lengths", "300", "--haystack", "essay", "--essay", "{ws}/bad.txt"], ["--essay file", "cannot be read (UnicodeDecodeError)"], None),
    ("analyze-tokenizer-larger-than-vocab", ["analyze", "--ckpt", "{ws}/bigtok", "--out", "{out}", "--lengths", "300"], ["tokenizer has", "vocab_size is 259"], None),
    ("analyze-out-is-file", ["analyze", "--ckpt", "{ws}/ck", "--out", "{out}", "--lengths", "300"], ["exists and is not a directory"], "file"),
    ("analyze-chunk-mb-0", ["analyze", "--ckpt", "{ws}/ck", "--out", "{out}", "--lengths", "300", "--chunk-mb", "0"], ["--chunk-mb must be >= 1, got 0"], None),
    ("analyze-missing-lengths", ["analyze", "--ckpt", "{ws}/ck", "--out", "{out}"], ["analyze: the following arguments are required: --lengths"], None),
    # ---- export / import (interop/test_hf.py has chunked export, model_type / auto_map / rope refusals)
    ("export-out-is-file", ["export", "--ckpt", "{ws}/ck", "--out", "{out}"], ["exists and is not a directory"], "file"),
    ("export-out-not-empty", ["export", "--ckpt", "{ws}/ck", "--out", "{out}"], ["exists and is not empty"], "dir"),
    ("export-out-under-file", ["export", "--ckpt", "{ws}/ck", "--out", "{out}"], ["is not a directory"], "under_file"),
    ("export-ckpt-truncated", ["export", "--ckpt", "{ws}/trunc", "--out", "{out}"], ["the file is corrupt or was modified"], None),
    ("export-tokenizer-larger-than-vocab", ["export", "--ckpt", "{ws}/bigtok", "--out", "{out}"], ["tokenizer has", "vocab_size is 259"], None),
    ("export-unknown-argument", ["export", "--ckpt", "{ws}/ck", "--out", "{out}", "--extra"], ["export: unrecognized arguments: --extra"], None),
    ("import-rnope-checkpoint", ["import", "{ws}/ck", "--out", "{out}"], ["is an rnope checkpoint, not a Hugging Face directory"], None),
    ("import-missing", ["import", "{ws}/nothing", "--out", "{out}"], ["Hugging Face directory '", "nothing' does not exist"], None),
    ("import-truncated-weights", ["import", "{ws}/hf_trunc", "--out", "{out}"], ["hf_trunc/model.safetensors: corrupt or truncated safetensors file"], None),
    ("import-missing-out", ["import", "{ws}/hf_trunc"], ["import: the following arguments are required: --out"], None),
    # ---- reproduce (a regression here would start a study: the test stubs the study out first)
    ("reproduce-unknown-profile", ["reproduce", "--profile", "bogus", "--out", "{out}"], ["unknown profile 'bogus' (known: "], None),
    ("reproduce-out-is-file", ["reproduce", "--profile", "smoke", "--out", "{out}"], ["exists and is not a directory"], "file"),
    ("reproduce-out-not-a-study", ["reproduce", "--profile", "smoke", "--out", "{out}"], ["is not empty and holds no rnope study"], "dir"),
    ("reproduce-jobs-0", ["reproduce", "--profile", "smoke", "--out", "{out}", "--jobs", "0"], ["--jobs must be >= 1, got 0"], None),
    ("reproduce-seeds-0", ["reproduce", "--profile", "smoke", "--out", "{out}", "--seeds", "0"], ["--seeds must be >= 1, got 0"], None),
    ("reproduce-device", ["reproduce", "--profile", "smoke", "--out", "{out}", "--device", "nonsense"], ["--device: unknown device 'nonsense'"], None),
    # ---- the command itself
    ("unknown-command", ["bogus"], ["argument COMMAND: invalid choice: 'bogus'"], None),
]


@pytest.mark.parametrize("argv,needles,kind", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_one_line_exit_2_nothing_written(ws, fake_run, tmp_path, capsys, monkeypatch, argv, needles, kind):
    if argv[0] == "reproduce":  # never start a study, even if validation regresses
        from rnope.reproduce import runner

        def no_study(*a, **k):
            raise AssertionError("test: validation passed and the study would start")

        monkeypatch.setattr(runner.Study, "tokenizer", no_study)
        monkeypatch.setattr(runner.Study, "train_all", no_study)
    box = tmp_path / "box"
    box.mkdir()
    out = box / "out"
    if kind == "file":
        out.write_text("keep me")
    elif kind == "dir":
        out.mkdir()
        (out / "keep.txt").write_text("keep me")
    elif kind == "under_file":
        (box / "parent").write_text("keep me")
        out = box / "parent" / "out"
    elif kind in ("run", "run-corrupt"):
        shutil.copytree(fake_run, out)
        if kind == "run-corrupt":
            (out / "checkpoints" / "step_1" / "trainer_state.json").write_text('{"step": 1, ')
    before, ws_before = snapshot(box), snapshot(ws)
    code = main([a.format(ws=ws, out=out) for a in argv])
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 2, captured.err
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("rnope: error: "), lines
    for n in needles:
        assert n in lines[0], lines[0]
    assert "Traceback" not in captured.err and captured.out == ""
    assert snapshot(box) == before, "the output path was touched"
    assert snapshot(ws) == ws_before, "an input was touched"


def test_catalogue_size():
    """docs/reliability.md counts these cases; keep the catalogue at least 30 new cases long."""
    assert len(CASES) >= 30 and len({c[0] for c in CASES}) == len(CASES)


# ---- warnings, not errors ---------------------------------------------------------------------------
def test_prompt_longer_than_rope_trained_length_warns_and_exits_0(ws, capsys):
    code = main(["generate", "--ckpt", str(ws / "rope"), "--prompt", "x" * 40, "--max-new-tokens", "3"])
    captured = capsys.readouterr()
    assert code == 0
    err = captured.err.strip().splitlines()
    assert err == ["rnope: warning: 43 tokens exceed the trained length 32 of a model with full-attention RoPE layers"]
    assert captured.out.endswith("\n")
    # RNoPE-SWA has no full-attention RoPE layer: no warning at any length
    assert main(["generate", "--ckpt", str(ws / "ck"), "--prompt", "x" * 80, "--max-new-tokens", "2"]) == 0
    assert capsys.readouterr().err == ""


def test_generate_writes_output_only_when_done(ws, tmp_path, capsys):
    out = tmp_path / "new" / "dir" / "out.jsonl"  # missing parents are created
    assert main(["generate", "--ckpt", str(ws / "ck"), "--input", str(ws / "p_ok.jsonl"), "--output", str(out),
                 "--max-new-tokens", "2"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 1 and rows[0]["prompt"] == "hello" and isinstance(rows[0]["completion"], str)
    assert sorted(p.name for p in out.parent.iterdir()) == ["out.jsonl"]


def test_os_and_runtime_errors_are_one_line(ws, tmp_path, capsys, monkeypatch):
    """An OSError (disk full, permission) is a one-line exit-2 error; a RuntimeError (e.g. torch out of
    memory) one line with exit 1 and a pointer to --debug; with --debug both raise."""
    import rnope.commands.info as info

    def disk_full(args):
        raise OSError(28, "No space left on device", str(tmp_path / "x"))

    monkeypatch.setattr(info, "run", disk_full)
    assert main(["info", "--preset", "rnope-swa"]) == 2
    assert capsys.readouterr().err == f"rnope: error: No space left on device: '{tmp_path / 'x'}'\n"
    with pytest.raises(OSError):
        main(["info", "--debug", "--preset", "rnope-swa"])

    def oom(args):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(info, "run", oom)
    assert main(["info", "--preset", "rnope-swa"]) == 1
    assert capsys.readouterr().err == ("rnope: error: OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB "
                                       "(rerun with --debug for the traceback)\n")
    with pytest.raises(torch.OutOfMemoryError):
        main(["--debug", "info", "--preset", "rnope-swa"])

    def bug(args):
        raise KeyError("a programming error keeps its traceback")

    monkeypatch.setattr(info, "run", bug)
    with pytest.raises(KeyError):
        main(["info", "--preset", "rnope-swa"])


# ---- the console entry point (subprocesses) ----------------------------------------------------------
def _cli(*argv: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "rnope", *argv], capture_output=True, text=True, env=env, timeout=120)


def test_subprocess_one_line_and_debug_traceback(ws):
    r = _cli("generate", "--ckpt", str(ws / "mism"), "--prompt", "hi")
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("rnope: error: ") and "d_ff is 128 but" in r.stderr
    r = _cli("--debug", "generate", "--ckpt", str(ws / "mism"), "--prompt", "hi")
    assert r.returncode == 1
    assert r.stderr.startswith("Traceback (most recent call last):")
    assert "rnope.checkpoint.CheckpointError:" in r.stderr and "d_ff is 128 but" in r.stderr
