"""Security: the package never unpickles, never runs remote or shell code (docs/reliability.md, "scan rules").

* A static scan of every module of ``rnope/`` (its AST, so strings, comments and ``model.eval()``
  do not count) for the dangerous calls and imports listed in :data:`RULES`.
* Behaviour: ``rnope.load`` / ``rnope generate`` / ``rnope import`` on directories holding a
  malicious pickle (whose unpickling would create a marker file) never open it; a Hugging Face
  directory with ``auto_map`` (remote code) is refused without importing its Python file.
"""

from __future__ import annotations

import ast
import json
import pickle
import shutil
import sys
from pathlib import Path

import pytest
import torch

import rnope
from rnope import ModelConfig, Transformer
from rnope.checkpoint import CheckpointError
from rnope.cli import main
from rnope.tokenizer import Tokenizer

PKG = Path(rnope.__file__).resolve().parent
SHAPE = dict(vocab_size=259, n_layer=2, d_model=32, n_head=4, n_kv_head=2, d_ff=64, max_seq_len=64, window=8)

PICKLE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "marshal", "shelve", "joblib"}
RULES = {
    "pickle-import": f"import of {', '.join(sorted(PICKLE_MODULES))}",
    "torch-load": "torch.load(...) without weights_only=True",
    "eval-exec": "the eval / exec / compile / __import__ builtins",
    "yaml-load": "yaml.load / load_all without Loader=SafeLoader (or CSafeLoader), yaml.unsafe_load / full_load",
    "remote-code": "trust_remote_code=<anything but False>",
    "shell": "shell=<anything but False> (subprocess), os.system, os.popen",
    "allow-pickle": "allow_pickle=<anything but False> (numpy.load), pandas.read_pickle",
}


def _dotted(node: ast.AST) -> str:
    """'torch.load' for Attribute(Name('torch'), 'load'); '' for anything not a dotted name."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return ""


def _kw(call: ast.Call, name: str):
    return next((k.value for k in call.keywords if k.arg == name), None)


def _is_const(node, value) -> bool:
    return isinstance(node, ast.Constant) and node.value is value


def scan_source(source: str, filename: str = "<src>") -> list[tuple[str, int, str]]:
    """``(rule, line, snippet)`` for every violation of :data:`RULES` in ``source``."""
    tree = ast.parse(source, filename)
    found: list[tuple[str, int, str]] = []
    aliases: dict[str, str] = {}  # local name -> dotted origin, from imports

    def hit(rule: str, node: ast.AST) -> None:
        found.append((rule, node.lineno, ast.unparse(node)[:80]))

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                aliases[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
                if a.name.split(".")[0] in PICKLE_MODULES:
                    hit("pickle-import", node)
        elif isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            for a in node.names:
                aliases[a.asname or a.name] = f"{mod}.{a.name}"
            if mod.split(".")[0] in PICKLE_MODULES:
                hit("pickle-import", node)
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        head, _, rest = name.partition(".")
        full = f"{aliases.get(head, head)}.{rest}" if rest else aliases.get(head, head)
        if full in ("torch.load", "torch.serialization.load") and not _is_const(_kw(node, "weights_only"), True):
            hit("torch-load", node)
        if isinstance(node.func, ast.Name) and node.func.id in ("eval", "exec", "compile", "__import__") and node.func.id not in aliases:
            hit("eval-exec", node)
        if full in ("yaml.load", "yaml.load_all"):
            loader = _kw(node, "Loader") or (node.args[1] if len(node.args) > 1 else None)
            if _dotted(loader).rsplit(".", 1)[-1] not in ("SafeLoader", "CSafeLoader"):
                hit("yaml-load", node)
        if full in ("yaml.unsafe_load", "yaml.full_load", "yaml.unsafe_load_all", "yaml.full_load_all"):
            hit("yaml-load", node)
        if any(k.arg == "trust_remote_code" and not _is_const(k.value, False) for k in node.keywords):
            hit("remote-code", node)
        if any(k.arg == "shell" and not _is_const(k.value, False) for k in node.keywords) or full in ("os.system", "os.popen"):
            hit("shell", node)
        if any(k.arg == "allow_pickle" and not _is_const(k.value, False) for k in node.keywords) or full.endswith("read_pickle"):
            hit("allow-pickle", node)
    return found


def test_scan_rules_catch_every_pattern():
    """The scanner itself: each bad line is caught, each safe twin is not."""
    bad = {
        "pickle-import": ["import pickle", "import dill as d", "from marshal import loads", "import _pickle", "from joblib import load"],
        "torch-load": ["import torch\ntorch.load('x')", "import torch\ntorch.load('x', weights_only=False)",
                       "from torch import load\nload('x')", "import torch as t\nt.load('x')"],
        "eval-exec": ["eval('1')", "exec('x=1')", "compile('1', 'f', 'eval')", "__import__('os')"],
        "yaml-load": ["import yaml\nyaml.load(s)", "import yaml\nyaml.load(s, Loader=yaml.Loader)", "import yaml\nyaml.unsafe_load(s)",
                      "import yaml\nyaml.full_load(s)"],
        "remote-code": ["f(trust_remote_code=True)", "f(trust_remote_code=flag)"],
        "shell": ["import subprocess\nsubprocess.run('ls', shell=True)", "import os\nos.system('ls')", "import os\nos.popen('ls')"],
        "allow-pickle": ["import numpy as np\nnp.load('x', allow_pickle=True)", "import pandas as pd\npd.read_pickle('x')"],
    }
    for rule, sources in bad.items():
        for src in sources:
            assert [r for r, _, _ in scan_source(src)] == [rule], src
    safe = [
        "model.eval()", "x = 'import pickle; eval(1)'", "# torch.load(x)", "import torch\ntorch.load('x', weights_only=True)",
        "import yaml\nyaml.safe_load(s)", "import yaml\nyaml.load(s, Loader=yaml.SafeLoader)", "f(trust_remote_code=False)",
        "import subprocess\nsubprocess.run(['git', 'status'])", "import subprocess\nsubprocess.run(['ls'], shell=False)",
        "import numpy as np\nnp.load('x.npy')", "from safetensors.torch import load_file\nload_file('x')",
    ]
    for src in safe:
        assert scan_source(src) == [], src


def test_package_source_has_no_unsafe_calls():
    files = sorted(PKG.rglob("*.py"))
    assert len(files) > 20 and PKG / "checkpoint.py" in files
    found = []
    for f in files:
        found += [f"{f.relative_to(PKG.parent)}:{line}: {RULES[rule]}: {snippet}"
                  for rule, line, snippet in scan_source(f.read_text(encoding="utf-8"), str(f))]
    assert not found, "\n".join(found)


# ---- malicious pickles are never opened ---------------------------------------------------------------
class _Bomb:
    """Unpickling calls ``open(marker, 'w')``: the marker file appears if anything unpickles it."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


_OPENED: list[str] = []
_WATCH: set[str] = set()


def _audit(event, args):  # an audit hook cannot be removed: it only records paths in _WATCH
    if event == "open" and _WATCH and args and isinstance(args[0], (str, bytes, Path)):
        p = str(Path(args[0] if not isinstance(args[0], bytes) else args[0].decode(errors="replace")).resolve())
        if p in _WATCH:
            _OPENED.append(p)


sys.addaudithook(_audit)


@pytest.fixture
def bomb(tmp_path):
    """``plant(path)`` writes a malicious pickle at ``path``; after the test: never opened, no marker."""
    marker = tmp_path / "PWNED"
    payload = pickle.dumps({"embed_tokens.weight": _Bomb(marker)})
    # the payload is live: unpickling it really creates the marker
    pickle.loads(payload)
    assert marker.exists()
    marker.unlink()
    planted: list[Path] = []

    def plant(path: Path) -> Path:
        path.write_bytes(payload)
        planted.append(path)
        _WATCH.add(str(path.resolve()))
        return path

    _OPENED.clear()
    yield plant
    _WATCH.clear()
    assert not marker.exists(), "a pickle was unpickled"
    assert not _OPENED, f"a pickle file was opened: {_OPENED}"


def _model() -> Transformer:
    torch.manual_seed(0)
    return Transformer(ModelConfig.from_preset("rnope-swa", **SHAPE)).eval()


def test_load_ignores_pickle_next_to_safetensors(tmp_path, bomb):
    d = rnope.save(tmp_path / "ck", _model(), Tokenizer.byte_level())
    for name in ("pytorch_model.bin", "model.pt", "model.pth", "training_args.bin", "optimizer.pt"):
        bomb(d / name)
    model, tok = rnope.load(d)
    assert model.config.pattern == "SSSN" and tok is not None


def test_load_refuses_pickle_only_checkpoint(tmp_path, bomb, capsys):
    d = rnope.save(tmp_path / "ck", _model(), Tokenizer.byte_level())
    (d / "model.safetensors").unlink()
    bomb(d / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="model.safetensors is missing"):
        rnope.load(d)
    assert main(["generate", "--ckpt", str(d), "--prompt", "hi"]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_pickle_disguised_as_safetensors_is_corrupt(tmp_path, bomb):
    d = rnope.save(tmp_path / "ck", _model())
    (d / "model.safetensors").unlink()
    bomb(d / "model.safetensors")
    _WATCH.clear()  # hashed and read as bytes, never unpickled: only the marker matters
    with pytest.raises(CheckpointError, match="model.safetensors does not match its sha256 in checksums.json"):
        rnope.load(d)
    (d / "checksums.json").unlink()  # without a checksum: safetensors' own header check refuses it
    with pytest.raises(CheckpointError, match="corrupt or truncated safetensors file"):
        rnope.load(d)


def test_hf_pickle_only_directory_is_refused(tmp_path, bomb, capsys):
    from rnope.interop import export

    d = export(_model(), tmp_path / "hf", log=None)
    (d / "model.safetensors").unlink()
    bomb(d / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match=r"has only pickle weights \(.bin/.pt\); rnope reads safetensors only"):
        rnope.load(d)
    assert main(["import", str(d), "--out", str(tmp_path / "ck")]) == 2
    assert "never pickle" in capsys.readouterr().err and not (tmp_path / "ck").exists()


def test_hf_auto_map_is_refused_without_importing_it(tmp_path, capsys, monkeypatch):
    from rnope.interop import export

    d = export(_model(), tmp_path / "hf", Tokenizer.byte_level(), log=None)
    marker = tmp_path / "IMPORTED"
    (d / "modeling_evil.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    meta = json.loads((d / "config.json").read_text())
    meta["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.EvilForCausalLM", "AutoConfig": "modeling_evil.EvilConfig"}
    (d / "config.json").write_text(json.dumps(meta))
    monkeypatch.syspath_prepend(str(d))  # even importable, it must not be imported
    with pytest.raises(CheckpointError, match="'auto_map' asks for remote code"):
        rnope.load(d)
    for argv in (["import", str(d), "--out", str(tmp_path / "ck")], ["generate", "--ckpt", str(d), "--prompt", "hi"],
                 ["export", "--ckpt", str(d), "--out", str(tmp_path / "hf2")]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "remote code" in err
    assert not marker.exists() and "modeling_evil" not in sys.modules
    assert not (tmp_path / "ck").exists() and not (tmp_path / "hf2").exists()
    shutil.rmtree(d)
