"""Training checkpoints: atomic write, pruning, exact resume. No pickle anywhere.

``RUN/checkpoints/step_N/`` holds what :func:`rnope.checkpoint.save` writes (``config.json``,
``model.safetensors``, ``tokenizer.json`` — so ``rnope.load(RUN)`` works) plus

* ``trainer_state.safetensors`` — AdamW moments (``optim.<param>.<key>``) and RNG states as uint8
  tensors (``rng.torch``, ``rng.cuda.<i>``, ``rng.python``, ``rng.numpy``);
* ``trainer_state.json`` — step, stage, tokens seen, data-stream positions, optimizer param-group
  hyper-parameters, the RNG scalars and the resolved run config.

A checkpoint is written into ``checkpoints/.tmp-step_N``, every file fsynced, then renamed to
``step_N`` (rename is atomic), so a crash mid-write leaves the previous checkpoints intact; stale
``.tmp-*`` directories are removed on the next start. Only the last ``keep`` checkpoints stay.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import checkpoint as ckpt
from ..outputs import atomic_write_text

__all__ = [
    "CheckpointWriteError",
    "STATE_JSON",
    "STATE_TENSORS",
    "clean_tmp",
    "latest_checkpoint",
    "read_checkpoint",
    "rng_state",
    "set_aside",
    "set_rng_state",
    "truncate_metrics",
    "verify_checkpoint",
    "write_checkpoint",
]

STATE_JSON, STATE_TENSORS = "trainer_state.json", "trainer_state.safetensors"
_STEP_RE = re.compile(r"step_(\d+)")


# ---- RNG ------------------------------------------------------------------------------------------
def _u8(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a).view(np.uint8).copy())


def rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Torch (CPU + CUDA), Python and NumPy generator states: (uint8 tensors, JSON scalars)."""
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s.cpu()
    pv, pstate, pgauss = random.getstate()
    tensors["rng.python"] = _u8(np.asarray(pstate, dtype="<u4"))
    nname, nkeys, npos, nhas, ncached = np.random.get_state()
    tensors["rng.numpy"] = _u8(np.asarray(nkeys, dtype="<u4"))
    meta = {"python": [pv, pgauss], "numpy": [nname, int(npos), int(nhas), float(ncached)]}
    return tensors, meta


def set_rng_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    if torch.cuda.is_available():
        cuda = [tensors[k] for k in sorted((k for k in tensors if k.startswith("rng.cuda.")), key=lambda k: int(k.rsplit(".", 1)[1]))]
        for i, s in enumerate(cuda[: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(s, i)
    pv, pgauss = meta["python"]
    random.setstate((pv, tuple(int(v) for v in tensors["rng.python"].numpy().view("<u4")), pgauss))
    nname, npos, nhas, ncached = meta["numpy"]
    np.random.set_state((nname, tensors["rng.numpy"].numpy().view("<u4").copy(), npos, nhas, ncached))


# ---- write ----------------------------------------------------------------------------------------
def _fsync_path(p: Path) -> None:
    fd = os.open(p, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _step_dirs(root: Path) -> list[tuple[int, Path]]:
    if not root.is_dir():
        return []
    return sorted((int(m.group(1)), d) for d in root.iterdir() if (m := _STEP_RE.fullmatch(d.name)) and d.is_dir())


def write_checkpoint(
    run_dir: Path,
    step: int,
    *,
    config,
    model_state: dict[str, torch.Tensor],
    optim_state: dict[str, Any],
    tokenizer,
    trainer: dict[str, Any],
    keep: int,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``run_dir/checkpoints/step_<step>`` atomically and prune to the last ``keep``."""
    root = run_dir / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    tmp, final = root / f".tmp-step_{step}", root / f"step_{step}"
    try:
        return _write(root, tmp, final, step, config=config, model_state=model_state, optim_state=optim_state,
                      tokenizer=tokenizer, trainer=trainer, keep=keep, extra=extra)
    except OSError as e:  # a full disk, a failed write: no partial step_N; the previous checkpoints stay
        shutil.rmtree(tmp, ignore_errors=True)
        cause = e.strerror or str(e)
        raise CheckpointWriteError(e.errno, f"cannot write checkpoint '{final}': {cause}") from None


class CheckpointWriteError(OSError):
    """A checkpoint could not be written; ``str()`` is one line naming the checkpoint and the cause."""

    def __str__(self) -> str:
        return self.strerror or super().__str__()


def _write(root: Path, tmp: Path, final: Path, step: int, *, config, model_state, optim_state, tokenizer, trainer, keep, extra) -> Path:
    from safetensors.torch import save_file

    if tmp.exists():
        shutil.rmtree(tmp)
    ckpt.save(tmp, config, model_state, tokenizer, extra={"step": step, **(extra or {})})

    tensors: dict[str, torch.Tensor] = {}
    for name, st in optim_state.get("state", {}).items():
        for key, v in st.items():
            tensors[f"optim.{name}.{key}"] = torch.as_tensor(v).detach().cpu().contiguous()
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in optim_state.get("param_groups", [])]
    rng_tensors, rng_meta = rng_state()
    tensors.update(rng_tensors)
    save_file(tensors, str(tmp / STATE_TENSORS), metadata={"format": "pt", "producer": "rnope-train"})
    meta = {**trainer, "step": step, "param_groups": groups, "rng": rng_meta}
    (tmp / STATE_JSON).write_text(json.dumps(meta, indent=1, sort_keys=True), encoding="utf-8")
    ckpt.write_checksums(tmp)
    for f in tmp.iterdir():
        _fsync_path(f)
    _fsync_path(tmp)

    if final.exists():  # e.g. re-reaching a step after resuming from an earlier one
        old = root / f".tmp-old-step_{step}"
        shutil.rmtree(old, ignore_errors=True)
        os.rename(final, old)
        try:
            os.rename(tmp, final)
        except OSError:
            os.rename(old, final)
            raise
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, final)
    _fsync_path(root)
    for s, d in _step_dirs(root)[:-keep]:
        if s != step:
            shutil.rmtree(d, ignore_errors=True)
    return final


def clean_tmp(run_dir: Path) -> None:
    """Remove directories left by a checkpoint write that was killed mid-way."""
    root = run_dir / "checkpoints"
    if root.is_dir():
        for d in root.iterdir():
            if d.name.startswith(".tmp-"):
                shutil.rmtree(d, ignore_errors=True)


# ---- read -----------------------------------------------------------------------------------------
REQUIRED = (ckpt.CONFIG_FILE, ckpt.WEIGHTS_FILE, STATE_JSON, STATE_TENSORS)


def verify_checkpoint(d: Path) -> str | None:
    """``None`` if training checkpoint ``d`` is complete and matches its checksums, else why not (one line)."""
    try:
        ckpt.verify(d, REQUIRED)
        meta = json.loads((d / STATE_JSON).read_text(encoding="utf-8"))
    except ckpt.CheckpointError as e:
        return str(e)
    except (OSError, UnicodeDecodeError, ValueError) as e:
        return f"{d / STATE_JSON} is unreadable ({e.__class__.__name__}: {e})"
    if not isinstance(meta, dict) or not isinstance(meta.get("step"), int):
        return f"{d / STATE_JSON} is not a trainer state (no integer 'step')"
    return None


def latest_checkpoint(run_dir: Path, rejected: list[tuple[Path, str]] | None = None) -> Path | None:
    """The newest training checkpoint of a run that verifies (:func:`verify_checkpoint`); those newer
    that do not are appended to ``rejected`` as ``(path, reason)``."""
    for _, d in reversed(_step_dirs(run_dir / "checkpoints")):
        why = verify_checkpoint(d)
        if why is None:
            return d
        if rejected is not None:
            rejected.append((d, why))
    return None


def set_aside(d: Path) -> Path:
    """Rename a checkpoint that does not verify to ``step_N.corrupt`` (kept for inspection; no reader
    picks it up, and the step can be written again)."""
    dst = d.with_name(d.name + ".corrupt")
    shutil.rmtree(dst, ignore_errors=True)
    os.rename(d, dst)
    return dst


def read_checkpoint(d: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, Any], dict[str, torch.Tensor]]:
    """``(model_state, optim_state, trainer_json, rng_tensors)`` of a checkpoint directory."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        model_state = load_file(str(d / ckpt.WEIGHTS_FILE))
        tensors = load_file(str(d / STATE_TENSORS))
        meta = json.loads((d / STATE_JSON).read_text(encoding="utf-8"))
    except (SafetensorError, OSError, ValueError) as e:
        raise ckpt.CheckpointError(f"checkpoint '{d}' is unreadable ({e.__class__.__name__}: {e})") from None
    state: dict[str, dict[str, torch.Tensor]] = {}
    rng: dict[str, torch.Tensor] = {}
    for k, v in tensors.items():
        if k.startswith("optim."):
            name, key = k[len("optim.") :].rsplit(".", 1)
            state.setdefault(name, {})[key] = v
        elif k.startswith("rng."):
            rng[k] = v
    groups = [{k: (tuple(v) if k == "betas" else v) for k, v in g.items()} for g in meta.get("param_groups", [])]
    return model_state, {"state": state, "param_groups": groups}, meta, rng


def truncate_metrics(path: Path, step: int) -> None:
    """Keep only the lines of ``metrics.jsonl`` with ``step <= step`` (each step exactly once on resume)."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a kill
        if isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] <= step:
            keep.append(line)
    atomic_write_text(path, "".join(s + "\n" for s in keep))
