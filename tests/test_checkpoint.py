import json

import pytest
import torch

import rnope
from rnope.checkpoint import CheckpointError

from .conftest import tiny_model


@torch.no_grad()
def test_save_load_round_trip_is_exact(tmp_path):
    model = tiny_model("rnope-swa")
    rnope.save(tmp_path / "m", model)
    again, tok = rnope.load(tmp_path / "m")
    assert tok is None and again.config == model.config
    x = torch.randint(0, 61, (2, 30))
    assert torch.equal(again(x), model(x))
    meta = json.loads((tmp_path / "m" / "config.json").read_text())
    assert meta["format"] == "rnope" and meta["model"]["pattern"] == "SSSN"


_FLAT = {"theta": "rope_theta", "scaling": "rope_scaling", "factor": "rope_factor", "original_len": "rope_original_len",
         "fope_sigma": "rope_fope_sigma", "fraction": "rope_fraction", "qk_l2norm": "rope_qk_l2norm",
         "temperature": "nope_temperature", "scale": "attn_temp_scale", "floor": "attn_temp_floor"}


def flat_model_dict(d: dict) -> dict:
    """A model config dict as older rnope versions wrote it: the RoPE / NoPE options as flat fields."""
    out = {k: v for k, v in d.items() if k not in ("rope", "nope")}
    out.update({_FLAT[k]: v for g in ("rope", "nope") for k, v in d[g].items()})
    return out


@torch.no_grad()
def test_old_checkpoint_with_flat_option_names_loads(tmp_path):
    model = tiny_model("rnope-swa-temp", nope={"floor": 8, "scale": 0.3})
    d = rnope.save(tmp_path / "m", model)
    meta = json.loads((d / "config.json").read_text())
    assert meta["model"]["nope"] == {"temperature": "llama4", "scale": 0.3, "floor": 8} and "attn_temp_floor" not in meta["model"]
    meta["model"] = flat_model_dict(meta["model"])
    (d / "config.json").write_text(json.dumps(meta))
    again, _ = rnope.load(d)
    assert again.config == model.config
    x = torch.randint(0, 61, (2, 30))
    assert torch.equal(again(x), model(x))


def test_load_run_directory_picks_latest_complete_checkpoint(tmp_path):
    a, b = tiny_model("rope", seed=1), tiny_model("rope", seed=2)
    rnope.save(tmp_path / "run" / "checkpoints" / "step_20", a)
    rnope.save(tmp_path / "run" / "checkpoints" / "step_100", b)
    (tmp_path / "run" / "checkpoints" / "step_200").mkdir()  # incomplete (crash mid-write)
    (tmp_path / "run" / "checkpoints" / "step_150.tmp").mkdir()
    model, _ = rnope.load(tmp_path / "run")
    assert torch.equal(model.embed_tokens.weight, b.embed_tokens.weight)


def test_corrupt_and_mismatched_checkpoints(tmp_path):
    model = tiny_model("rnope-swa")
    d = rnope.save(tmp_path / "m", model)
    w = d / "model.safetensors"
    w.write_bytes(w.read_bytes()[:100])
    with pytest.raises(CheckpointError, match=r"m/model.safetensors does not match its sha256 in checksums.json: "
                                              r"the file is corrupt or was modified$"):
        rnope.load(d)
    (d / "checksums.json").unlink()  # a directory written before checksums existed: safetensors' own check
    with pytest.raises(CheckpointError, match=r"model.safetensors: corrupt or truncated safetensors file"):
        rnope.load(d)
    d2 = rnope.save(tmp_path / "m2", model)
    meta = json.loads((d2 / "config.json").read_text())
    meta["model"]["d_ff"] = 128
    (d2 / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"m2/config.json: d_ff is 128 but model.safetensors holds 64 \(layers.0.mlp.gate_proj.weight\)$"):
        rnope.load(d2)
    with pytest.raises(CheckpointError, match=r"checkpoint '.*nope' does not exist"):
        rnope.load(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match=r"holds neither config.json nor checkpoints/"):
        rnope.load(tmp_path / "empty")


def test_no_pickle_in_checkpoint(tmp_path):
    d = rnope.save(tmp_path / "m", tiny_model("rope"))
    assert sorted(p.name for p in d.iterdir()) == ["checksums.json", "config.json", "model.safetensors"]


def test_a_flipped_byte_in_the_weights_is_caught_by_the_checksum(tmp_path):
    """safetensors checks its header, not its data: one flipped bit in a weight loads silently without
    the sha256 recorded at save time."""
    d = rnope.save(tmp_path / "m", tiny_model("rope"))
    w = d / "model.safetensors"
    raw = bytearray(w.read_bytes())
    raw[-5] ^= 0x01  # inside the last tensor's data
    w.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match=r"model.safetensors does not match its sha256 in checksums.json"):
        rnope.load(d)
    (d / "checksums.json").unlink()
    rnope.load(d)  # without the checksum the corruption goes unnoticed: what the checksum is for
    (d / "checksums.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"checksums.json is unreadable or not a checksum list$"):
        rnope.load(d)


def test_config_json_stays_editable(tmp_path):
    """checksums cover tensors and trainer state, not the hand-editable config.json / tokenizer.json."""
    d = rnope.save(tmp_path / "m", tiny_model("rope"))
    meta = json.loads((d / "config.json").read_text())
    meta["note"] = "edited by hand"
    (d / "config.json").write_text(json.dumps(meta))
    assert sorted(json.loads((d / "checksums.json").read_text())["files"]) == ["model.safetensors"]
    rnope.load(d)


def test_load_builds_on_meta_and_skips_the_random_init(tmp_path, monkeypatch):
    """rnope.load never random-initialises weights it is about to overwrite (an 8B model would
    spend minutes and ~32 GB on it): every init call lands on a meta tensor, and the loaded model
    equals the saved one bit for bit, RoPE tables on the CPU."""
    import rnope

    cfg = rnope.ModelConfig.from_preset("rnope-swa", n_layer=4, d_model=32, n_head=2, n_kv_head=1, vocab_size=128, window=16)
    torch.manual_seed(0)
    model = rnope.Transformer(cfg).eval()
    rnope.save(tmp_path / "ck", model)
    devices = []
    real = torch.nn.init.normal_

    def spy(*a, **k):
        devices.append((a[0] if a else k["tensor"]).device.type)
        return real(*a, **k)

    monkeypatch.setattr(torch.nn.init, "normal_", spy)
    loaded, _ = rnope.load(tmp_path / "ck")
    assert devices and set(devices) == {"meta"}
    x = torch.randint(0, 128, (2, 50))
    assert torch.equal(loaded(x), model(x))
    assert {p.device.type for p in loaded.parameters()} == {"cpu"} and loaded.layers[0].self_attn.inv_freq.device.type == "cpu"


# ---- core writer, loader registry, import layering -------------------------------------------------
def test_core_save_takes_a_config_and_a_state_dict(tmp_path):
    from safetensors.torch import load_file

    import rnope.checkpoint as ckpt

    model = tiny_model("rnope-swa")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    d = ckpt.save(tmp_path / "m", model.config, state, extra={"note": "core"})
    assert d == tmp_path / "m"
    assert sorted(p.name for p in d.iterdir()) == ["checksums.json", "config.json", "model.safetensors"]
    meta = json.loads((d / "config.json").read_text())
    assert meta["format"] == "rnope" and meta["note"] == "core" and meta["model"] == model.config.to_dict()
    again, tok = rnope.load(d)
    assert tok is None and again.config == model.config
    loaded = again.state_dict()
    assert loaded.keys() == state.keys() and all(torch.equal(loaded[k], state[k]) for k in state)
    # rnope.save writes a model object the same way
    assert rnope.save is ckpt.save_model
    written = load_file(rnope.save(tmp_path / "m0", model) / "model.safetensors")
    assert written.keys() == state.keys() and all(torch.equal(written[k], state[k]) for k in state)
    with pytest.raises(TypeError, match="^save: state_dict must be a mapping of tensors, got NoneType$"):
        ckpt.save(tmp_path / "bad", model.config, None)
    with pytest.raises(TypeError, match="^save: config must be a ModelConfig, got Transformer$"):
        ckpt.save(tmp_path / "bad", model, state)
    assert not (tmp_path / "bad").exists()  # refused before anything is written


def test_registry_detects_native_and_hugging_face_directories(tmp_path):
    import rnope.checkpoint as ckpt
    from rnope.interop import export

    model = tiny_model("rope")
    native = rnope.save(tmp_path / "ck", model)
    hf = export(model, tmp_path / "hf", log=None)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "config.json").write_text("{}")
    assert [f.name for f in ckpt.loaders()][:2] == ["rnope", "hf"]
    assert ckpt.find_loader(native).name == "rnope"
    assert ckpt.find_loader(hf).name == "hf"
    assert ckpt.find_loader(tmp_path / "other") is None and ckpt.find_loader(tmp_path / "nothing") is None
    x = torch.randint(0, 61, (1, 12))
    with torch.no_grad():
        assert torch.equal(rnope.load(hf)[0](x), model(x))
    # a directory no format accepts is reported as an rnope checkpoint would be
    with pytest.raises(CheckpointError, match=r"other/model.safetensors is missing$"):
        rnope.load(tmp_path / "other")


def test_a_registered_format_is_loaded(tmp_path, monkeypatch):
    import rnope.checkpoint as ckpt

    model = tiny_model("rope")
    d = tmp_path / "toy"
    d.mkdir()
    (d / "config.json").write_text('{"toy": 1}')
    ckpt.loaders()  # the lazy formats first, so that the toy format stays the last one
    monkeypatch.setitem(ckpt._LOADERS, "toy", ckpt.Loader("toy", lambda p: (p / "config.json").read_text() == '{"toy": 1}',
                                                          lambda p, device, dtype: (model, "tok")))
    assert ckpt.find_loader(d).name == "toy"
    assert rnope.load(d) == (model, "tok")


@pytest.mark.parametrize("module, absent", [("rnope.checkpoint", "rnope.interop.hf"), ("rnope.interop.hf", None),
                                             ("rnope.errors", None)])
def test_core_and_conversion_import_alone(module, absent):
    """Each module imports in a fresh interpreter; the core does not pull in the HF converter."""
    import subprocess
    import sys
    from pathlib import Path

    code = f"import sys, {module}\n"
    if absent:
        code += f"assert {absent!r} not in sys.modules, sorted(m for m in sys.modules if m.startswith('rnope'))\n"
    env = {"PYTHONPATH": str(Path(__file__).resolve().parents[1]), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr


def test_no_module_level_import_between_core_and_hf():
    """rnope.checkpoint and rnope.interop.hf import each other only inside functions, and
    rnope.errors imports nothing from rnope."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "rnope"

    def top_level_imports(path: Path) -> set[str]:
        out = set()
        for node in ast.parse(path.read_text()).body:  # module level only: not inside a def
            if isinstance(node, ast.ImportFrom):
                out |= {"." * node.level + (node.module or "") + "." + a.name for a in node.names} | {"." * node.level + (node.module or "")}
            elif isinstance(node, ast.Import):
                out |= {a.name for a in node.names}
        return out

    core, hf, errors = (top_level_imports(root / p) for p in ("checkpoint.py", "interop/hf.py", "errors.py"))
    assert not [m for m in core if "interop" in m]
    assert not [m for m in hf if "checkpoint" in m]
    assert not [m for m in errors if m.startswith(".") or m.startswith("rnope")]
