"""The evaluation figures (rnope/evals/report.py): fixed score axes, plain tick labels, colour-blind
safe heat maps with readable cells, nothing clipped or overlapping (checked on the drawn figure)."""

from __future__ import annotations

import random
import re

import pytest

from rnope.evals import mqar as mqar_eval
from rnope.evals import niah as niah_eval
from rnope.evals import ppl as ppl_eval
from rnope.evals import ruler as ruler_eval
from rnope.evals.report import heatmap_size, png_size

from ..figcheck import SCIENTIFIC, captured_figures, renderer, tick_labels, unreadable


def _ruler_doc(score):
    tasks, lengths = ["niah_single_1", "vt", "cwe"], [1024, 2048, 4096, 8192]
    return {"seed": 0, "settings": {"samples": 4, "lengths": lengths, "tasks": tasks}, "results": [
        {"model": m, "train_seq_len": 1024,
         "scores": [{"length": L, "task": t, "score": score, "n": 4, "stderr": 0.0} for L in lengths for t in tasks],
         "means": [{"length": L, "score": score, "stderr": 0.0, "tasks": tasks} for L in lengths]}
        for m in ("rnope-swa", "rope")]}


def _ppl_doc(points):
    lengths = [256, 512, 1024, 2048, 4096]
    return {"settings": {"lengths": lengths, "score_tokens": 128, "data": "held.jsonl", "streams_used": 3}, "results": [
        {"model": m, "train_seq_len": 1024, "points": [{"length": L, "ppl": p + 0.004 * k} for L, p in zip(lengths, points)],
         "position_nll": {"bin_size": 256, "start": list(range(0, 4096, 256)), "nll": [1.9 + 0.002 * i for i in range(16)]}}
        for k, m in enumerate(("rnope-swa", "rope"))]}


def test_ruler_figure_fixes_the_score_axis_to_0_100(monkeypatch):
    """All-zero scores sit on the bottom of a 0-100 axis, never autoscaled to a band around zero
    with negative scores."""
    for score in (0.0, 100.0, 37.5):
        with captured_figures(monkeypatch) as figs:
            ruler_eval.outputs(_ruler_doc(score))
        (fig,) = figs
        ax = fig.axes[0]
        assert ax.get_ylim() == (0.0, 100.0), score
        assert "%" in ax.get_ylabel() and ax.get_xlabel()
        assert not any(re.search(r"^[-−]", t) for t in tick_labels(ax, "y"))
        assert unreadable(fig) == []


def test_ppl_figure_has_a_y_label_and_plain_tick_labels_nothing_clipped(monkeypatch):
    """A perplexity curve over a tiny range (6.731-6.747) on a log axis used to get minor tick labels
    like '6.735x10^0', cut off at the left edge together with the y label."""
    for points in ([6.731, 6.733, 6.735, 6.737, 6.739], [6.7, 6.9, 7.5, 210.0, 6000.0], [6.7, 9.0, 14.0, 30.0, 80.0]):
        with captured_figures(monkeypatch) as figs:
            ppl_eval.outputs(_ppl_doc(points))
        ppl_fig, pos_fig = figs
        for fig in figs:
            ax = fig.axes[0]
            assert ax.get_ylabel() and ax.get_xlabel()
            ys, xs = tick_labels(ax, "y"), tick_labels(ax, "x")
            assert len(ys) >= 2, (points, ys)
            assert not [t for t in ys + xs if SCIENTIFIC.search(t)], (points, ys, xs)
            assert unreadable(fig) == [], points
        assert "perplexity" in ppl_fig.axes[0].get_ylabel() and "nats" in pos_fig.axes[0].get_ylabel()
        assert tick_labels(ppl_fig.axes[0], "x") == ["256", "512", "1k", "2k", "4k"]


def test_mqar_figure_accuracy_axis_is_0_1_and_the_legend_fits(monkeypatch):
    doc = {"seed": 0, "settings": {"samples": 4, "pairs": [4, 8, 16], "lengths": [256, 512, 1024]}, "results": [
        {"model": m, "train_seq_len": 512, "cells": [{"pairs": P, "length": L, "accuracy": 0.0}
                                                     for P in (4, 8, 16) for L in (256, 512, 1024)]}
        for m in ("rnope-swa", "a-longer-model-name")]}
    with captured_figures(monkeypatch) as figs:
        mqar_eval.outputs(doc)
    (fig,) = figs
    assert fig.axes[0].get_ylim() == (0.0, 1.0)
    assert unreadable(fig) == []
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels.count("training length (512)") == 1  # one shared training length: one marker


def _contrast(c1, c2) -> float:
    def lum(c):
        r, g, b = ((x / 12.92 if x <= 0.04045 else ((x + 0.055) / 1.055) ** 2.4) for x in c[:3])
        return 0.2126 * r + 0.7152 * g + 0.0722 * b

    a, b = sorted((lum(c1), lum(c2)))
    return (b + 0.05) / (a + 0.05)


@pytest.mark.parametrize("n_lengths,n_depths", [(2, 2), (6, 11), (8, 21)])
def test_niah_heatmap_is_colour_blind_safe_with_readable_cell_labels(monkeypatch, n_lengths, n_depths):
    from matplotlib.colors import to_rgba

    lengths = [512 * 2**i for i in range(n_lengths)]
    depths = [100.0 * i / (n_depths - 1) for i in range(n_depths)]
    rng = random.Random(0)
    cells = [{"length": L, "depth": d, "accuracy": rng.choice([0.0, 0.2, 0.5, 0.8, 1.0]), "n": 5} for L in lengths for d in depths]
    doc = {"seed": 0, "settings": {"samples": 5, "wording": "passkey"},
           "results": [{"model": "rnope-swa@theta=1000000", "train_seq_len": 1024, "cells": cells}]}
    with captured_figures(monkeypatch) as figs:
        files = niah_eval.outputs(doc)
    (fig,) = figs
    (png,) = [v for k, v in files.items() if k.endswith(".png")]
    assert png_size(png) == heatmap_size(n_lengths, n_depths)
    ax = fig.axes[0]
    (im,) = ax.images
    assert im.get_cmap().name in {"viridis", "cividis", "magma", "inferno", "plasma"}  # no red-green scale
    assert im.norm.vmin == 0.0 and im.norm.vmax == 1.0
    arr = im.get_array()
    r = renderer(fig)
    cell_w = ax.get_window_extent(r).width / n_lengths
    cell_h = ax.get_window_extent(r).height / n_depths
    labels = [t for t in ax.texts if not t.get_text().startswith("train")]
    assert len(labels) == n_lengths * n_depths
    for t in labels:
        j, i = (int(round(v)) for v in t.get_position())
        assert t.get_fontsize() >= 9, t.get_fontsize()
        assert t.get_text() in ("0", "1") or re.fullmatch(r"0\.\d\d", t.get_text()), t.get_text()
        bg = im.cmap(im.norm(arr[i, j]))
        assert _contrast(to_rgba(t.get_color()), bg) >= 4.5, (t.get_text(), t.get_color(), bg)
        b = t.get_window_extent(r)
        assert b.width < cell_w and b.height < cell_h
    assert unreadable(fig) == []
