"""Command-line parsing shared by the ``rnope eval`` commands: lengths (``4k``), depths
(lists or ``START:STOP:STEP``), ``--names``, file-name-safe model names, and per-item seeds."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path

from ..outputs import safe_name

__all__ = ["file_safe", "item_seed", "model_names", "parse_depths", "parse_lengths", "parse_names", "trained_preset"]

# ----------------------------------------------------------------------------------------- parsing
_LEN_RE = re.compile(r"^(\d+)([kK]?)$")


def parse_lengths(text: str | Sequence[int], what: str = "--lengths") -> list[int]:
    """``"256,512,1k,16k"`` -> ``[256, 512, 1024, 16384]`` (sorted, distinct, each >= 1)."""
    if not isinstance(text, str):
        vals = [int(v) for v in text]
    else:
        vals = []
        for part in text.split(","):
            part = part.strip()
            m = _LEN_RE.match(part)
            if not m:
                raise ValueError(f"{what}: {part!r} is not a positive integer (e.g. 256, 4096 or 4k)")
            vals.append(int(m.group(1)) * (1024 if m.group(2) else 1))
    if not vals:
        raise ValueError(f"{what} is empty")
    for v in vals:
        if v < 1:
            raise ValueError(f"{what}: {v} must be >= 1")
    return sorted(set(vals))


def parse_depths(text: str | Sequence[float]) -> list[float]:
    """``"0,10,50,100"`` or ``"0:100:10"`` (inclusive range) -> sorted distinct depths in [0, 100]."""
    vals: list[float] = []
    if not isinstance(text, str):
        vals = [float(v) for v in text]
    else:
        for part in text.split(","):
            part = part.strip()
            try:
                if ":" in part:
                    a, b, step = (float(x) for x in part.split(":"))
                    if step <= 0:
                        raise ValueError
                    n = int(math.floor((b - a) / step + 1e-9)) + 1
                    vals.extend(round(a + i * step, 6) for i in range(max(n, 0)))
                else:
                    vals.append(float(part))
            except ValueError:
                raise ValueError(f"--depths: {part!r} is not a number or START:STOP:STEP range") from None
    if not vals:
        raise ValueError("--depths is empty")
    for v in vals:
        if not (0.0 <= v <= 100.0) or math.isnan(v):
            raise ValueError(f"--depths: {v:g} is outside 0-100 (depths are percentages)")
    return sorted(set(vals))


def parse_names(text: str | None, n: int) -> list[str] | None:
    """``--names a,b`` for ``n`` checkpoints (None when not given)."""
    if text is None:
        return None
    names = [s.strip() for s in text.split(",")]
    if len(names) != n or not all(names):
        raise ValueError(f"--names needs {n} non-empty comma-separated names (one per --ckpt), got {text!r}")
    return names


def file_safe(name: str) -> str:
    """A model name as it may appear in a file name (``swa (rnope-swa)`` -> ``swa_rnope-swa``;
    :func:`rnope.outputs.safe_name`)."""
    return safe_name(name)


def trained_preset(ckpt: str) -> str | None:
    """The preset a training run recorded in its checkpoint's config.json (None if there is none or
    the directory cannot be read: loading it reports why)."""
    try:
        from ..checkpoint import read_meta, resolve

        meta = read_meta(resolve(ckpt))
        preset = meta.get("run", {}).get("preset") if isinstance(meta, dict) else None
    except (ValueError, OSError, AttributeError):
        return None
    return preset if isinstance(preset, str) and preset else None


def model_names(ckpts: Sequence[str], names: Sequence[str] | None = None) -> list[str]:
    """Names for the checkpoints: ``names`` (made file-name safe), or each directory's name
    (``RUN-step_N`` for a checkpoint inside a run's ``checkpoints/``) followed by the preset the run
    was trained from when that differs (``swa (rnope-swa)``: a run named like another preset is
    never mistaken for it); must be distinct."""
    out = []
    for i, c in enumerate(ckpts):
        if names is not None:
            out.append(safe_name(names[i]))
            continue
        p = Path(c).resolve()
        n = p.name
        if p.parent.name == "checkpoints" and p.parent.parent.name:
            n = f"{p.parent.parent.name}-{n}"
        n = safe_name(n)
        preset = trained_preset(c)
        out.append(n if preset is None or preset == n else f"{n} ({preset})")
    dup = sorted({n for n in out if out.count(n) > 1})
    if dup:
        raise ValueError(f"two checkpoints share the name {dup[0]!r}; give distinct names with --names")
    return out


def item_seed(seed: int, *parts: object) -> int:
    """A stable per-item seed derived from the run seed and the item's coordinates."""
    from ..tasks import stable_seed

    return stable_seed("rnope-eval", int(seed), *parts) >> 1
