"""config.json is checked against the weights' safetensors headers before any model is built.

A hostile or corrupt config.json (d_model 1,048,576, n_layer 4,096, d_ff 4,194,304) beside small,
correct weights is refused in one line naming the field, both values and the file, without building
anything: the CLI checks run in a child process whose address space is capped at 1 GiB above what
its imports use, so a regression fails instead of swapping. Tiny fp32 models only.
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
from rnope.checkpoint import CheckpointError
from rnope.tokenizer import Tokenizer
from rnope.weights_header import MAX_HEADER_BYTES, check_config, read_header

SHAPE = dict(vocab_size=259, n_layer=2, d_model=32, n_head=4, n_kv_head=2, d_ff=64, max_seq_len=64, window=8)
HOSTILE = dict(d_model=1_048_576, n_layer=4096, d_ff=4_194_304)
HF_HOSTILE = dict(hidden_size=1_048_576, num_hidden_layers=4096, intermediate_size=4_194_304)
REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.usefixtures("one_thread")


def _model(preset: str = "rnope-swa", **over) -> Transformer:
    torch.manual_seed(0)
    return Transformer(ModelConfig.from_preset(preset, **{**SHAPE, **over})).eval()


def _edit(path: Path, fn) -> None:
    meta = json.loads(path.read_text())
    fn(meta)
    path.write_text(json.dumps(meta))


def _hf_hostile(meta: dict) -> None:
    """HF keys of an absurd model; the keys that would refuse it by themselves are dropped."""
    meta.update(HF_HOSTILE)
    for k in ("head_dim", "layer_types", "rnope"):
        meta.pop(k, None)


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("weights-header")
    byte = Tokenizer.byte_level()
    rnope.save(root / "good", _model(), byte)
    shutil.copytree(root / "good", root / "hostile")
    _edit(root / "hostile" / "config.json", lambda m: m["model"].update(HOSTILE))
    shutil.copytree(root / "good", root / "longseq")
    _edit(root / "longseq" / "config.json", lambda m: m["model"].update(max_seq_len=2**40))

    from rnope.interop import export

    export(_model(), root / "hf", byte, log=None)
    shutil.copytree(root / "hf", root / "hf_hostile")
    _edit(root / "hf_hostile" / "config.json", _hf_hostile)
    return root


# ---- the hostile config, through the CLI, in bounded memory and time ------------------------------------
_CHILD = r"""
import contextlib, io, json, resource, sys, time
import torch
from rnope.cli import main

status = open("/proc/self/status").read()
vm = next(int(line.split()[1]) * 1024 for line in status.splitlines() if line.startswith("VmSize:"))
limit = vm + 2**30  # 1 GiB above the imports
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
main(["info", "--preset", "rnope-swa"])  # imports what the commands import, before the baseline
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
out = []
for argv in json.loads(sys.argv[1]):
    err = io.StringIO()
    t = time.perf_counter()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            rc = main(argv)
        except BaseException as e:  # MemoryError and the like: the regression this test exists for
            rc = f"{e.__class__.__name__}: {e}"
    out.append({"rc": rc, "err": err.getvalue(), "seconds": time.perf_counter() - t,
                "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})
print(json.dumps({"results": out, "base_mb": base}))
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmSize from /proc")
def test_hostile_configs_fail_fast_with_one_line_in_bounded_memory(ws, tmp_path):
    hostile, hf = ws / "hostile", ws / "hf_hostile"
    calls = [
        ["generate", "--ckpt", str(hostile), "--prompt", "hi"],
        ["info", "--ckpt", str(hostile)],
        ["eval", "mqar", "--ckpt", str(hostile), "--out", str(tmp_path / "ev"), "--device", "cpu"],
        ["generate", "--ckpt", str(hf), "--prompt", "hi"],
        ["import", str(hf), "--out", str(tmp_path / "imported")],
        # an absurd max_seq_len sizes nothing at load time: the model loads and generates
        ["generate", "--ckpt", str(ws / "longseq"), "--prompt", "hi", "--max-new-tokens", "2"],
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "CUDA_VISIBLE_DEVICES": ""}
    r = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(calls)], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    got = json.loads(r.stdout.splitlines()[-1])
    res = got["results"]
    line = f"rnope: error: {hostile}/config.json: d_model is 1048576 but model.safetensors holds 32 (embed_tokens.weight)\n"
    assert [x["rc"] for x in res[:3]] == [2, 2, 2] and [x["err"] for x in res[:3]] == [line] * 3
    hf_line = f"rnope: error: {hf}/config.json: hidden_size is 1048576 but model.safetensors holds 32 (model.embed_tokens.weight)\n"
    assert [x["rc"] for x in res[3:5]] == [2, 2] and [x["err"] for x in res[3:5]] == [hf_line] * 2
    assert res[5]["rc"] == 0, res[5]
    assert all(x["seconds"] < 5 for x in res[:5]), res
    # the hostile files add (almost) nothing to the peak RSS of Python + torch + rnope (~0.3-0.5 GB):
    # before the check, one of them grew it by 5 GB
    assert res[4]["peak_mb"] - got["base_mb"] < 256, got
    assert res[4]["peak_mb"] < 1024 + got["base_mb"], got
    assert not (tmp_path / "ev").exists() and not (tmp_path / "imported").exists()


def test_absurd_max_seq_len_allocates_nothing_at_load(ws):
    model, _ = rnope.load(ws / "longseq")
    assert model.config.max_seq_len == 2**40
    held = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    held += sum(m.inv_freq.numel() * 4 for m in model.modules() if hasattr(m, "inv_freq"))
    assert held < 2**20


# ---- each field, in-process ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "preset, over, edit, message",
    [
        ("rnope-swa", {}, dict(d_model=64), "d_model is 64 but model.safetensors holds 32 (embed_tokens.weight)"),
        ("rnope-swa", {}, dict(vocab_size=300), "vocab_size is 300 but model.safetensors holds 259 (embed_tokens.weight)"),
        ("rnope-swa", {}, dict(n_layer=3), "n_layer is 3 but model.safetensors holds 2 (layers.0 to layers.1)"),
        ("rnope-swa", {}, dict(d_ff=128), "d_ff is 128 but model.safetensors holds 64 (layers.0.mlp.gate_proj.weight)"),
        ("rnope-swa", {}, dict(n_kv_head=4),
         "n_kv_head is 4 but model.safetensors holds 2 (layers.0.self_attn.k_proj.weight has 16 rows, 2 heads of head_dim 8 = d_model/n_head)"),
        ("qknorm", {}, dict(n_head=2), "n_head is 2 but model.safetensors holds 4 (layers.0.self_attn.q_norm.weight)"),
        # SSMax weights live on the NoPE layers only: the 4th of SSSN
        ("rnope-swa-ssmax", dict(n_layer=4), dict(n_head=8, n_kv_head=4),
         "n_head is 8 but model.safetensors holds 4 (layers.3.self_attn.ssmax_scale)"),
    ],
)
def test_each_field_that_disagrees_with_the_weights_is_named(tmp_path, preset, over, edit, message):
    d = rnope.save(tmp_path / "ck", _model(preset, **over))
    _edit(d / "config.json", lambda m: m["model"].update(edit))
    with pytest.raises(CheckpointError) as e:
        rnope.load(d)
    assert str(e.value) == f"{d}/config.json: {message}"


def test_parameter_count_is_capped_by_the_elements_in_the_header(tmp_path):
    """Facts the header cannot tell (no embedding here) are still bounded: the config may not imply
    more parameters than the file holds elements, plus one embedding matrix."""
    from safetensors.torch import save_file

    model = _model()
    state = {k: v for k, v in model.state_dict().items() if k != "embed_tokens.weight"}
    (tmp_path / "ck").mkdir()
    save_file(state, str(tmp_path / "ck" / "model.safetensors"))
    cfg = model.config.replace(d_model=1_048_576)
    total = sum(v.numel() for v in state.values())
    with pytest.raises(CheckpointError) as e:
        check_config(cfg, tmp_path / "ck" / "config.json", [tmp_path / "ck" / "model.safetensors"])
    assert str(e.value) == (f"{tmp_path}/ck/config.json: the config implies {cfg.num_params():,} parameters "
                            f"but model.safetensors holds {total:,} tensor elements")


def test_good_checkpoints_pass_tied_and_untied(tmp_path):
    for tie in (True, False):
        d = rnope.save(tmp_path / f"ck{tie}", _model(tie_embeddings=tie))
        model, _ = rnope.load(d)
        assert model.config.tie_embeddings is tie


# ---- the header itself ------------------------------------------------------------------------------
def _raw_safetensors(path: Path, header: bytes, data: bytes = b"", length: int | None = None) -> Path:
    path.write_bytes((len(header) if length is None else length).to_bytes(8, "little") + header + data)
    return path


def test_header_length_bomb_is_refused_before_anything_is_read(ws, tmp_path):
    d = tmp_path / "bomb"
    shutil.copytree(ws / "hostile", d)
    (d / "checksums.json").unlink(missing_ok=True)  # the header is what is under test, not the file's hash
    w = d / "model.safetensors"
    size = w.stat().st_size
    with open(w, "r+b") as f:
        f.write((2**62).to_bytes(8, "little"))
    with pytest.raises(CheckpointError) as e:
        rnope.load(d)
    assert str(e.value) == f"{w}: corrupt or truncated safetensors file (header length {2**62} exceeds the file's {size} bytes)"


def test_header_over_the_safetensors_limit_is_refused(tmp_path):
    w = _raw_safetensors(tmp_path / "big.safetensors", b"{}", length=MAX_HEADER_BYTES + 1)
    os.truncate(w, MAX_HEADER_BYTES + 64)  # sparse: nothing is written, nothing is read
    with pytest.raises(CheckpointError, match=rf"header length {MAX_HEADER_BYTES + 1} exceeds the {MAX_HEADER_BYTES}-byte limit\)$"):
        read_header(w)


@pytest.mark.parametrize(
    "header, data, why",
    [
        (b"[]", b"", "header is not a JSON object"),
        (b"\xff{", b"", "header is not JSON"),
        (b"[" * 100_000, b"", "header is not JSON"),
        (b'{"w": {"dtype": "F32", "shape": [4]}}', b"", "tensor 'w' has no valid dtype/shape/data_offsets"),
        (b'{"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}', b"\0" * 8,
         "tensor 'w' lies at bytes 0..16, beyond the file's 8 data bytes"),
        (b'{"w": {"dtype": "F32", "shape": [1048576, 32], "data_offsets": [0, 8]}}', b"\0" * 8,
         "tensor 'w' of shape (1048576, 32) and dtype F32 does not fit its 8 bytes"),
        (b'{"w": {"dtype": "NEW", "shape": [1048576], "data_offsets": [0, 8]}}', b"\0" * 8,
         "tensor 'w' of shape (1048576,) and dtype NEW does not fit its 8 bytes"),
        (b'{"w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 8]}}', b"\0" * 8,
         "tensor 'w' has no valid dtype/shape/data_offsets"),
    ],
)
def test_header_must_describe_the_bytes_that_follow(tmp_path, header, data, why):
    w = _raw_safetensors(tmp_path / "w.safetensors", header, data)
    with pytest.raises(CheckpointError) as e:
        read_header(w)
    assert str(e.value) == f"{w}: corrupt or truncated safetensors file ({why})"


def test_header_matches_safetensors(tmp_path):
    from safetensors import safe_open

    d = rnope.save(tmp_path / "ck", _model())
    with safe_open(str(d / "model.safetensors"), framework="pt") as h:
        want = {k: tuple(h.get_slice(k).get_shape()) for k in h.keys()}
    assert read_header(d / "model.safetensors") == want


# ---- Hugging Face directories, single file and sharded ----------------------------------------------
def test_hf_hostile_config_is_refused_before_the_model_is_built(ws, monkeypatch):
    import rnope.interop.hf as hf

    def built(*a, **k):
        raise AssertionError("a model was built")

    monkeypatch.setattr(hf, "Transformer", built)
    with pytest.raises(CheckpointError) as e:
        rnope.load(ws / "hf_hostile")
    assert str(e.value) == f"{ws}/hf_hostile/config.json: hidden_size is 1048576 but model.safetensors holds 32 (model.embed_tokens.weight)"


def _shard(d: Path) -> None:
    """Split ``d/model.safetensors`` into two shards with an index, as save_pretrained does."""
    from safetensors.torch import load_file, save_file

    state = load_file(str(d / "model.safetensors"))
    names = sorted(state)
    half = {n: f"model-0000{1 + (i >= len(names) // 2)}-of-00002.safetensors" for i, n in enumerate(names)}
    for shard in sorted(set(half.values())):
        save_file({n: state[n] for n in names if half[n] == shard}, str(d / shard), metadata={"format": "pt"})
    (d / "model.safetensors").unlink()
    (d / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": half}))


def test_hf_sharded_directory_is_checked_across_its_shards(ws, tmp_path):
    d = tmp_path / "hf"
    shutil.copytree(ws / "hf", d)
    _shard(d)
    model, _ = rnope.load(d)  # a good sharded directory loads
    assert model.config.n_layer == 2
    _edit(d / "config.json", lambda m: (m.update(num_hidden_layers=4096), m.pop("layer_types"), m.pop("rnope")))
    with pytest.raises(CheckpointError) as e:
        rnope.load(d)
    assert str(e.value) == f"{d}/config.json: num_hidden_layers is 4096 but the 2 weight files hold 2 (model.layers.0 to model.layers.1)"
    _edit(d / "config.json", _hf_hostile)
    with pytest.raises(CheckpointError, match=r"hidden_size is 1048576 but model-0000[12]-of-00002.safetensors holds 32 \(model.embed_tokens.weight\)$"):
        rnope.load(d)


def test_the_strict_shape_check_still_runs_after_the_header_check(tmp_path):
    """The header check bounds the sizes; a tensor the derived facts do not cover is still checked."""
    from safetensors.torch import save_file

    model = _model()
    d = rnope.save(tmp_path / "ck", model)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    state["norm.weight"] = torch.ones(16)
    save_file(state, str(d / "model.safetensors"))
    (d / "checksums.json").unlink(missing_ok=True)  # the edited weights are what is under test, not their hash
    with pytest.raises(CheckpointError, match=r"tensor 'norm.weight' has shape \(16,\), config.json implies \(32,\)$"):
        rnope.load(d)
