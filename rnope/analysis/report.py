"""Attention analysis of NIAH probes (docs/evaluation.md "Attention analysis", paper §3): the Python API.

:func:`analyze` builds passkey probes (needle at 50 % depth, ``split="eval"``), runs the model once per
probe and, in every layer, recomputes the attention rows of the End queries (question + answer
prefix) in chunks (:mod:`rnope.analysis.capture`), reducing them on the fly to

* **segment mass** per layer and head: attention summed over Begin / Needle / Context / End, mean
  over the End queries (:mod:`rnope.analysis.segments`); aggregated as the mean over heads and
  layers, over all layers and per layer type (RoPE / NoPE, sliding / global);
* **entropy** (nats) of each End row, per layer and head, with the uniform reference ``ln n``;
  and the entropy of a spread of query positions for entropy-vs-position curves
  (:mod:`rnope.analysis.entropy`);
* a **position profile**: attention mass by key position (mean over End queries, heads and
  layers), binned, leaving out the first 10 tokens and the last 3 %.

Each sample gets equal weight: statistics are averaged within a probe first, then over probes.
:func:`write_report` writes ``analysis.json``, ``analysis.md`` and the figures, each atomically.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..outputs import check_out_dir, length_label, markdown_table, write_files
from ..outputs import versions as _versions
from ..tasks import Item, passkey
from .capture import DEFAULT_CHUNK_BYTES, attention_rows, run_observed
from .entropy import BASE, query_positions, row_entropy, uniform_reference
from .segments import BEGIN_TOKENS, END, NEEDLE, SEGMENTS, encode_with_offsets, group_layers, layer_groups, segment_labels, segment_mass

__all__ = [
    "DEPTH",
    "EXCLUDE_LAST_FRACTION",
    "Probe",
    "analyze",
    "build_probe",
    "build_probes",
    "check_lengths",
    "measure",
    "position_bins",
    "render_markdown",
    "versions",
    "write_report",
]

DEPTH = 50.0  # needle depth (%) of every probe
EXCLUDE_LAST_FRACTION = 0.03  # position profile leaves out the last 3 % of keys (and the first 10 tokens)
N_BINS = 50
N_POSITIONS = 48


# ---------------------------------------------------------------------------------------------- probes
@dataclass(frozen=True)
class Probe:
    """One tokenised NIAH probe: ids, per-token segment labels and the task item."""

    tokens: list[int]
    labels: np.ndarray  # (T,) int8, see rnope.analysis.segments
    item: Item

    @property
    def n_tokens(self) -> int:
        return len(self.tokens)

    @property
    def end_index(self) -> np.ndarray:
        """Token indices of the End segment: the queries whose attention is measured."""
        return np.flatnonzero(self.labels == END)

    def segment_tokens(self) -> dict[str, int]:
        return {name: int((self.labels == i).sum()) for i, name in enumerate(SEGMENTS)}


def check_lengths(lengths: Sequence[int]) -> list[int]:
    """Validate a list of probe lengths (positive integers, no repeats)."""
    out = []
    for L in lengths:
        if isinstance(L, bool) or not isinstance(L, (int, np.integer)):
            raise ValueError(f"lengths must be integers, got {L!r}")
        if L < 1:
            raise ValueError(f"lengths must be >= 1, got {L}")
        if int(L) in out:
            raise ValueError(f"length {L} is given twice")
        out.append(int(L))
    if not out:
        raise ValueError("no lengths given")
    return out


def build_probe(
    tokenizer,
    length: int,
    seed: int,
    *,
    depth: float = DEPTH,
    haystack: str = "noise",
    essay: Sequence[str] | None = None,
) -> Probe:
    """The passkey item (``split="eval"``) of ``seed`` at ``length`` tokens, tokenised with segments."""
    item = passkey(seed, length, depth, encode=tokenizer.encode, split="eval", haystack=haystack, essay=essay)
    ids, offsets = encode_with_offsets(tokenizer, item.prompt)
    labels = segment_labels(len(ids), offsets, item.needle_spans, item.query_span)
    if not (labels == END).any():
        raise ValueError(f"length {length}: the probe's End segment is hidden by the first {BEGIN_TOKENS} tokens")
    if not (labels == NEEDLE).any():
        raise ValueError(f"length {length}: the probe's needle is hidden by the first {BEGIN_TOKENS} tokens")
    return Probe(ids, labels, item)


def build_probes(
    tokenizer,
    lengths: Sequence[int],
    samples: int,
    seed: int,
    *,
    depth: float = DEPTH,
    haystack: str = "noise",
    essay: Sequence[str] | None = None,
) -> dict[int, list[Probe]]:
    """``samples`` probes per length; sample ``i`` uses task seed ``seed + i``. Raises ``ValueError``
    (naming the length) when a length is below the probe's minimum."""
    lengths = check_lengths(lengths)
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ValueError(f"samples must be an integer >= 1, got {samples!r}")
    if haystack not in ("noise", "essay"):
        raise ValueError(f"haystack must be 'noise' or 'essay', got {haystack!r}")
    if tokenizer is None:
        raise ValueError("a tokenizer is needed to build probes")
    return {
        L: [build_probe(tokenizer, L, seed + i, depth=depth, haystack=haystack, essay=essay) for i in range(samples)]
        for L in lengths
    }


def position_bins(n_tokens: int, n_bins: int = N_BINS) -> tuple[np.ndarray, np.ndarray]:
    """``(bin_of_token (T,), bin_centers (n_bins,))`` for the position profile.

    Keys ``[10, T - ceil(0.03 T))`` are split into ``n_bins`` equal bins; excluded keys get bin
    ``n_bins``. Centers are relative positions (fraction of the probe).
    """
    lo = min(BEGIN_TOKENS, n_tokens)
    hi = n_tokens - math.ceil(EXCLUDE_LAST_FRACTION * n_tokens)
    t = np.arange(n_tokens)
    if hi <= lo:
        return np.full(n_tokens, n_bins, dtype=np.int64), np.full(n_bins, np.nan)
    b = np.floor((t - lo) * n_bins / (hi - lo)).astype(np.int64)
    b[(t < lo) | (t >= hi)] = n_bins
    centers = (lo + (np.arange(n_bins) + 0.5) * (hi - lo) / n_bins) / n_tokens
    return b, centers


# ------------------------------------------------------------------------------------------- measuring
def measure(
    model: torch.nn.Module,
    probe: Probe,
    *,
    positions: Sequence[int] | None = None,
    n_bins: int = N_BINS,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
) -> dict[str, np.ndarray]:
    """Per-layer statistics of one probe (one forward pass; T x T never built).

    Returns arrays (L = layers, H = query heads, P = len(positions)):
    ``segments`` (L, H, 4) mean End-row mass per segment; ``entropy`` (L, H) mean End-row entropy
    (nats); ``reference`` (L,) mean ``ln n`` of the End rows; ``profile`` (L, n_bins) End-row mass per
    key-position bin (mean over End queries and heads); ``bin_tokens`` (n_bins,), ``bin_centers``;
    ``pos_entropy`` (L, H, P) and ``pos_reference`` (L, P) for the rows at ``positions``.
    """
    cfg = model.config
    dev = next(model.parameters()).device
    T = probe.n_tokens
    L, H = cfg.n_layer, cfg.n_head
    tokens = torch.tensor([probe.tokens], dtype=torch.long, device=dev)
    labels = torch.as_tensor(probe.labels, dtype=torch.long, device=dev)
    end_idx = probe.end_index
    positions = np.asarray([] if positions is None else positions, dtype=np.int64)
    if positions.size and (positions.min() < 0 or positions.max() >= T):
        raise ValueError(f"query positions must lie in [0, {T})")
    bins_np, centers = position_bins(T, n_bins)
    bins = torch.as_tensor(bins_np, device=dev)
    out = {
        "segments": np.zeros((L, H, len(SEGMENTS))),
        "entropy": np.zeros((L, H)),
        "reference": np.zeros(L),
        "profile": np.zeros((L, n_bins)),
        "bin_tokens": np.bincount(bins_np, minlength=n_bins + 1)[:n_bins].astype(np.float64),
        "bin_centers": centers,
        "pos_entropy": np.zeros((L, H, positions.size)),
        "pos_reference": np.zeros((L, positions.size)),
    }
    nE = len(end_idx)

    def fn(i, spec, q, k, q_time, k_time, start):
        seg = torch.zeros(H, len(SEGMENTS), dtype=torch.float64, device=dev)
        ent = torch.zeros(H, dtype=torch.float64, device=dev)
        ref = torch.zeros((), dtype=torch.float64, device=dev)
        prof = torch.zeros(H, n_bins + 1, dtype=torch.float64, device=dev)
        for _, w, allowed in attention_rows(q, k, q_time, k_time, spec, start, queries=end_idx, chunk_bytes=chunk_bytes):
            w = w[0]  # (H, c, T)
            seg += segment_mass(w, labels).sum(dim=1).double()
            ent += row_entropy(w).sum(dim=1).double()
            ref += uniform_reference(allowed[0, 0]).sum().double()
            prof.index_add_(1, bins, w.sum(dim=1).double())
        out["segments"][i] = (seg / nE).cpu().numpy()
        out["entropy"][i] = (ent / nE).cpu().numpy()
        out["reference"][i] = float(ref) / nE
        out["profile"][i] = (prof[:, :n_bins] / nE).mean(dim=0).cpu().numpy()
        j = 0
        for idx, w, allowed in attention_rows(q, k, q_time, k_time, spec, start, queries=positions, chunk_bytes=chunk_bytes):
            n = idx.numel()
            out["pos_entropy"][i, :, j : j + n] = row_entropy(w[0]).double().cpu().numpy()
            out["pos_reference"][i, j : j + n] = uniform_reference(allowed[0, 0]).double().cpu().numpy()
            j += n

    run_observed(model, tokens, fn)
    return out


def _mean_stats(stats: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {k: np.mean([s[k] for s in stats], axis=0) for k in stats[0]}


# --------------------------------------------------------------------------------------------- summary
def _f(x) -> float | None:
    x = float(x)
    return None if not math.isfinite(x) else float(f"{x:.6g}")


def _seg_dict(v) -> dict[str, float]:
    return {name: _f(v[j]) for j, name in enumerate(SEGMENTS)}


def _summarize(name: str, length: int, specs, probes: list[Probe], st: dict[str, np.ndarray], positions) -> dict[str, Any]:
    seg_layer = st["segments"].mean(axis=1)  # (L, 4): mean over heads
    ent_layer = st["entropy"].mean(axis=1)  # (L,)
    groups = layer_groups(specs)
    seg_groups = group_layers(seg_layer, specs)
    ent_groups = group_layers(ent_layer, specs)
    ref_groups = group_layers(st["reference"], specs)
    per_layer = []
    for i, s in enumerate(specs):
        row: dict[str, Any] = {"layer": i, "rope": bool(s.rope), "span": s.span}
        if s.window is not None:
            row["window"] = s.window
        if s.chunk is not None:
            row["chunk"] = s.chunk
        if s.qk_norm:
            row["qk_norm"] = True
        row.update(_seg_dict(seg_layer[i]))
        row["entropy"] = _f(ent_layer[i])
        row["uniform_reference"] = _f(st["reference"][i])
        row["heads"] = [{**_seg_dict(st["segments"][i, h]), "entropy": _f(st["entropy"][i, h])} for h in range(st["entropy"].shape[1])]
        per_layer.append(row)
    tokens = np.mean([p.n_tokens for p in probes])
    seg_tokens = {k: _f(np.mean([p.segment_tokens()[k] for p in probes])) for k in SEGMENTS}
    needle_pos = np.mean([np.flatnonzero(p.labels == NEEDLE).mean() / p.n_tokens for p in probes])
    prof = {g: st["profile"][idx].mean(axis=0) for g, idx in groups.items()}
    with np.errstate(invalid="ignore", divide="ignore"):
        per_tok = {g: np.where(st["bin_tokens"] > 0, v / st["bin_tokens"], np.nan) for g, v in prof.items()}
    return {
        "model": name,
        "length": int(length),
        "samples": len(probes),
        "tokens": _f(tokens),
        "depth": _f(probes[0].item.depth),
        "haystack": probes[0].item.meta.get("haystack"),
        "segment_tokens": seg_tokens,
        "segments": {g: _seg_dict(v) for g, v in seg_groups.items()},
        "entropy": {
            "base": BASE,
            "all": _f(ent_groups["all"]),
            "uniform_reference": _f(ref_groups["all"]),
            "per_layer": [_f(x) for x in ent_layer],
            "uniform_reference_per_layer": [_f(x) for x in st["reference"]],
            "per_layer_head": [[_f(x) for x in row] for row in st["entropy"]],
            "groups": {g: {"entropy": _f(ent_groups[g]), "uniform_reference": _f(ref_groups[g])} for g in groups},
            "by_query_position": {
                "positions": [int(p) for p in positions],
                "per_layer": [[_f(x) for x in row] for row in st["pos_entropy"].mean(axis=1)],
                "uniform_reference_per_layer": [[_f(x) for x in row] for row in st["pos_reference"]],
            },
        },
        "per_layer": per_layer,
        "position_profile": {
            "excluded": {"first_tokens": BEGIN_TOKENS, "last_fraction": EXCLUDE_LAST_FRACTION},
            "bins": int(len(st["bin_centers"])),
            "bin_centers": [_f(x) for x in st["bin_centers"]],
            "tokens_per_bin": [_f(x) for x in st["bin_tokens"]],
            "needle_position": _f(needle_pos),
            "mass": {g: [_f(x) for x in v] for g, v in prof.items()},
            "mass_per_token": {g: [_f(x) for x in v] for g, v in per_tok.items()},
        },
    }


def analyze(
    model: torch.nn.Module,
    tokenizer,
    lengths: Sequence[int],
    samples: int,
    seed: int = 0,
    *,
    name: str = "model",
    depth: float = DEPTH,
    haystack: str = "noise",
    essay: Sequence[str] | None = None,
    n_bins: int = N_BINS,
    n_positions: int = N_POSITIONS,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    probes: dict[int, list[Probe]] | None = None,
    progress: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """Attention analysis of ``model`` on ``samples`` passkey probes per length: one result dict per
    length (the ``results`` entries of ``analysis.json``; see :func:`write_report`).

    ``probes`` (from :func:`build_probes`) skips building them again. Memory stays near one forward
    pass plus ``chunk_bytes``: rows are reduced per layer as they are computed.

    ``tokenizer`` may have fewer tokens than the model's ``vocab_size`` (a padded embedding), not
    more: such a tokenizer raises ``ValueError`` naming both sizes before any probe is built
    (:func:`rnope.tokenizer.check_vocab_fits`).
    """
    from ..tokenizer import check_vocab_fits

    check_vocab_fits(tokenizer, model.config.vocab_size, f"model {name!r}")
    if probes is None:
        probes = build_probes(tokenizer, lengths, samples, seed, depth=depth, haystack=haystack, essay=essay)
    specs = model.config.layers
    was_training = model.training
    model.eval()
    results = []
    try:
        for L in check_lengths(lengths):
            ps = probes[L]
            positions = query_positions(min(p.n_tokens for p in ps), n_positions)
            stats = []
            for j, p in enumerate(ps):
                if progress:
                    progress(f"{name}: length {L} sample {j + 1}/{len(ps)} ({p.n_tokens} tokens)")
                stats.append(measure(model, p, positions=positions, n_bins=n_bins, chunk_bytes=chunk_bytes))
            results.append(_summarize(name, L, specs, ps, _mean_stats(stats), positions))
    finally:
        model.train(was_training)
    return results


def versions() -> dict[str, str]:
    """The versions ``analysis.json`` records: rnope, torch, numpy, python."""
    return _versions(("rnope", "torch", "numpy", "python"))


# ------------------------------------------------------------------------------------------ markdown
def _fmt(x, digits: int = 3) -> str:
    if x is None:
        return "–"
    if x != 0 and abs(x) < 10 ** -digits:
        return f"{x:.1e}"
    return f"{x:.{digits}f}"


def render_markdown(doc: dict[str, Any], figures: Sequence[str] = ()) -> str:
    """``analysis.md``: the paper's tables (segment mass, division of labour, entropy) + per-layer detail."""
    results = doc["results"]
    models = list(dict.fromkeys(r["model"] for r in results))
    lengths = sorted({r["length"] for r in results})
    by = {(r["model"], r["length"]): r for r in results}
    lines = ["# Attention analysis", ""]
    r0 = results[0] if results else {}
    lines += [
        f"Probes: passkey (split eval), needle at {r0.get('depth', DEPTH):g}% depth, haystack "
        f"{r0.get('haystack', 'noise')}, {r0.get('samples', 0)} sample(s) per length, seed {doc.get('seed')}. "
        f"Queries = the End tokens (question + answer prefix). Segments: Begin = first {BEGIN_TOKENS} tokens, "
        "Needle = needle tokens, End = question + answer tokens, Context = the rest. Masses are the attention "
        "of the End queries summed per segment, mean over End queries, then over heads and layers.",
        "",
        "## Attention mass by segment (all layers)",
        "",
        markdown_table(["length", "model", *SEGMENTS],
                       [[length_label(L), m, *(_fmt(by[(m, L)]["segments"]["all"][k]) for k in SEGMENTS)]
                        for L in lengths for m in models if (m, L) in by]),
    ]

    def labour(groups: tuple[str, str]) -> list[list[str]]:
        """Needle and End mass of two layer groups per (model, length); ``–`` where a model has no such layers."""
        rows = []
        for m in models:
            for L in lengths:
                if (m, L) in by:
                    seg = by[(m, L)]["segments"]
                    cells = []
                    for g in groups:
                        cells += [_fmt(seg[g]["needle"], 4), _fmt(seg[g]["end"], 4)] if g in seg else ["–", "–"]
                    rows.append([m, length_label(L), *cells])
        return rows

    lines += [
        "",
        "## Division of labour (mass per layer type)",
        "",
        markdown_table(["model", "length", "NoPE-layer needle", "NoPE-layer end", "RoPE-layer needle", "RoPE-layer end"],
                       labour(("nope_layers", "rope_layers"))),
        "",
        markdown_table(["model", "length", "sliding needle", "sliding end", "global needle", "global end"],
                       labour(("sliding_layers", "global_layers"))),
    ]
    rows = []
    for m in models:
        cells = []
        for L in lengths:
            e = by.get((m, L), {}).get("entropy")
            cells.append(f"{_fmt(e['all'], 2)} / {_fmt(e['uniform_reference'], 2)}" if e else "–")
        rows.append([m, *cells])
    lines += [
        "",
        "## Attention entropy (nats, natural log; End queries, mean over heads and layers)",
        "",
        "Each cell: entropy / uniform reference ln n (n = keys visible to the query, averaged).",
        "",
        markdown_table(["model", *(length_label(L) for L in lengths)], rows),
    ]
    lines += ["", "## Per layer", ""]
    for m in models:
        for L in lengths:
            r = by.get((m, L))
            if not r:
                continue
            rows = []
            for row in r["per_layer"]:
                typ = ("RoPE" if row["rope"] else "NoPE") + " " + row["span"]
                if row.get("window"):
                    typ += f"({row['window']})"
                if row.get("chunk"):
                    typ += f"({row['chunk']})"
                rows.append([row["layer"], typ, *(_fmt(row[k], 4) for k in SEGMENTS),
                             _fmt(row["entropy"], 2), _fmt(row["uniform_reference"], 2)])
            lines += [
                f"### {m}, {length_label(L)} ({r['tokens']:g} tokens)",
                "",
                markdown_table(["layer", "type", *SEGMENTS, "entropy", "ln n"], rows),
                "",
            ]
    if figures:
        lines += ["## Figures", ""] + [f"![{Path(f).stem}]({f})" for f in figures] + [""]
    v = doc.get("versions") or {}
    if v:
        lines += ["", "Versions: " + ", ".join(f"{k} {val}" for k, val in v.items()), ""]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------- writing
def write_report(out: str | os.PathLike, doc: dict[str, Any], *, figures: bool = True) -> list[Path]:
    """Write ``analysis.json`` (``doc``), ``analysis.md`` and (``figures``) the PNG figures into
    ``out`` (created if needed; :func:`rnope.outputs.check_out_dir` with ``new=False``); every file
    is written to a temporary name and renamed."""
    out = check_out_dir(out, new=False, label="output")
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    names: list[str] = []
    if figures:
        from .plots import write_figures

        names = write_figures(out, doc["results"])
        written += [out / n for n in names]
    write_files(out, {"analysis.json": json.dumps(doc, indent=1, sort_keys=False, allow_nan=False) + "\n",
                      "analysis.md": render_markdown(doc, names)})
    return [out / "analysis.json", out / "analysis.md", *written]
