"""Needle-in-a-haystack grid (docs/evaluation.md, passkey variant): context lengths x needle depths.

Each cell holds ``samples`` passkey items with fresh seeds (:func:`rnope.tasks.passkey`, the
model's own tokenizer fitting the prompt and generation budget inside the length); the model
greedily continues the answer prefix and a sample scores 1 if the continuation contains the
5-digit key as a whole token (:func:`rnope.tasks.exact_value`).

Outputs (:func:`outputs`): ``niah.json``::

    {"task": "niah",
     "results": [{"model": NAME, "train_seq_len": L,
                  "cells": [{"length": int, "depth": float, "accuracy": float, "n": int}, ...]}, ...],
     "seed": int, "versions": {...}, "settings": {...}, "models": {NAME: {path, config, ...}}}

``niah_<model>.png`` (one heatmap per model, :func:`rnope.evals.report.heatmap_png`) and
``niah.md`` (per-model grid, plus mean accuracy per length for all models).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .args import file_safe
from .report import heatmap_png, md_table, to_json, versions
from .args import item_seed, parse_depths, parse_lengths
from .items import predictor_meta, run_items
from .predictor import Predictor

__all__ = ["HAYSTACKS", "WORDINGS", "build_items", "check_settings", "evaluate", "markdown", "outputs"]

HAYSTACKS = ("noise", "essay")
WORDINGS = ("passkey", "heldout")


def build_items(
    predictor: Predictor,
    lengths: Sequence[int],
    depths: Sequence[float],
    samples: int,
    seed: int,
    *,
    haystack: str = "noise",
    essay: Sequence[str] | None = None,
    gen_tokens: int | None = None,
    split: str = "eval",
    wording: str = "passkey",
) -> list[Any]:
    """All items of the grid for one model (raises for a length the template cannot fit).

    ``split="train"`` builds the same grid from the *training* templates and filler: a diagnostic
    that tells "cannot retrieve" from "retrieves, but not with an unseen template"."""
    from ..tasks import passkey

    items = []
    for L in lengths:
        for d in depths:
            for i in range(samples):
                if wording == "heldout":
                    items.append(_heldout_item(seed, i, L, d, predictor.encode, split, haystack, essay, gen_tokens))
                else:
                    items.append(passkey(item_seed(seed, "niah", i), L, d, encode=predictor.encode, haystack=haystack,
                                         essay=essay, gen_tokens=gen_tokens, split=split))
    return items


def _heldout_item(seed: int, i: int, L: int, depth: float, encode, split: str, haystack: str,
                  essay: Sequence[str] | None, gen_tokens: int | None) -> Any:
    """Item ``i`` on a held-out wording. Near a length's lower limit a long wording (with its answer
    budget) may not fit: the item is then drawn again from a derived seed, up to 8 times, so that every
    cell keeps its count (items that fit at the first draw are never redrawn)."""
    from ..tasks.family import lookup

    for attempt in range(8):
        parts = ("niah-heldout", i) if attempt == 0 else ("niah-heldout", i, "redraw", attempt)
        try:
            return lookup(item_seed(seed, *parts), L, depth, encode=encode, split=split, haystack=haystack,
                          essay=essay, gen_tokens=gen_tokens)
        except ValueError as e:
            if "too short" not in str(e) or attempt == 7:
                raise


def auto_lengths(predictors: Sequence[Predictor], *, haystack: str = "noise", essay: Sequence[str] | None = None,
                 wording: str = "passkey", factors: Sequence[int] = (1, 2, 4, 8)) -> list[int]:
    """The default grid: ``factors`` x the shortest training length of ``predictors``, shifted up by
    doublings until the prompt template fits the first length for every model (a byte-level model
    trained at 256 tokens cannot hold the passkey template in 256)."""
    if haystack == "essay" and essay is None:
        from ..data.heldout import heldout_prose

        essay = heldout_prose()
    base = min(int(p.train_seq_len) for p in predictors)
    for _ in range(12):
        try:
            for p in predictors:
                build_items(p, [base], [50.0], 1, 0, haystack=haystack, essay=essay, wording=wording)
            return [base * f for f in factors]
        except ValueError as e:
            if "too short" not in str(e):
                raise
            base *= 2
    raise ValueError(f"--lengths auto: the {wording} template fits no length up to {base} tokens")


def check_settings(lengths, depths, samples: int, haystack: str, gen_tokens: int | None,
                   wording: str = "passkey") -> tuple[list[int], list[float]]:
    lengths = parse_lengths(lengths)
    depths = parse_depths(depths)
    if samples < 1:
        raise ValueError(f"--samples must be >= 1, got {samples}")
    if haystack not in HAYSTACKS:
        raise ValueError(f"--haystack: unknown haystack {haystack!r} (known: {', '.join(HAYSTACKS)})")
    if wording not in WORDINGS:
        raise ValueError(f"--wording: unknown wording {wording!r} (known: {', '.join(WORDINGS)})")
    if gen_tokens is not None and gen_tokens < 1:
        raise ValueError(f"--gen-tokens must be >= 1, got {gen_tokens}")
    return lengths, depths


def evaluate(
    predictors: Sequence[Predictor],
    *,
    lengths: Sequence[int] | str,
    depths: Sequence[float] | str,
    samples: int,
    seed: int = 0,
    haystack: str = "noise",
    batch_size: int = 8,
    essay: Sequence[str] | None = None,
    gen_tokens: int | None = None,
    progress: bool = True,
    split: str = "eval",
    wording: str = "passkey",
) -> dict:
    """Run the grid for every predictor; returns the ``niah.json`` document.

    Every model's items are built (and every length checked against the template) before any
    model runs, so a bad ``--lengths`` fails fast."""
    from ..tasks import score_item

    from ..data.heldout import heldout_prose, heldout_prose_hash

    lengths, depths = check_settings(lengths, depths, samples, haystack, gen_tokens, wording)
    if batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {batch_size}")
    essay_source = None
    if haystack == "essay":
        essay_source = "user essay" if essay is not None else f"rnope held-out prose ({heldout_prose_hash()})"
        essay = heldout_prose() if essay is None else essay
    plans = [(p, build_items(p, lengths, depths, samples, seed, haystack=haystack, essay=essay, gen_tokens=gen_tokens,
                             split=split, wording=wording))
             for p in predictors]
    results = []
    for p, items in plans:
        preds = run_items(p, items, batch_size, desc=f"niah {p.name}", progress=progress)
        sums: dict[tuple[int, float], list[float]] = {}
        for it, pred in zip(items, preds):
            sums.setdefault((it.length, float(it.depth)), []).append(score_item(it, pred))
        cells = [{"length": L, "depth": float(d), "accuracy": sum(sums[(L, d)]) / len(sums[(L, d)]),
                  "n": len(sums[(L, d)])} for L in lengths for d in depths]
        results.append({"model": p.name, "train_seq_len": int(p.train_seq_len), "cells": cells})
    return {
        "task": "niah",
        "results": results,
        "seed": int(seed),
        "versions": versions(),
        "settings": {"lengths": lengths, "depths": depths, "samples": samples, "haystack": haystack,
                     "essay": essay_source, "batch_size": batch_size, "gen_tokens": gen_tokens, "metric": "exact_value",
                     "wording": wording, "split": split,
                     "template": "passkey" if wording == "passkey" else "retrieval family, held-out wordings"},
        "models": predictor_meta(predictors),
    }


def _grid(res: dict) -> tuple[list[int], list[float], dict[tuple[int, float], dict]]:
    lengths = sorted({c["length"] for c in res["cells"]})
    depths = sorted({float(c["depth"]) for c in res["cells"]})
    return lengths, depths, {(c["length"], float(c["depth"])): c for c in res["cells"]}


def markdown(doc: dict) -> str:
    """``niah.md``: mean accuracy per model and length, then each model's depth x length grid."""
    s = doc.get("settings", {})
    parts = [f"# Needle in a haystack ({s.get('wording', 'passkey')} wording)\n"]
    parts.append(f"seed {doc.get('seed')}, {s.get('samples')} samples per cell, haystack {s.get('haystack')}; "
                 "score = exact value in the greedy continuation; `*` = training length.\n")
    all_lengths = sorted({c["length"] for r in doc["results"] for c in r["cells"]})
    rows = []
    for r in doc["results"]:
        lengths, depths, cells = _grid(r)
        row: list[Any] = [r["model"], r["train_seq_len"]]
        for L in all_lengths:
            cs = [cells[(L, d)] for d in depths if (L, d) in cells]
            row.append(sum(c["accuracy"] for c in cs) / len(cs) if cs else None)
        rows.append(row)
    parts.append("## Mean accuracy over depths\n")
    parts.append(md_table(["model", "train len", *map(str, all_lengths)], rows))
    for r in doc["results"]:
        lengths, depths, cells = _grid(r)
        parts.append(f"\n## {r['model']} (train length {r['train_seq_len']})\n")
        head = ["depth %"] + [f"{L}*" if L == r["train_seq_len"] else str(L) for L in lengths]
        parts.append(md_table(head, [[f"{d:g}"] + [cells[(L, d)]["accuracy"] if (L, d) in cells else None
                                                   for L in lengths] for d in depths]))
    return "\n".join(parts)


def outputs(doc: dict) -> dict[str, str | bytes]:
    """``{file name: content}`` of a ``niah.json`` document: JSON, Markdown, one heatmap per model."""
    files: dict[str, str | bytes] = {"niah.json": to_json(doc), "niah.md": markdown(doc)}
    for r in doc["results"]:
        lengths, depths, cells = _grid(r)
        values = [[cells[(L, d)]["accuracy"] if (L, d) in cells else None for L in lengths] for d in depths]
        files[f"niah_{file_safe(r['model'])}.png"] = heatmap_png(values, lengths, depths, train_seq_len=r["train_seq_len"],
                                                      title=f"{doc.get('settings', {}).get('wording', 'passkey')} retrieval: {r['model']}")
    return files
