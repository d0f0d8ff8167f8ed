"""Outputs of the evaluations: versions, atomic writes, Markdown tables and PNG figures.

Everything is rendered in memory first (JSON text, Markdown text, PNG bytes) and only then written
with :func:`write_outputs` -- each file to a temporary file beside it, all renamed into place once
all are written (:func:`rnope.outputs.write_files`) -- so a failed run leaves no partial output.
Figures use matplotlib's Agg canvas directly (no pyplot global state, no display needed).

Heatmaps (:func:`heatmap_png`) follow docs/evaluation.md: rows = depth % with 0 at the top, columns = context
length, colour = mean score on a fixed 0-1 colour-blind-safe sequential scale (viridis), each cell
labelled in black or white for contrast, the training length marked with a dashed line and a ``*``
on its tick. Figures use constrained layout at a fixed size: a heatmap's pixel size is
:func:`heatmap_size` exactly (no ``bbox_inches="tight"``), so panels of the same grid line up.
"""

from __future__ import annotations

import io
import json
import math
import os
import textwrap
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..outputs import check_out_dir as _check_out_dir
from ..outputs import length_label as _length_label
from ..outputs import markdown_table, versions, write_files

__all__ = [
    "DPI",
    "check_out_dir",
    "fmt",
    "HEATMAP_CMAP",
    "figure",
    "heatmap_figure",
    "heatmap_png",
    "heatmap_size",
    "length_x_axis",
    "lines_figure",
    "lines_png",
    "md_table",
    "plain_number",
    "plain_y_axis",
    "png_size",
    "text_color",
    "to_json",
    "versions",
    "write_outputs",
]

DPI = 100


# --------------------------------------------------------------------------------------- writing
def check_out_dir(out: str | os.PathLike) -> Path:
    """Validate ``--out`` without creating it: it may be missing or a directory (evaluations add
    their files to it), never a file (:func:`rnope.outputs.check_out_dir` with ``new=False``)."""
    return _check_out_dir(out, new=False)


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
    """Write ``{file name: text or bytes}`` into ``out`` (checked with :func:`check_out_dir`, created
    if missing), all or nothing (:func:`rnope.outputs.write_files`)."""
    return write_files(check_out_dir(out), files)


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
    """A GitHub Markdown table (:func:`rnope.outputs.markdown_table`) ending in a newline; cells
    written with :func:`fmt`, floats with ``digits`` decimals."""
    return markdown_table(headers, [[fmt(c, digits) for c in r] for r in rows]) + "\n"


# --------------------------------------------------------------------------------------- figures
HEATMAP_CMAP = "viridis"  # perceptually uniform and colour-blind safe (no red-green axis)


def figure(w_in: float, h_in: float, dpi: int = DPI):
    """A matplotlib Figure on its own Agg canvas (no pyplot global state) with constrained layout,
    so titles, tick labels, axis labels, colour bars and outside legends never overlap or leave the
    canvas while the figure keeps its exact size."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w_in, h_in), dpi=dpi, layout="constrained")
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
    return 2.6 + 0.75 * n_lengths, 1.6 + 0.38 * n_depths


def heatmap_size(n_lengths: int, n_depths: int) -> tuple[int, int]:
    """Pixel (width, height) of :func:`heatmap_png` for a grid of that many lengths and depths."""
    w, h = _heatmap_inches(n_lengths, n_depths)
    return int(round(w * DPI)), int(round(h * DPI))


def plain_number(v: float, _pos: Any = None) -> str:
    """A tick label in plain decimals (``6.735``, ``100``, ``10,000``): never ``6.735×10⁰`` or an offset."""
    if v == 0:
        return "0"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    return f"{v:.6g}"


def plain_y_axis(ax, ys: Iterable[float | None], *, log: bool = False) -> None:
    """Y scale with plain tick labels. A log scale is used only when ``log`` and the finite positive
    values span at least a factor of 10: across a narrower range a log axis looks the same as a linear
    one, and matplotlib would label it with clipped minor ticks in scientific notation."""
    from matplotlib.ticker import FuncFormatter, NullFormatter, ScalarFormatter

    pos = [float(y) for y in ys if y is not None and math.isfinite(y) and y > 0]
    if log and pos and max(pos) >= 10 * min(pos):
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(FuncFormatter(plain_number))
        if max(pos) < 1000 * min(pos):  # few decades: label the 2x and 5x minor ticks too

            def minor(v: float, _pos: Any = None) -> str:
                mantissa = round(v / 10 ** math.floor(math.log10(v) + 1e-9), 6) if v > 0 else 0
                return plain_number(v) if mantissa in (2, 5) else ""

            ax.yaxis.set_minor_formatter(FuncFormatter(minor))
        else:
            ax.yaxis.set_minor_formatter(NullFormatter())
    else:
        ax.set_yscale("linear")
        f = ScalarFormatter(useOffset=False, useMathText=False)
        f.set_scientific(False)
        ax.yaxis.set_major_formatter(f)


def length_x_axis(ax, xs: Iterable[float]) -> None:
    """Log-2 x axis of context lengths, ticked at the lengths measured and labelled ``512``, ``1k``, ``2k``
    (not ``2^9``); at most 12 labels."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    ticks = sorted({float(x) for x in xs if x is not None and math.isfinite(x) and x > 0})
    ax.set_xscale("log", base=2)
    if ticks:
        step = -(-len(ticks) // 12)
        ax.xaxis.set_major_locator(FixedLocator(ticks[::step]))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos=None: _length_label(int(round(v)))))
    ax.xaxis.set_minor_locator(NullLocator())


def text_color(rgba: Sequence[float]) -> str:
    """``"black"`` or ``"white"``, whichever contrasts more with a background colour (WCAG relative luminance)."""

    def lin(c: float) -> float:
        return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4

    r, g, b = (lin(float(c)) for c in rgba[:3])
    lum = 0.2126 * r + 0.7152 * g + 0.0722 * b
    return "black" if (lum + 0.05) / 0.05 >= 1.05 / (lum + 0.05) else "white"


def _cell_text(v: float) -> str:
    return "1" if v >= 1 else "0" if v <= 0 else f"{v:.2f}"


def heatmap_figure(
    values: Sequence[Sequence[float | None]],
    lengths: Sequence[int],
    depths: Sequence[float],
    *,
    train_seq_len: int | None = None,
    title: str = "",
):
    """The Figure of :func:`heatmap_png` (for inspection before it is written)."""
    import matplotlib
    import numpy as np
    from matplotlib.colors import Normalize

    fig = figure(*_heatmap_inches(len(lengths), len(depths)))
    ax = fig.add_subplot()
    arr = np.array([[np.nan if v is None else float(v) for v in row] for row in values], dtype=float)
    cmap = matplotlib.colormaps[HEATMAP_CMAP].with_extremes(bad="#d9d9d9")
    norm = Normalize(vmin=0.0, vmax=1.0)
    im = ax.imshow(arr, cmap=cmap, norm=norm, aspect="auto", interpolation="nearest", origin="upper")
    cb = fig.colorbar(im, ax=ax, fraction=0.06, pad=0.03)
    cb.set_label("mean score (fraction correct)" if len(depths) >= 4 else "mean score", fontsize=10)
    cb.ax.tick_params(labelsize=9)
    ax.set_xticks(range(len(lengths)))
    ax.set_xticklabels([_length_label(n) + ("*" if train_seq_len == n else "") for n in lengths], fontsize=9)
    ax.set_yticks(range(len(depths)))
    ax.set_yticklabels([f"{d:g}" for d in depths], fontsize=9)
    ax.set_xlabel("context length (tokens); * = training length", fontsize=10)
    ax.set_ylabel("needle depth (%)", fontsize=10)
    if len(depths) * len(lengths) <= 400:
        for i in range(arr.shape[0]):
            for j in range(arr.shape[1]):
                v = arr[i, j]
                if np.isfinite(v):
                    ax.text(j, i, _cell_text(v), ha="center", va="center", fontsize=10, color=text_color(cmap(norm(v))))
                else:
                    ax.text(j, i, "–", ha="center", va="center", fontsize=10, color="black")
    if train_seq_len is not None and lengths:
        x = sum(1 for n in lengths if n <= train_seq_len) - 0.5  # boundary after the last trained length
        # a white dashed line on a black one: visible on the dark and the light end of the scale
        ax.axvline(x, color="black", linewidth=3.0)
        ax.axvline(x, color="white", linestyle="--", linewidth=1.5)
        ha = "left" if x < 0 else "right" if x > len(lengths) - 1 else "center"  # kept above the grid
        ax.annotate(f"train {_length_label(train_seq_len)}", xy=(x, -0.5), xytext=(0, 3), textcoords="offset points",
                    ha=ha, va="bottom", fontsize=9, annotation_clip=False)
    if title:  # wrapped to the figure's width, which follows the grid and may be narrow
        w_in = fig.get_figwidth()
        fig.suptitle(textwrap.fill(title, width=max(20, int(w_in * 72 / (11 * 0.6)))), fontsize=11)
    return fig


def heatmap_png(
    values: Sequence[Sequence[float | None]],
    lengths: Sequence[int],
    depths: Sequence[float],
    *,
    train_seq_len: int | None = None,
    title: str = "",
) -> bytes:
    """PNG heatmap: ``values[i][j]`` = mean score at ``depths[i]`` (row, 0 % on top) and
    ``lengths[j]`` (column); fixed 0-1 colour-blind-safe scale (:data:`HEATMAP_CMAP`), each cell
    labelled in black or white for contrast; training length marked."""
    return _png(heatmap_figure(values, lengths, depths, train_seq_len=train_seq_len, title=title))


def lines_figure(
    series: Sequence[tuple[str, Sequence[float], Sequence[float | None], int | None]],
    *,
    xlabel: str,
    ylabel: str,
    title: str = "",
    logx: bool = False,
    logy: bool = False,
    ylim: tuple[float, float] | None = None,
    size: tuple[float, float] = (7.0, 4.5),
):
    """The Figure of :func:`lines_png` (for inspection before it is written)."""
    fig = figure(*size)
    ax = fig.add_subplot()
    marks = {mark for *_, mark in series if mark is not None}
    all_x: list[float] = []
    all_y: list[float | None] = []
    for k, (label, xs, ys, mark) in enumerate(series):
        color = f"C{k % 10}"
        pts = [(x, y) for x, y in zip(xs, ys) if y is not None and math.isfinite(y)]
        all_x += [p[0] for p in pts]
        all_y += [p[1] for p in pts]
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o" if len(pts) <= 32 else None,
                    markersize=5, linewidth=1.8, color=color, label=label, clip_on=ylim is None, zorder=3)
        if mark is not None and len(marks) > 1:
            ax.axvline(mark, color=color, linestyle="--", linewidth=1, alpha=0.8,
                       label=f"{label}: training length {_length_label(mark)}")
    if len(marks) == 1:  # one shared training length: one marker, one legend entry
        (mark,) = marks
        ax.axvline(mark, color="0.35", linestyle="--", linewidth=1.2, label=f"training length ({_length_label(mark)})")
    if logx:
        length_x_axis(ax, all_x)
    plain_y_axis(ax, all_y, log=logy)
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.set_xlabel(xlabel, fontsize=11)
    ax.set_ylabel(ylabel, fontsize=11)
    ax.tick_params(labelsize=10)
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        fig.legend(loc="outside right upper", fontsize=9, frameon=False)
    if title:
        ax.set_title(title, fontsize=12)
    return fig


def lines_png(
    series: Sequence[tuple[str, Sequence[float], Sequence[float | None], int | None]],
    *,
    xlabel: str,
    ylabel: str,
    title: str = "",
    logx: bool = False,
    logy: bool = False,
    ylim: tuple[float, float] | None = None,
    size: tuple[float, float] = (7.0, 4.5),
) -> bytes:
    """PNG line plot: one ``(label, xs, ys, mark_x)`` per series; ``mark_x`` (the training length) is
    drawn as a dashed vertical line (one grey line when every series shares it, else one in each
    series' colour). ``logx`` puts lengths on a log-2 axis labelled ``512, 1k, 2k``; ``logy`` is a log
    axis only where the data span a decade (:func:`plain_y_axis`); ``ylim`` fixes the y range (a
    score's full scale, so all-zero data does not autoscale). The legend sits outside the axes."""
    return _png(lines_figure(series, xlabel=xlabel, ylabel=ylabel, title=title, logx=logx, logy=logy, ylim=ylim,
                             size=size))
