"""The benchmark's accounting, its parts' skips and targets, and the GPU check's dry run."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rnope import ModelConfig

from .conftest import TINY

W = TINY["window"]
ROOT = Path(__file__).resolve().parents[1]


def _bench_module():
    import rnope.bench

    return rnope.bench


# ------------------------------------------------------------------------------------ GPU check script
def test_gpu_check_skips_cleanly_without_cuda_and_dry_run_passes(tmp_path):
    script = ROOT / "benchmarks" / "gpu_check.py"
    if not torch.cuda.is_available():
        r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout.strip().splitlines()[-1]) == {"skipped": "no CUDA device", "torch": torch.__version__}
    out = tmp_path / "gpu.json"
    r = subprocess.run([sys.executable, str(script), "--dry-run", "--steps", "2", "--profile", "--json", str(out)], capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["ok"] and summary == json.loads(out.read_text())
    kern = summary["kernels"]
    for key in ("flex/sliding/float32", "flex/chunked/float32", "flex/causal/float32", "sdpa_blockwise/sliding/float32"):
        assert kern[key]["ok"] and kern[key]["fwd_maxerr"] < 1e-4, key
    assert summary["model"]["decode_eager"]["maxerr"] < 1e-4
    for v in summary["train"]["variants"].values():
        assert v["loss_finite"] and v["tok_per_s"] > 0 and 0 < v["mfu_vs_measured_mm"] < 1
        assert v["loss_in_graph"] and v["compile_mode"] == "default"
        prof = v["profile"]  # --profile: the kernels' time shares add up, the top list is sorted
        assert abs(sum(prof["share"].values()) - 1) < 1e-6 and set(prof["share"]) <= {"matmul", "attention", "other"}
        tops = [t["ms_per_step"] for t in prof["top"]]
        assert tops and tops == sorted(tops, reverse=True) and prof["share"].get("matmul", 0) > 0


# ------------------------------------------------------------------------------------ benchmark accounting
def test_bench_flops_per_token_counts_visible_keys():
    bench = _bench_module()
    cfg = ModelConfig.from_preset("rnope-swa", vocab_size=10, n_layer=4, d_model=8, n_head=2, n_kv_head=1, d_ff=16, window=2)
    fpt, n = bench.train_flops_per_token(cfg, 4)
    per_layer = 8 * 8 * 2 + 8 * 4 * 2 + 3 * 8 * 16  # q, o; k, v; gate, up, down
    assert n == 4 * per_layer + 10 * 8
    sliding_keys = (1 + 2 + 2 + 2) / 4  # min(t+1, W) for t = 0..3
    full_keys = (4 + 1) / 2
    assert fpt == pytest.approx(6 * n + 12 * 8 * (3 * sliding_keys + full_keys))


def test_bench_kv_part_and_targets_table(tmp_path):
    bench = _bench_module()
    res = bench.run(out=str(tmp_path / "b.json"), parts=("kv",), hf=False, compile=False, lengths=[128, 512, 2048])
    kv = res["kv_cache"]["rnope-swa"]
    for L, row in kv.items():
        assert row["theory"] == pytest.approx(0.25 + 0.75 * 128 / int(L))
        assert abs(row["rel_error"]) < 1e-9  # the cache holds exactly n_global·L + n_sliding·W positions
    assert all(r["fraction"] == 1.0 for r in res["kv_cache"]["rope"].values())
    (row,) = [t for t in res["targets"] if t["target"].startswith("KV bytes")]
    assert row["met"]
    assert json.loads((tmp_path / "b.json").read_text())["kv_cache"]["rnope-swa"]["512"]["bytes"] == kv["512"]["bytes"]
    assert "KV cache" in bench.markdown(res)


def test_bench_cli_rejects_bad_arguments(tmp_path, capsys):
    from rnope.cli import main

    assert main(["bench", "--out", str(tmp_path / "b"), "--only", "nonsense"]) == 2
    assert "unknown part" in capsys.readouterr().err
    (tmp_path / "f").write_text("x")
    assert main(["bench", "--out", str(tmp_path / "f")]) == 2  # --out is a directory, as everywhere
    assert capsys.readouterr().err.strip() == f"rnope: error: --out '{tmp_path / 'f'}' exists and is not a directory"
    assert main(["bench", "--out", str(tmp_path / "b"), "--threads", "0"]) == 2
    capsys.readouterr()
    assert main(["bench", "--out", str(tmp_path / "b"), "--new-tokens", "0"]) == 2
    assert capsys.readouterr().err.strip() == "rnope: error: --new-tokens must be >= 1, got 0"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]  # nothing written


def test_bench_llamacpp_part_is_skipped_cleanly_without_llama_bench(tmp_path, monkeypatch, capsys):
    from rnope.bench_llamacpp import bench_llamacpp, find_llama_bench, markdown
    from rnope.cli import main

    monkeypatch.delenv("RNOPE_LLAMA_BENCH", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))  # no llama-bench anywhere
    assert find_llama_bench(str(tmp_path / "nope")) is None
    res = bench_llamacpp()
    assert res == {"skipped": "llama-bench not found (--llama-bench PATH, RNOPE_LLAMA_BENCH, or PATH)"}
    assert markdown(res) == "llama.cpp comparison skipped: llama-bench not found (--llama-bench PATH, RNOPE_LLAMA_BENCH, or PATH)"
    fake = tmp_path / "llama-bench"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    assert find_llama_bench() == fake  # found on PATH
    fake.unlink()
    assert main(["bench", "--out", str(tmp_path / "b"), "--only", "llamacpp", "--no-hf", "--no-compile"]) == 0
    doc = json.loads((tmp_path / "b" / "bench.json").read_text())
    assert doc["llamacpp"] == res
    assert "llama.cpp comparison skipped" in capsys.readouterr().out


def test_bench_long_context_part_kv_bytes_are_exactly_the_paper_fraction():
    """Each model in its own process: at a 600-token prompt + 4 new tokens the hybrid cache holds
    exactly 0.25 + 0.75·W/L of rope's bytes (W = 512); the figures it reports are positive."""
    bench = _bench_module()
    res = bench.bench_long(600, new_tokens=4, threads=1)
    assert res["kv_theory"] == pytest.approx(0.25 + 0.75 * 512 / 604) and res["kv_fraction"] == pytest.approx(res["kv_theory"], abs=1e-12)
    for p in ("rnope-swa", "rope"):
        r = res[p]
        assert r["prefill_s"] > 0 and r["decode_tok_s"] > 0 and r["peak_rss_bytes"] >= r["rss_model_bytes"] > 0
        assert r["parameters"] == res["rope"]["parameters"]  # the same shape
    rows = [t for t in bench.targets({"long": res}) if "KV bytes" in t["target"]]
    assert len(rows) == 1 and rows[0]["met"]
