"""Figures of the attention analysis (matplotlib, Agg backend), each written atomically.

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

from .segments import SEGMENTS

__all__ = ["write_figures", "plot_segments", "plot_entropy_positions", "plot_position_profile"]

COLORS = {"begin": "#4c72b0", "needle": "#c44e52", "context": "#bbbbbb", "end": "#55a868"}
GROUP_TITLES = {
    "all": "all layers",
    "rope_layers": "RoPE layers",
    "nope_layers": "NoPE layers",
    "sliding_layers": "sliding layers",
    "global_layers": "global layers",
    "chunked_layers": "chunked layers",
}


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    os.replace(tmp, path)


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", s).strip("_") or "model"


def _label(L: int) -> str:
    return f"{L // 1024}k" if L % 1024 == 0 else str(L)


def plot_segments(results: Sequence[dict[str, Any]], path: Path) -> None:
    plt = _plt()
    groups = [g for g in GROUP_TITLES if any(g in r["segments"] for r in results)]
    fig, axes = plt.subplots(1, len(groups), figsize=(max(4.0, 0.55 * len(results) + 1.5) * len(groups), 4.2), squeeze=False)
    x = np.arange(len(results))
    names = [f"{r['model']}\n{_label(r['length'])}" for r in results]
    for ax, g in zip(axes[0], groups):
        bottom = np.zeros(len(results))
        for seg in SEGMENTS:
            v = np.array([r["segments"].get(g, {}).get(seg) or 0.0 for r in results])
            ax.bar(x, v, bottom=bottom, color=COLORS[seg], label=seg, width=0.75)
            bottom += v
        ax.set_xticks(x, names, fontsize=7, rotation=0)
        ax.set_ylim(0, 1)
        ax.set_title(GROUP_TITLES[g])
        ax.set_ylabel("attention mass of End queries")
    axes[0][-1].legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    fig.suptitle("Attention mass by segment")
    _save(fig, path)
    plt.close(fig)


def plot_entropy_positions(result: dict[str, Any], path: Path) -> None:
    plt = _plt()
    bq = result["entropy"]["by_query_position"]
    pos = np.asarray(bq["positions"], dtype=float)
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    cmap = plt.get_cmap("viridis")
    n = len(result["per_layer"])
    for row, ent in zip(result["per_layer"], bq["per_layer"]):
        kind = ("RoPE" if row["rope"] else "NoPE") + (" sliding" if row["span"] == "sliding" else "" if row["span"] == "full" else f" {row['span']}")
        ax.plot(pos + 1, np.array(ent, dtype=float), color=cmap(row["layer"] / max(1, n - 1)), lw=1.2,
                ls="-" if not row["rope"] else "--", label=f"L{row['layer']} {kind}")
    ax.plot(pos + 1, np.log(pos + 1), color="black", lw=1.5, ls=":", label="ln(i+1) (uniform, full)")
    ax.set_xscale("log")
    ax.set_xlabel("query position i + 1")
    ax.set_ylabel("entropy (nats)")
    ax.set_title(f"Entropy vs query position — {result['model']}, {_label(result['length'])}")
    ax.legend(fontsize=7, ncol=2 if n > 8 else 1)
    _save(fig, path)
    plt.close(fig)


def plot_position_profile(results: Sequence[dict[str, Any]], path: Path) -> None:
    plt = _plt()
    lengths = sorted({r["length"] for r in results})
    fig, axes = plt.subplots(1, len(lengths), figsize=(5.0 * len(lengths), 3.8), squeeze=False)
    for ax, L in zip(axes[0], lengths):
        for r in results:
            if r["length"] != L:
                continue
            pp = r["position_profile"]
            x = np.array([np.nan if c is None else c for c in pp["bin_centers"]], dtype=float)
            y = np.array([np.nan if v is None else v for v in pp["mass"]["all"]], dtype=float)
            ax.plot(x, y, lw=1.3, label=r["model"])
            if pp.get("needle_position") is not None:
                ax.axvline(pp["needle_position"], color="grey", ls=":", lw=1)
        ax.set_title(f"{_label(L)}: mass by key position (needle dotted)")
        ax.set_xlabel("key position (fraction of probe)")
        ax.set_ylabel("attention mass per bin")
        ax.legend(fontsize=8)
    _save(fig, path)
    plt.close(fig)


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
