"""``rnope lm-eval`` (lm-evaluation-harness with the rnope model): argument defaults, the shipped
offline passkey tasks, and the documented command end to end against the adapter's own numbers."""

from __future__ import annotations

import fnmatch
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml

import rnope
from rnope import ModelConfig, Transformer
from rnope.cli import main as cli_main
from rnope.evals import lm_eval_adapter as adapter
from rnope.tokenizer import Tokenizer

ROOT = Path(__file__).resolve().parents[2]
TINY = dict(vocab_size=259, n_layer=4, d_model=32, n_head=4, n_kv_head=2, d_ff=64, max_seq_len=256, window=16)
SHIPPED = {"rnope_passkey": "passkey.yaml", "rnope_passkey_ll": "passkey_ll.yaml",
           "rnope_passkey_rolling": "passkey_rolling.yaml"}
OFFLINE = {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def needs_lm_eval():
    if adapter.RnopeLM is None:
        pytest.skip("lm_eval not installed (pip install 'rnope[eval]')")


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("lm_ckpt") / "tiny"
    rnope.save(d, Transformer(ModelConfig.from_preset("rnope-swa", **TINY)).eval(), Tokenizer.byte_level())
    return d


def _load_task_yaml(path: Path) -> dict:
    class Loader(yaml.SafeLoader):
        pass

    Loader.add_constructor("!function", lambda loader, node: ("!function", loader.construct_scalar(node)))
    return yaml.load(path.read_text(), Loader)


# ------------------------------------------------------------------------------------ arguments
def test_lm_eval_argv_adds_model_device_and_the_shipped_tasks_unless_given():
    tasks = str(adapter.TASKS_DIR)
    argv = adapter.lm_eval_argv
    assert argv(["--tasks", "t"]) == ["run", "--model", "rnope", "--device", "auto", "--include_path", tasks,
                                      "--tasks", "t"]
    assert argv(["run", "--model=rnope", "--tasks", "t"]) == ["run", "--device", "auto", "--include_path", tasks,
                                                              "--model=rnope", "--tasks", "t"]
    # another model keeps lm_eval's device default; a given device / task path is left alone
    assert argv(["--model", "hf", "--tasks", "t"]) == ["run", "--include_path", tasks, "--model", "hf", "--tasks", "t"]
    assert argv(["--device", "cpu", "--include_path", "mine"]) == ["run", "--model", "rnope", "--device", "cpu",
                                                                   "--include_path", "mine"]
    assert argv(["ls", "tasks"]) == ["ls", "--include_path", tasks, "tasks"]
    # lm_eval without sub-commands: the bare run arguments
    assert argv(["run", "--tasks", "t"], subcommands=False)[:2] == ["--model", "rnope"]
    with pytest.raises(ValueError, match="no 'ls' command"):
        argv(["ls", "tasks"], subcommands=False)


def test_lm_eval_help_and_missing_lm_eval_are_one_line(monkeypatch, capsys):
    assert cli_main(["lm-eval", "--help"]) == 0
    out = capsys.readouterr().out
    for s in ("rnope_passkey_rolling", "--metadata", "pip install 'rnope[eval]'", "lm_eval run --help"):
        assert s in out
    monkeypatch.setattr(adapter, "RnopeLM", None)
    assert cli_main(["lm-eval", "--tasks", "rnope_passkey"]) == 2
    assert capsys.readouterr().err == "rnope: error: lm-eval needs lm_eval: pip install 'rnope[eval]'\n"


# ------------------------------------------------------------------------------------ shipped tasks
def test_shipped_tasks_are_the_make_task_configs_with_generated_items_and_package_data():
    made = adapter.passkey_task_configs("DATA")
    assert set(made) == set(SHIPPED) == set(adapter.TASK_NAMES)
    for name, fname in SHIPPED.items():
        cfg = _load_task_yaml(adapter.TASKS_DIR / fname)
        assert cfg.pop("custom_dataset") == ("!function", "passkey_data.passkey_dataset")
        assert cfg.pop("metadata") == {"version": 1.0, "n": 20, "lengths": [512, 1024], "seed": 0}
        want = {k: v for k, v in made[name].items() if k not in ("dataset_path", "dataset_kwargs", "metadata")}
        assert cfg == want, name
    # every shipped file is package data (installed with the wheel), nothing relative to the working dir
    tomllib = pytest.importorskip("tomllib")
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["rnope.evals"]
    files = sorted(p.relative_to(adapter.TASKS_DIR.parent).as_posix() for p in adapter.TASKS_DIR.iterdir()
                   if p.is_file() and p.suffix in (".yaml", ".py"))
    assert files and all(any(fnmatch.fnmatch(f, pat) for pat in patterns) for f in files), (files, patterns)
    assert "data_files" not in "".join((adapter.TASKS_DIR / f).read_text() for f in SHIPPED.values())


def test_passkey_dataset_generates_the_items_from_the_task_metadata():
    pytest.importorskip("datasets")
    ds = adapter.passkey_dataset(n=2, lengths=[300, 400], seed=3, version=1.0, pretrained="ignored")
    assert list(ds) == ["test"]
    assert list(ds["test"]) == adapter.passkey_rows(2, [300, 400], 3)
    assert ds["test"][0]["answer"] in ds["test"][0]["prompt"]
    assert len(adapter.passkey_dataset(n=1, lengths="300,1k")["test"]) == 2
    for bad in (dict(n=0), dict(n="2"), dict(seed=1.5), dict(lengths=[])):
        with pytest.raises(ValueError, match="metadata"):
            adapter.passkey_dataset(**bad)


class _Oracle:
    """Predictor double that reads the pass key from the prompt."""

    train_seq_len = 512

    def __init__(self):
        self.tokenizer = Tokenizer.byte_level()

    def encode(self, text):
        return self.tokenizer.encode(text)

    def complete(self, prompts, max_new_tokens):
        return [" " + re.search(r"The pass key is (\d+)\.", p).group(1) + ". Remember it." for p in prompts]


def test_an_oracle_scores_one_on_the_shipped_passkey_task(monkeypatch):
    needs_lm_eval()
    for k, v in OFFLINE.items():
        monkeypatch.setenv(k, v)
    import lm_eval
    from lm_eval.tasks import TaskManager

    tm = TaskManager(include_path=str(adapter.TASKS_DIR), include_defaults=False, metadata={"n": 2, "lengths": [300]})
    res = lm_eval.simple_evaluate(model=adapter.RnopeLM(predictor=_Oracle()), tasks=["rnope_passkey"], task_manager=tm)
    assert res["results"]["rnope_passkey"]["exact_match,none"] == 1.0
    assert len(res["samples"]["rnope_passkey"]) == 2  # n per length, from the metadata


# ------------------------------------------------------------------------------------ end to end
def _norm(s: str) -> str:  # the task's exact_match: ignore spaces, case and punctuation
    return re.sub(r"[^\w]", "", s.replace(" ", "")).lower()


def _expected(ckpt: Path, rows: list[dict]) -> dict:
    """The metrics of the three shipped tasks computed with the adapter directly (no lm_eval task code)."""
    lm = adapter.RnopeLM(pretrained=str(ckpt), device="cpu", batch_size=2)
    ll = lm.loglikelihood([SimpleNamespace(args=(r["prompt"], " " + r["answer"])) for r in rows], disable_tqdm=True)
    roll = lm.loglikelihood_rolling([SimpleNamespace(args=(r["prompt"],)) for r in rows], disable_tqdm=True)
    gen = lm.generate_until([SimpleNamespace(args=(r["prompt"], {"until": ["\n", "."], "max_gen_toks": 16}))
                             for r in rows], disable_tqdm=True)
    n_bytes = sum(len(r["prompt"].encode()) for r in rows)
    return {
        "rnope_passkey": {"exact_match,none": sum(_norm(g) == _norm(r["answer"]) for g, r in zip(gen, rows)) / len(rows)},
        "rnope_passkey_ll": {"acc,none": sum(g for _, g in ll) / len(rows),
                             "perplexity,none": math.exp(-sum(v for v, _ in ll) / len(rows))},
        "rnope_passkey_rolling": {"byte_perplexity,none": math.exp(-sum(roll) / n_bytes),
                                  "bits_per_byte,none": -sum(roll) / n_bytes / math.log(2)},
    }


@pytest.mark.slow
def test_rnope_lm_eval_runs_the_shipped_tasks_offline_with_the_adapters_numbers(tiny_ckpt, tmp_path):
    needs_lm_eval()
    out = tmp_path / "lm_out"
    env = {**os.environ, **OFFLINE, "HF_HOME": str(tmp_path / "hf")}
    # the documented command, from an unrelated working directory, without --model / --device / --include_path
    cmd = [sys.executable, "-m", "rnope.cli", "lm-eval", "--model_args", f"pretrained={tiny_ckpt}",
           "--tasks", ",".join(adapter.TASK_NAMES), "--metadata", json.dumps({"n": 2, "lengths": [300]}),
           "--batch_size", "2", "--output_path", str(out)]
    work = tmp_path / "cwd"
    work.mkdir()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=work, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "CUDA is not available" not in proc.stdout + proc.stderr  # no device was asked for
    (res_file,) = list(out.rglob("results_*.json"))
    got = json.loads(res_file.read_text())["results"]
    want = _expected(tiny_ckpt, adapter.passkey_rows(2, [300], 0))
    for task, metrics in want.items():
        for m, v in metrics.items():
            assert got[task][m] == pytest.approx(v, rel=1e-5, abs=1e-9), (task, m)
    assert want["rnope_passkey_rolling"]["byte_perplexity,none"] > 1.0
    assert not list((tmp_path / "hf").rglob("*.arrow"))  # items are generated in memory, nothing cached
    assert not list(work.iterdir())  # nothing written to the working directory
