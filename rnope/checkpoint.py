"""Save and load models: ``config.json`` + ``model.safetensors`` (+ ``tokenizer.json``). No pickle.

:func:`save` writes a config and a state dict as an rnope directory; :func:`save_model` (exported
as ``rnope.save``) writes a model. :func:`load` accepts a model directory, a checkpoint directory,
or a training run directory (whose latest complete checkpoint under ``checkpoints/step_N`` is used).

Directory formats are found through a small loader registry: each format registers a
``detect(dir) -> bool`` and a ``load(dir, device, dtype) -> (model, tokenizer)``
(:func:`register_loader`). The native rnope format registers here; formats that live in other
modules are listed by module name in :data:`LAZY_LOADER_MODULES` and imported the first time a
directory is looked up, so this module imports none of them at import time.
"""

from __future__ import annotations

import importlib
import json
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .config import ModelConfig
from .errors import CheckpointError
from .model import Transformer
from .outputs import atomic_write_text

FORMAT = "rnope"
CONFIG_FILE, WEIGHTS_FILE, TOKENIZER_FILE = "config.json", "model.safetensors", "tokenizer.json"
#: sha256 of the files a silent bit flip would corrupt unnoticed: every ``*.safetensors`` (safetensors
#: checks its header, not its data) and a training checkpoint's ``trainer_state.json``. ``config.json``
#: and ``tokenizer.json`` stay hand-editable; their content is validated when read.
CHECKSUM_FILE = "checksums.json"
_CHECKED = ("trainer_state.json",)


def file_sha256(path: Path) -> str:
    """sha256 (hex) of a file, read in chunks."""
    import hashlib

    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def write_checksums(d: str | os.PathLike) -> None:
    """Record the sha256 of the checksummed files of directory ``d`` in ``d/checksums.json``."""
    d = Path(d)
    names = sorted(f.name for f in d.iterdir() if f.is_file() and (f.name.endswith(".safetensors") or f.name in _CHECKED))
    doc = {"algorithm": "sha256", "files": {n: file_sha256(d / n) for n in names}}
    atomic_write_text(d / CHECKSUM_FILE, json.dumps(doc, indent=1, sort_keys=True))


def verify(d: str | os.PathLike, required: tuple[str, ...] = (CONFIG_FILE, WEIGHTS_FILE)) -> None:
    """Raise :class:`CheckpointError` (one line) if a ``required`` file of ``d`` is missing or a file
    no longer matches the sha256 recorded at save time. Directories written before checksums were
    recorded (no ``checksums.json``) are checked for the required files only."""
    d = Path(d)
    for name in required:
        if not (d / name).is_file():
            raise CheckpointError(f"{d / name} is missing")
    cfile = d / CHECKSUM_FILE
    if not cfile.exists():
        return
    try:
        files = json.loads(cfile.read_text(encoding="utf-8"))["files"]
        assert isinstance(files, dict)
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AssertionError):
        raise CheckpointError(f"{cfile} is unreadable or not a checksum list") from None
    for name, want in sorted(files.items()):
        f = d / name
        if not f.is_file():
            raise CheckpointError(f"{f} is missing (listed in {CHECKSUM_FILE})")
        if file_sha256(f) != want:
            raise CheckpointError(f"{f} does not match its sha256 in {CHECKSUM_FILE}: the file is corrupt or was modified")


def save(
    path: str | os.PathLike,
    config: ModelConfig,
    state_dict: Mapping[str, torch.Tensor],
    tokenizer: Any = None,
    *,
    extra: dict | None = None,
) -> Path:
    """Write ``config.json`` (``config`` plus ``extra``), ``model.safetensors`` (``state_dict``) and,
    if given, ``tokenizer.json`` into ``path``; returns ``path``. To save a model object, use
    :func:`save_model` (``rnope.save``).
    """
    if not isinstance(config, ModelConfig):
        raise TypeError(f"save: config must be a ModelConfig, got {type(config).__name__}")
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"save: state_dict must be a mapping of tensors, got {type(state_dict).__name__}")
    from safetensors.torch import save_file

    from . import __version__

    path = Path(path)
    if path.exists() and not path.is_dir():
        raise CheckpointError(f"output path '{path}' exists and is not a directory")
    path.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    tmp = path / (WEIGHTS_FILE + ".tmp")
    save_file(state, str(tmp), metadata={"format": "pt", "producer": FORMAT})
    os.replace(tmp, path / WEIGHTS_FILE)
    if tokenizer is not None:
        tokenizer.save(path / TOKENIZER_FILE)
    meta = {"format": FORMAT, "rnope_version": __version__, "model": config.to_dict()}
    if extra:
        meta.update(extra)
    atomic_write_text(path / CONFIG_FILE, json.dumps(meta, indent=2, sort_keys=True))
    write_checksums(path)
    return path


def save_model(path: str | os.PathLike, model: Transformer, tokenizer: Any = None, *, extra: dict | None = None) -> Path:
    """Write ``model`` (its config and state dict) and, if given, ``tokenizer`` into ``path`` (as
    :func:`save`); returns ``path``. This is ``rnope.save``."""
    return save(path, model.config, model.state_dict(), tokenizer, extra=extra)


def resolve(path: str | os.PathLike) -> Path:
    """The directory holding the weights: ``path`` itself, or a run's latest ``checkpoints/step_N``."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint '{path}' does not exist")
    if not path.is_dir():
        raise CheckpointError(f"checkpoint '{path}' is not a directory")
    if (path / CONFIG_FILE).exists():
        return path
    ckpts = path / "checkpoints"
    if ckpts.is_dir():
        steps = sorted(
            (int(m.group(1)), d)
            for d in ckpts.iterdir()
            if (m := re.fullmatch(r"step_(\d+)", d.name)) and (d / CONFIG_FILE).exists() and (d / WEIGHTS_FILE).exists()
        )
        if steps:
            return steps[-1][1]
        raise CheckpointError(f"run '{path}' has no complete checkpoint under checkpoints/")
    raise CheckpointError(f"'{path}' holds neither {CONFIG_FILE} nor checkpoints/")


def read_meta(path: str | os.PathLike) -> Any:
    """The parsed ``config.json`` of a directory; a :class:`CheckpointError` naming the file if it
    cannot be read, is not UTF-8 or is not JSON."""
    cfile = Path(path) / CONFIG_FILE
    try:
        return json.loads(cfile.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{cfile}: cannot read JSON ({e.__class__.__name__}: {e})") from None


def read_config(path: str | os.PathLike) -> tuple[ModelConfig, dict]:
    """(ModelConfig, the whole config.json) of an rnope checkpoint directory."""
    cfile = Path(path) / CONFIG_FILE
    meta = read_meta(path)
    if not isinstance(meta, dict) or "model" not in meta:
        raise CheckpointError(f"{cfile}: not an rnope config (no 'model' section)")
    try:
        return ModelConfig.from_dict(meta["model"]), meta
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{cfile}: {e}") from None


def load_state(model: Transformer, weights: Path, *, assign: bool = False) -> None:
    """Load safetensors weights into ``model``, strictly: names, shapes must match the config.

    ``assign``: the loaded tensors replace the parameters (for a model built on the ``meta``
    device) instead of being copied into them."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not weights.exists():
        raise CheckpointError(f"{weights} is missing")
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{weights}: corrupt or truncated safetensors file ({e})") from None
    own = model.state_dict()
    for name in own:
        if name not in state:
            raise CheckpointError(f"{weights}: missing tensor '{name}' required by config.json")
        if tuple(state[name].shape) != tuple(own[name].shape):
            raise CheckpointError(
                f"{weights}: tensor '{name}' has shape {tuple(state[name].shape)}, config.json implies {tuple(own[name].shape)}"
            )
    extra = sorted(set(state) - set(own))
    if extra:
        raise CheckpointError(f"{weights}: unexpected tensor '{extra[0]}' not in the model config.json describes")
    model.load_state_dict(state, strict=True, assign=assign)


# ---- loader registry ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Loader:
    """A directory format :func:`load` reads: ``detect(dir)`` says (without raising) whether ``dir``
    is one; ``load(dir, device, dtype)`` returns ``(model, tokenizer_or_None)``."""

    name: str
    detect: Callable[[Path], bool]
    load: Callable[[Path, Any, Any], tuple[Any, Any]]


_LOADERS: dict[str, Loader] = {}

#: Formats that live outside the core, ``{format name: module name}``. Each module is imported the
#: first time :func:`loaders` runs (never when this module is imported) and registers its formats
#: through its ``register_loaders(register_loader)`` hook. A module that cannot be imported is
#: skipped.
LAZY_LOADER_MODULES: dict[str, str] = {"hf": "rnope.interop.hf"}
_imported: set[str] = set()


def register_loader(name: str, detect: Callable[[Path], bool], load: Callable[..., tuple[Any, Any]]) -> Loader:
    """Register the directory format ``name`` (replacing one of that name). Formats are tried in the
    order they were first registered; the native rnope format is first."""
    loader = Loader(name, detect, load)
    _LOADERS[name] = loader
    return loader


def loaders() -> list[Loader]:
    """The registered formats, after importing the modules of :data:`LAZY_LOADER_MODULES` not imported yet."""
    for module in LAZY_LOADER_MODULES.values():
        if module in _imported:
            continue
        _imported.add(module)
        try:
            mod = importlib.import_module(module)
        except ImportError:
            continue
        mod.register_loaders(register_loader)
    return list(_LOADERS.values())


def find_loader(d: str | os.PathLike) -> Loader | None:
    """The first registered format whose ``detect`` accepts directory ``d``, or None."""
    d = Path(d)
    return next((f for f in loaders() if f.detect(d)), None)


def _config_dict(d: Path) -> dict | None:
    try:
        meta = read_meta(d)
    except CheckpointError:
        return None
    return meta if isinstance(meta, dict) else None


def _is_native(d: Path) -> bool:
    """An rnope directory: its ``config.json`` has a ``model`` section."""
    meta = _config_dict(d)
    return meta is not None and "model" in meta


def load(path: str | os.PathLike, *, device: str | torch.device = "cpu", dtype: torch.dtype | None = None):
    """``(model, tokenizer)`` from a checkpoint / run directory; tokenizer is None if absent.

    The directory's format is found by :func:`find_loader`: an rnope checkpoint, or a Hugging Face
    directory (read by :mod:`rnope.interop.hf` when that module can be imported). A directory no
    format accepts is reported as an rnope checkpoint would be (the first problem found).
    """
    d = resolve(path)
    meta = read_meta(d) if (d / CONFIG_FILE).exists() else {}  # an unreadable config.json is reported first
    loader = find_loader(d)
    if loader is None:
        if isinstance(meta, dict) and "model_type" in meta and "model" not in meta:
            raise CheckpointError(f"'{d}' is a Hugging Face directory; HF import is not available")
        loader = _LOADERS[FORMAT]
    return loader.load(d, device, dtype)


def _load_native(d: Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None):
    """``(model, tokenizer)`` of the rnope checkpoint directory ``d``."""
    verify(d)
    config, _ = read_config(d)
    from .weights_header import check_config  # before any model is built: the weights' headers bound the config

    check_config(config, d / CONFIG_FILE, [d / WEIGHTS_FILE])
    # built on "meta" (no random init of weights about to be overwritten: an 8B model skips ~32 GB of
    # init), then the file's tensors are assigned; cast to the default dtype as a fresh model would be
    with torch.device("meta"):
        model = Transformer(config)
    load_state(model, d / WEIGHTS_FILE, assign=True)
    model.to(device=device, dtype=dtype or torch.get_default_dtype())
    model.eval()
    tokenizer = None
    if (d / TOKENIZER_FILE).exists():
        from .tokenizer import Tokenizer

        tokenizer = Tokenizer.load(d / TOKENIZER_FILE)
        if tokenizer.vocab_size > config.vocab_size:
            raise CheckpointError(
                f"{d / TOKENIZER_FILE}: tokenizer has {tokenizer.vocab_size} tokens but the model's vocab_size is {config.vocab_size}"
            )
    return model, tokenizer


register_loader(FORMAT, _is_native, _load_native)
