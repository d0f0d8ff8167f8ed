"""Mechanical readability checks of matplotlib figures, on the figure as drawn at its written size:
text that leaves the canvas, text that overlaps other text, legends over the data, tick labels in
scientific / mathtext form."""

from __future__ import annotations

import re
from contextlib import contextmanager

SLACK = 1.0  # pixels of tolerance (antialiasing, rounding)


def renderer(fig):
    """Draw ``fig`` (on an Agg canvas, re-attached if pyplot closed it) and return its renderer."""
    if not hasattr(fig.canvas, "get_renderer"):
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        FigureCanvasAgg(fig)
    fig.canvas.draw()
    return fig.canvas.get_renderer()


def _tick_labels(axis) -> list:
    """The tick labels drawn: ticks inside the view interval with a visible, non-empty label."""
    lo, hi = sorted(axis.get_view_interval())
    eps = 1e-9 * max(abs(lo), abs(hi), 1.0)
    out = []
    for ticks, locs in ((axis.get_major_ticks(), axis.get_majorticklocs()), (axis.get_minor_ticks(), axis.get_minorticklocs())):
        for tick, loc in zip(ticks, locs):
            if lo - eps <= loc <= hi + eps:
                out += [lab for lab in (tick.label1, tick.label2) if lab.get_visible() and lab.get_text().strip()]
    return out


def tick_labels(ax, which: str = "y") -> list[str]:
    renderer(ax.figure)
    return [t.get_text() for t in _tick_labels(ax.yaxis if which == "y" else ax.xaxis)]


def texts(fig) -> list:
    """``(kind, Text, window extent)`` of every visible text of the drawn figure."""
    r = renderer(fig)
    found = []
    if getattr(fig, "_suptitle", None) is not None:
        found.append(("suptitle", fig._suptitle))
    found += [("figure text", t) for t in fig.texts if t is not getattr(fig, "_suptitle", None)]
    for leg in fig.legends:
        found += [("legend", t) for t in leg.get_texts()]
    for ax in fig.axes:
        if not ax.get_visible():
            continue
        found += [("title", t) for t in (ax.title, ax._left_title, ax._right_title)]
        found += [("axis label", ax.xaxis.label), ("axis label", ax.yaxis.label)]
        found += [("tick label", t) for t in _tick_labels(ax.xaxis) + _tick_labels(ax.yaxis)]
        found += [("axes text", t) for t in ax.texts]
        if ax.get_legend() is not None:
            found += [("legend", t) for t in ax.get_legend().get_texts()]
    return [(k, t, t.get_window_extent(r)) for k, t in found if t.get_visible() and t.get_text().strip()]


def outside_canvas(fig) -> list[str]:
    """Texts cut off by the edge of the figure."""
    W, H = fig.bbox.width, fig.bbox.height
    return [f"{k} {t.get_text()!r}" for k, t, b in texts(fig)
            if b.x0 < -SLACK or b.y0 < -SLACK or b.x1 > W + SLACK or b.y1 > H + SLACK]


def _slanted(t) -> bool:
    return t.get_rotation() % 90 != 0


def overlaps(fig) -> list[str]:
    """Pairs of texts whose boxes overlap (slanted tick labels are only compared with upright text:
    the axis-aligned boxes of neighbouring slanted labels always overlap)."""
    ts = texts(fig)
    bad = []
    for i, (k1, t1, b1) in enumerate(ts):
        for k2, t2, b2 in ts[i + 1:]:
            if _slanted(t1) and _slanted(t2):
                continue
            dx = min(b1.x1, b2.x1) - max(b1.x0, b2.x0)
            dy = min(b1.y1, b2.y1) - max(b1.y0, b2.y0)
            if dx > SLACK and dy > SLACK:
                bad.append(f"{k1} {t1.get_text()!r} / {k2} {t2.get_text()!r}")
    return bad


def legends_over_axes(fig) -> list[str]:
    """Legends drawn over the data area of an axes."""
    r = renderer(fig)
    legs = list(fig.legends) + [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]
    bad = []
    for leg in legs:
        lb = leg.get_window_extent(r)
        for ax in fig.axes:
            if not ax.get_visible() or not ax.has_data():
                continue
            ab = ax.get_window_extent(r)
            if min(lb.x1, ab.x1) - max(lb.x0, ab.x0) > SLACK and min(lb.y1, ab.y1) - max(lb.y0, ab.y0) > SLACK:
                bad.append(f"legend {[t.get_text() for t in leg.get_texts()]} over an axes")
    return bad


SCIENTIFIC = re.compile(r"\$|\\times|\\mathdefault|10\^|×|e[+-]\d|\d\s*[x×]\s*10")


def unreadable(fig) -> list[str]:
    """Everything mechanical at once: cut-off text, overlapping text, legends over the data."""
    return outside_canvas(fig) + overlaps(fig) + legends_over_axes(fig)


@contextmanager
def captured_figures(monkeypatch):
    """Every matplotlib Figure saved inside the block (in order), kept for inspection."""
    from matplotlib.figure import Figure

    figs: list = []
    save = Figure.savefig

    def recording(self, *args, **kwargs):
        figs.append(self)
        return save(self, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", recording)
    yield figs
    monkeypatch.setattr(Figure, "savefig", save)
