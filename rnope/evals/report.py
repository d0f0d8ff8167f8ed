"""Outputs of the evaluations: versions, atomic writes, Markdown tables and PNG figures.

Everything is rendered in memory first (JSON text, Markdown text, PNG bytes) and only then written
with :func:`write_outputs` -- each file to ``NAME.tmp`` and ``os.replace``-d into place -- so a
failed run leaves no partial output. Figures use matplotlib's Agg canvas directly (no pyplot global
state, no display needed).

Heatmaps (:func:`heatmap_png`) follow docs/evaluation.md: rows = depth % with 0 at the top, columns = context
length, colour = mean score on a fixed 0-1 red -> yellow -> green scale, the training length marked
with a dashed line and a ``*`` on its tick. Their pixel size is :func:`heatmap_size` exactly (no
``bbox_inches="tight"``), so panels of the same grid line up.
"""

from __future__ import annotations

import io
import json
import math
import os
import platform
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "DPI",
    "check_out_dir",
    "fmt",
    "heatmap_png",
    "heatmap_size",
    "lines_png",
    "md_table",
    "png_size",
    "to_json",
    "versions",
    "write_outputs",
]

DPI = 100


# --------------------------------------------------------------------------------------- metadata
def _dist_version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def versions() -> dict[str, Any]:
    """Versions that affect results: rnope (+ git commit when run from a checkout), Python, torch,
    numpy, tokenizers, transformers / lm_eval when installed, and the platform."""
    import torch

    from .. import __version__
    from ..provenance import git_commit

    v: dict[str, Any] = {
        "rnope": __version__,
        "git_commit": git_commit(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "platform": platform.platform(),
    }
    for dist in ("numpy", "tokenizers", "transformers", "lm_eval"):
        v[dist] = _dist_version(dist)
    return v


# --------------------------------------------------------------------------------------- writing
def check_out_dir(out: str | os.PathLike) -> Path:
    """Validate ``--out`` without creating it: it may be missing or a directory, never a file."""
    p = Path(out)
    if p.exists() and not p.is_dir():
        raise ValueError(f"--out '{p}' exists and is not a directory")
    for parent in p.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"--out '{p}': '{parent}' is not a directory")
            break
    return p


def to_json(obj: Any) -> str:
    """Pretty JSON (keys in insertion order; NaN / inf written as null)."""

    def clean(x: Any) -> Any:
        if isinstance(x, float) and not math.isfinite(x):
            return None
        if isinstance(x, Mapping):
            return {str(k): clean(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [clean(v) for v in x]
        return x

    return json.dumps(clean(obj), indent=2, ensure_ascii=False, allow_nan=False) + "\n"


def write_outputs(out: str | os.PathLike, files: Mapping[str, str | bytes]) -> list[Path]:
    """Write ``{file name: text or bytes}`` into ``out`` (created if missing): every file goes to
    ``NAME.tmp`` first, and only when all are written are they renamed into place."""
    d = check_out_dir(out)
    d.mkdir(parents=True, exist_ok=True)
    tmps: list[tuple[Path, Path]] = [(d / (name + ".tmp"), d / name) for name in files]
    try:
        for (tmp, _), data in zip(tmps, files.values()):
            if isinstance(data, str):
                tmp.write_text(data, encoding="utf-8")
            else:
                tmp.write_bytes(data)
    except BaseException:
        for tmp, _ in tmps:
            tmp.unlink(missing_ok=True)
        raise
    for tmp, final in tmps:
        os.replace(tmp, final)
    return [final for _, final in tmps]


# --------------------------------------------------------------------------------------- markdown
def fmt(x: Any, digits: int = 2) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        if not math.isfinite(x):
            return "–"
        return f"{x:.{digits}f}"
    return str(x)


def md_table(headers: Sequence[str], rows: Iterable[Sequence[Any]], digits: int = 2) -> str:
    """A GitHub Markdown table; floats printed with ``digits`` decimals."""
    head = "| " + " | ".join(map(str, headers)) + " |"
    sep = "|" + "|".join("---" for _ in headers) + "|"
    body = ["| " + " | ".join(fmt(c, digits) for c in r) + " |" for r in rows]
    return "\n".join([head, sep, *body]) + "\n"


# --------------------------------------------------------------------------------------- figures
def _figure(w_in: float, h_in: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w_in, h_in), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) in pixels from a PNG's IHDR chunk."""
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG")
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def _heatmap_inches(n_lengths: int, n_depths: int) -> tuple[float, float]:
    return 2.4 + 0.75 * n_lengths, 1.4 + 0.38 * n_depths


def heatmap_size(n_lengths: int, n_depths: int) -> tuple[int, int]:
    """Pixel (width, height) of :func:`heatmap_png` for a grid of that many lengths and depths."""
    w, h = _heatmap_inches(n_lengths, n_depths)
    return int(round(w * DPI)), int(round(h * DPI))


def _length_label(n: int) -> str:
    return f"{n // 1024}k" if n >= 1024 and n % 1024 == 0 else str(n)


def heatmap_png(
    values: Sequence[Sequence[float | None]],
    lengths: Sequence[int],
    depths: Sequence[float],
    *,
    train_seq_len: int | None = None,
    title: str = "",
) -> bytes:
    """PNG heatmap: ``values[i][j]`` = mean score at ``depths[i]`` (row, 0 % on top) and
    ``lengths[j]`` (column); fixed 0-1 red-yellow-green scale; training length marked."""
    import numpy as np

    fig = _figure(*_heatmap_inches(len(lengths), len(depths)))
    ax = fig.add_axes((0.17, 0.2, 0.62, 0.68))
    cax = fig.add_axes((0.83, 0.2, 0.03, 0.68))
    arr = np.array([[np.nan if v is None else float(v) for v in row] for row in values], dtype=float)
    im = ax.imshow(arr, cmap="RdYlGn", vmin=0.0, vmax=1.0, aspect="auto", interpolation="nearest", origin="upper")
    fig.colorbar(im, cax=cax).set_label("score")
    ax.set_xticks(range(len(lengths)))
    ax.set_xticklabels([_length_label(n) + ("*" if train_seq_len == n else "") for n in lengths], fontsize=8)
    ax.set_yticks(range(len(depths)))
    ax.set_yticklabels([f"{d:g}" for d in depths], fontsize=8)
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("needle depth (%)")
    if len(depths) * len(lengths) <= 400:
        for i in range(arr.shape[0]):
            for j in range(arr.shape[1]):
                if np.isfinite(arr[i, j]):
                    ax.text(j, i, f"{arr[i, j]:.2f}".lstrip("0") if arr[i, j] < 1 else "1", ha="center",
                            va="center", fontsize=6, color="black")
    if train_seq_len is not None and lengths:
        x = sum(1 for n in lengths if n <= train_seq_len) - 0.5  # boundary after the last trained length
        ax.axvline(x, color="black", linestyle="--", linewidth=1.5)
        ax.text(x, -0.6, f" train {_length_label(train_seq_len)}", ha="left", va="bottom", fontsize=7,
                clip_on=False)
    if title:
        fig.suptitle(title, fontsize=10)
    return _png(fig)


def lines_png(
    series: Sequence[tuple[str, Sequence[float], Sequence[float | None], int | None]],
    *,
    xlabel: str,
    ylabel: str,
    title: str = "",
    logx: bool = False,
    logy: bool = False,
    size: tuple[float, float] = (7.0, 4.5),
) -> bytes:
    """PNG line plot: one ``(label, xs, ys, mark_x)`` per series; ``mark_x`` (the training length)
    is drawn as a dashed vertical line in the series' colour."""
    fig = _figure(*size)
    ax = fig.add_axes((0.11, 0.13, 0.62, 0.77))
    for k, (label, xs, ys, mark) in enumerate(series):
        color = f"C{k % 10}"
        pts = [(x, y) for x, y in zip(xs, ys) if y is not None and math.isfinite(y)]
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o" if len(pts) <= 32 else None,
                    markersize=4, linewidth=1.5, color=color, label=label)
        if mark is not None:
            ax.axvline(mark, color=color, linestyle="--", linewidth=1, alpha=0.8,
                       label=f"{label}: train {_length_label(mark)}")
    if logx:
        ax.set_xscale("log", base=2)
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    if series:
        ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=7, frameon=False)
    if title:
        ax.set_title(title, fontsize=10)
    return _png(fig)
