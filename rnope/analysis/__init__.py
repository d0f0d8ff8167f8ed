"""Attention analysis of NIAH probes (docs/evaluation.md "Attention analysis", paper §3).

* :mod:`~rnope.analysis.capture` -- chunked attention rows of selected queries via the model observer;
* :mod:`~rnope.analysis.segments` -- Begin / Needle / Context / End token labels and segment mass;
* :mod:`~rnope.analysis.entropy` -- row entropy in nats with the ``ln n`` uniform reference;
* :mod:`~rnope.analysis.report` -- :func:`analyze` (the in-process API) and :func:`write_report`;
* :mod:`~rnope.analysis.plots` -- the figures.
"""

from .capture import DEFAULT_CHUNK_BYTES, attention_rows, capture_weights, run_observed
from .entropy import row_entropy, uniform_reference
from .report import Probe, analyze, build_probe, build_probes, measure, render_markdown, versions, write_report
from .segments import BEGIN_TOKENS, SEGMENTS, layer_groups, segment_labels, segment_mass, token_span

__all__ = [
    "BEGIN_TOKENS",
    "DEFAULT_CHUNK_BYTES",
    "Probe",
    "SEGMENTS",
    "analyze",
    "attention_rows",
    "build_probe",
    "build_probes",
    "capture_weights",
    "layer_groups",
    "measure",
    "render_markdown",
    "row_entropy",
    "run_observed",
    "segment_labels",
    "segment_mass",
    "token_span",
    "uniform_reference",
    "versions",
    "write_report",
]
