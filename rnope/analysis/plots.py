"""Figures of the attention analysis (matplotlib Figures on an Agg canvas, constrained layout, legends
outside the data, colour-blind-safe colours), each written atomically.

* ``segments.png`` -- stacked Begin / Needle / Context / End bars per model and length, one panel per
  layer group (all layers, then RoPE / NoPE / sliding / global where present);
* ``entropy_<model>_<length>.png`` -- entropy vs query position (a spread of query positions, not just
  the End rows), one line per layer (mean over heads), with the full-attention uniform reference ``ln(i + 1)``;
* ``position_profile.png`` -- attention mass by key position (End queries, mean over heads and
  layers), one panel per length, one line per model, the needle position marked.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..outputs import length_label
from .segments import SEGMENTS

__all__ = [
    "write_figures",
    "plot_segments",
    "plot_entropy_positions",
    "plot_position_profile",
    "segments_figure",
    "entropy_figure",
    "position_profile_figure",
]

# Okabe-Ito colours: distinguishable with every common colour-vision deficiency
COLORS = {"begin": "#0072B2", "needle": "#D55E00", "context": "#BBBBBB", "end": "#009E73"}
GROUP_TITLES = {
    "all": "all layers",
    "rope_layers": "RoPE layers",
    "nope_layers": "NoPE layers",
    "sliding_layers": "sliding layers",
    "global_layers": "global layers",
    "chunked_layers": "chunked layers",
}
DPI = 110


def _figure(w_in: float, h_in: float):
    from ..evals.report import figure

    return figure(w_in, h_in, dpi=DPI)


def _save(fig, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, format="png", dpi=DPI, bbox_inches="tight")
    os.replace(tmp, path)


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", s).strip("_") or "model"


def segments_figure(results: Sequence[dict[str, Any]]):
    """Stacked segment-mass bars, one panel per layer group (at most three panels a row, shared y axis);
    a model without a group gets "n/a" instead of an empty bar."""
    groups = [g for g in GROUP_TITLES if any(g in r["segments"] for r in results)]
    ncols = min(3, len(groups))
    nrows = -(-len(groups) // ncols)
    panel_w = max(3.4, 0.45 * len(results) + 1.3)
    fig = _figure(panel_w * ncols + 1.3, 3.9 * nrows + 0.6)
    axes = fig.subplots(nrows, ncols, squeeze=False, sharey=True)
    x = np.arange(len(results))
    names = [f"{r['model']} {length_label(r['length'])}" for r in results]
    for k, ax in enumerate(axes.flat):
        if k >= len(groups):
            ax.set_visible(False)
            continue
        g = groups[k]
        bottom = np.zeros(len(results))
        for seg in SEGMENTS:
            v = np.array([(r["segments"].get(g) or {}).get(seg) or 0.0 for r in results])
            ax.bar(x, v, bottom=bottom, color=COLORS[seg], label=seg, width=0.75)
            bottom += v
        for i, r in enumerate(results):
            if g not in r["segments"]:
                ax.text(i, 0.5, "n/a", ha="center", va="center", rotation=90, fontsize=9, color="0.4")
        ax.set_xticks(x, names)
        ax.tick_params(axis="x", labelsize=8, labelrotation=45)
        for t in ax.get_xticklabels():
            t.set_horizontalalignment("right")
            t.set_rotation_mode("anchor")
        ax.set_xlim(-0.6, len(results) - 0.4)
        ax.set_ylim(0, 1)
        ax.set_title(GROUP_TITLES[g], fontsize=11)
        if k % ncols == 0:
            ax.set_ylabel("attention mass of End queries (fraction)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles[::-1], labels[::-1], loc="outside right upper", fontsize=9, frameon=False)  # top segment first
    fig.suptitle("Attention mass by segment (End queries, mean over heads and layers of the group)", fontsize=12)
    return fig


def plot_segments(results: Sequence[dict[str, Any]], path: Path) -> None:
    _save(segments_figure(results), path)


def entropy_figure(result: dict[str, Any]):
    """Entropy vs query position, one line per layer (mean over heads), with the uniform reference."""
    from matplotlib import colormaps
    from matplotlib.ticker import FuncFormatter, NullFormatter

    from ..evals.report import plain_number

    bq = result["entropy"]["by_query_position"]
    pos = np.asarray(bq["positions"], dtype=float)
    n = len(result["per_layer"])
    fig = _figure(7.6 if n <= 12 else 8.8, 4.6)
    ax = fig.add_subplot()
    cmap = colormaps["viridis"]
    for row, ent in zip(result["per_layer"], bq["per_layer"]):
        kind = ("RoPE" if row["rope"] else "NoPE") + (" sliding" if row["span"] == "sliding" else "" if row["span"] == "full" else f" {row['span']}")
        ax.plot(pos + 1, np.array([np.nan if e is None else e for e in ent], dtype=float),
                color=cmap(0.9 * row["layer"] / max(1, n - 1)), lw=1.2,
                ls="-" if not row["rope"] else "--", label=f"L{row['layer']} {kind}")
    ax.plot(pos + 1, np.log(pos + 1), color="black", lw=1.5, ls=":", label="ln(i+1): uniform\nover all keys")
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(FuncFormatter(plain_number))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("query position i + 1 (tokens)")
    ax.set_ylabel("attention entropy (nats)")
    ax.set_title(f"Entropy vs query position: {result['model']}, {length_label(result['length'])} tokens", fontsize=11)
    ax.grid(True, alpha=0.3)
    fig.legend(loc="outside right upper", fontsize=8, frameon=False, ncol=2 if n > 12 else 1)
    return fig


def plot_entropy_positions(result: dict[str, Any], path: Path) -> None:
    _save(entropy_figure(result), path)


def position_profile_figure(results: Sequence[dict[str, Any]]):
    """Attention mass by key position, one panel per length, one line per model, the needle marked."""
    lengths = sorted({r["length"] for r in results})
    models = list(dict.fromkeys(r["model"] for r in results))
    fig = _figure(4.4 * len(lengths) + 1.8, 3.9)
    axes = fig.subplots(1, len(lengths), squeeze=False)
    needle_labelled = False
    for k, (ax, L) in enumerate(zip(axes[0], lengths)):
        for r in results:
            if r["length"] != L:
                continue
            pp = r["position_profile"]
            x = np.array([np.nan if c is None else c for c in pp["bin_centers"]], dtype=float)
            y = np.array([np.nan if v is None else v for v in pp["mass"]["all"]], dtype=float)
            ax.plot(x, y, lw=1.4, color=f"C{models.index(r['model']) % 10}", label=r["model"])
            if pp.get("needle_position") is not None:
                ax.axvline(pp["needle_position"], color="0.4", ls=":", lw=1.2,
                           label=None if needle_labelled else "needle position")
                needle_labelled = True
        ax.set_title(f"{length_label(L)} tokens", fontsize=11)
        ax.set_xlabel("key position (fraction of probe)")
        ax.set_xlim(0, 1)
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
        if k == 0:
            ax.set_ylabel("attention mass per bin (fraction)")
    handles: dict[str, Any] = {}
    for ax in axes[0]:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(lab, h)
    labels = [lab for lab in models if lab in handles] + [lab for lab in handles if lab not in models]
    if labels:
        fig.legend([handles[lab] for lab in labels], labels, loc="outside right upper", fontsize=9, frameon=False)
    fig.suptitle("Attention mass by key position (End queries, mean over heads and layers)", fontsize=12)
    return fig


def plot_position_profile(results: Sequence[dict[str, Any]], path: Path) -> None:
    _save(position_profile_figure(results), path)


def write_figures(out: Path, results: Sequence[dict[str, Any]]) -> list[str]:
    """Write every figure into ``out``; returns the file names."""
    if not results:
        return []
    out = Path(out)
    names = ["segments.png"]
    plot_segments(results, out / names[0])
    for r in results:
        name = f"entropy_{_slug(r['model'])}_{r['length']}.png"
        plot_entropy_positions(r, out / name)
        names.append(name)
    names.append("position_profile.png")
    plot_position_profile(results, out / names[-1])
    return names
