"""RULER's 11 offline synthetic tasks (docs/ruler.md) at several context lengths.

For every model, length and task, ``samples`` items with fresh seeds (needles at seeded random
depths, as RULER does); the model greedily continues the answer prefix and the task's metric
(:func:`rnope.tasks.score_item`: ``string_match_all`` for every task here) scores it. Scores are
reported x100 with the binomial standard error ``100 * sqrt(p (1 - p) / n)``; the per-length
"synthetic mean" is the mean over the tasks actually run, listed beside it (RULER's published average
covers 13 tasks, QA included, so the two are not the same number). The essay haystack is prose no
training run sees: rnope's held-out essays (:func:`rnope.data.heldout.heldout_prose`) or the
user's own (``--essay PATH``, e.g. the Paul Graham essays RULER uses).

``ruler.json``::

    {"task": "ruler",
     "results": [{"model": NAME, "train_seq_len": L,
                  "scores": [{"length": int, "task": str, "score": float, "stderr": float, "n": int}, ...],
                  "means": [{"length": int, "score": float, "stderr": float, "tasks": [str, ...]}, ...]},
                 ...],
     "seed", "versions", "settings", "models"}

``ruler.md``: models x lengths (synthetic mean over the tasks run, with its task list), then one
table per model of tasks x lengths; every score is shown as ``score ± stderr``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from .report import lines_png, md_table, to_json, versions
from .args import item_seed, parse_lengths
from .items import predictor_meta, run_items
from .predictor import Predictor

__all__ = ["evaluate", "outputs", "parse_tasks", "stderr"]


def stderr(score: float, n: int) -> float:
    """Binomial standard error of a x100 score over ``n`` items: ``100 * sqrt(p (1 - p) / n)``."""
    p = min(1.0, max(0.0, score / 100.0))
    return 100.0 * math.sqrt(p * (1.0 - p) / n) if n > 0 else 0.0


def parse_tasks(text: str | Sequence[str]) -> list[str]:
    """``all`` or a comma list of RULER task names (order kept, duplicates dropped)."""
    from ..tasks import RULER_TASKS, TASKS

    names = [t.strip() for t in (text.split(",") if isinstance(text, str) else text)]
    if names == ["all"]:
        return list(RULER_TASKS)
    out: list[str] = []
    for n in names:
        if n not in RULER_TASKS:
            hint = " (passkey runs under 'rnope eval niah')" if n in TASKS else ""
            raise ValueError(f"--tasks: unknown task {n!r}{hint}; known: all, {', '.join(RULER_TASKS)}")
        if n not in out:
            out.append(n)
    if not out:
        raise ValueError("--tasks is empty")
    return out


def build_items(
    predictor: Predictor,
    lengths: Sequence[int],
    tasks: Sequence[str],
    samples: int,
    seed: int,
    *,
    essay: Sequence[str] | None,
    gen_tokens: int | None = None,
) -> list[Any]:
    from ..tasks import ESSAY_TASKS, get_task

    items = []
    for L in lengths:
        for t in tasks:
            gen = get_task(t)
            for i in range(samples):
                items.append(gen(item_seed(seed, "ruler", t, i), L, None, encode=predictor.encode,
                                 essay=essay if t in ESSAY_TASKS else None, gen_tokens=gen_tokens))
    return items


def evaluate(
    predictors: Sequence[Predictor],
    *,
    lengths: Sequence[int] | str,
    tasks: Sequence[str] | str = "all",
    samples: int = 50,
    seed: int = 0,
    batch_size: int = 8,
    essay: Sequence[str] | None = None,
    gen_tokens: int | None = None,
    progress: bool = True,
) -> dict:
    """Run the tasks for every predictor; returns the ``ruler.json`` document (items for every
    model are built -- and every length checked -- before any model runs)."""
    from ..tasks import ESSAY_TASKS, metric_name, score_item

    lengths = parse_lengths(lengths)
    tasks = parse_tasks(tasks)
    if samples < 1:
        raise ValueError(f"--samples must be >= 1, got {samples}")
    if batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {batch_size}")
    if gen_tokens is not None and gen_tokens < 1:
        raise ValueError(f"--gen-tokens must be >= 1, got {gen_tokens}")
    from ..data.heldout import heldout_prose, heldout_prose_hash

    essay_source = "user essay" if essay is not None else f"rnope held-out prose ({heldout_prose_hash()})"
    if essay is None and any(t in ESSAY_TASKS for t in tasks):
        essay = heldout_prose()
    plans = [(p, build_items(p, lengths, tasks, samples, seed, essay=essay, gen_tokens=gen_tokens)) for p in predictors]
    results = []
    for p, items in plans:
        preds = run_items(p, items, batch_size, desc=f"ruler {p.name}", progress=progress)
        acc: dict[tuple[int, str], list[float]] = {}
        for it, pred in zip(items, preds):
            acc.setdefault((it.length, it.task), []).append(score_item(it, pred))
        scores = []
        for L in lengths:
            for t in tasks:
                xs = acc[(L, t)]
                sc = 100.0 * sum(xs) / len(xs)
                scores.append({"length": L, "task": t, "score": sc, "stderr": stderr(sc, len(xs)), "n": len(xs)})
        means = []
        for L in lengths:  # the synthetic mean over the tasks run; tasks are independent samples
            at = [s for s in scores if s["length"] == L]
            means.append({"length": L, "score": sum(s["score"] for s in at) / len(at),
                          "stderr": math.sqrt(sum(s["stderr"] ** 2 for s in at)) / len(at), "tasks": list(tasks)})
        results.append({"model": p.name, "train_seq_len": int(p.train_seq_len), "scores": scores, "means": means})
    return {
        "task": "ruler",
        "results": results,
        "seed": int(seed),
        "versions": versions(),
        "settings": {"lengths": lengths, "tasks": tasks, "samples": samples, "batch_size": batch_size,
                     "gen_tokens": gen_tokens,
                     "metric": ", ".join(dict.fromkeys(metric_name(t) for t in tasks)) + " x100",
                     "essay": essay_source},
        "models": predictor_meta(predictors),
    }


def _pm(score: float | None, err: float | None) -> str | None:
    return None if score is None else f"{score:.1f} ± {err or 0.0:.1f}"


def markdown(doc: dict) -> str:
    lengths = doc["settings"]["lengths"]
    tasks = doc["settings"]["tasks"]
    metric = doc["settings"].get("metric", "string_match_all x100")
    parts = ["# RULER (synthetic tasks)\n",
             f"seed {doc['seed']}, {doc['settings']['samples']} samples per task and length; "
             f"score = {metric} on the greedy continuation, ± its binomial standard error "
             f"(100 * sqrt(p(1-p)/n)); `*` = training length.\n",
             f"## Synthetic mean over {len(tasks)} tasks\n",
             f"Tasks: {', '.join(tasks)}. Not RULER's published average, which also covers its QA tasks.\n"]
    rows = []
    for r in doc["results"]:
        m = {x["length"]: _pm(x["score"], x.get("stderr")) for x in r["means"]}
        rows.append([r["model"], r["train_seq_len"], *[m.get(L) for L in lengths]])
    parts.append(md_table(["model", "train len", *map(str, lengths)], rows, digits=1))
    for r in doc["results"]:
        s = {(x["length"], x["task"]): _pm(x["score"], x.get("stderr")) for x in r["scores"]}
        m = {x["length"]: _pm(x["score"], x.get("stderr")) for x in r["means"]}
        parts.append(f"\n## {r['model']} (train length {r['train_seq_len']})\n")
        head = ["task"] + [f"{L}*" if L == r["train_seq_len"] else str(L) for L in lengths]
        body = [[t, *[s.get((L, t)) for L in lengths]] for t in tasks]
        body.append([f"**synthetic mean ({len(tasks)} tasks)**", *[m.get(L) for L in lengths]])
        parts.append(md_table(head, body, digits=1))
    return "\n".join(parts)


def outputs(doc: dict) -> dict[str, str | bytes]:
    """``ruler.json``, ``ruler.md`` and ``ruler.png`` (synthetic mean vs length, one line per model)."""
    series = [(r["model"], [m["length"] for m in r["means"]], [m["score"] for m in r["means"]], r["train_seq_len"])
              for r in doc["results"]]
    return {
        "ruler.json": to_json(doc),
        "ruler.md": markdown(doc),
        "ruler.png": lines_png(series, xlabel="context length (tokens)",
                               ylabel=f"score (%), mean over {len(doc['settings']['tasks'])} tasks",
                               title="RULER synthetic tasks", logx=True, ylim=(0.0, 100.0)),
    }
