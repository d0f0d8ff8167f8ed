"""Multi-query associative recall (docs/evaluation.md, Zoology) in token space.

For every model, sequence length and number of key-value pairs, ``samples`` sequences from
:func:`rnope.tasks.mqar` (keys and values from disjoint halves of ``[3, vocab)``; queries at
power-law gaps); accuracy = fraction of value positions where the model's argmax prediction (from
the tokens before it) is the value. Needs no tokenizer; the task's vocabulary is the model's
``vocab_size`` unless ``vocab_size`` (e.g. the range a model was trained on) is given. Accuracy is
also broken down by query gap (distance from the key's first occurrence), in power-of-two bins --
a window-only model should fail once the gap exceeds its window.

``mqar.json``::

    {"task": "mqar",
     "results": [{"model", "train_seq_len", "vocab_size",
                  "cells": [{"length", "pairs", "accuracy", "n", "sequences",
                             "by_gap": [{"gap_max": int, "accuracy": float, "n": int}, ...]}, ...]}, ...],
     "seed", "versions", "settings", "models"}
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .report import lines_png, md_table, to_json, versions
from .args import item_seed, parse_lengths
from .items import predictor_meta, progress_bar

__all__ = ["evaluate", "outputs"]


def _check(p: Any, V: int, lengths: Sequence[int], pairs: Sequence[int]) -> None:
    from ..tasks import mqar

    if V > p.config.vocab_size:
        raise ValueError(f"--vocab-size {V} exceeds the vocabulary {p.config.vocab_size} of model {p.name!r}")
    for L in lengths:
        for P in pairs:
            try:
                mqar(0, L, P, V)
            except ValueError as e:
                raise ValueError(f"model {p.name!r} (vocab {V}), length {L}, {P} pairs: {e}") from None


def evaluate(
    predictors: Sequence[Any],
    *,
    lengths: Sequence[int] | str,
    pairs: Sequence[int] | str,
    samples: int = 64,
    seed: int = 0,
    vocab_size: int | None = None,
    progress: bool = True,
) -> dict:
    """MQAR accuracy for every predictor (``config``, ``token_logprobs``: a ModelPredictor)."""
    from ..tasks import mqar

    lengths = parse_lengths(lengths)
    pairs = parse_lengths(pairs, "--pairs")
    if samples < 1:
        raise ValueError(f"--samples must be >= 1, got {samples}")
    if vocab_size is not None and vocab_size < 5:
        raise ValueError(f"--vocab-size must be >= 5, got {vocab_size}")
    for p in predictors:
        _check(p, vocab_size or p.config.vocab_size, lengths, pairs)
    results = []
    for p in predictors:
        V = vocab_size or p.config.vocab_size
        cells = []
        with progress_bar(len(lengths) * len(pairs) * samples, f"mqar {p.name}", progress) as bar:
            for L in lengths:
                for P in pairs:
                    seqs = [mqar(item_seed(seed, "mqar", L, P, i), L, P, V, split="eval") for i in range(samples)]
                    rows = [s[0].tolist() for s in seqs]
                    correct = total = 0
                    gaps: dict[int, list[int]] = {}
                    for b in range(0, len(rows), p.batch_size):
                        outs = p.token_logprobs(rows[b : b + p.batch_size], L - 1)
                        for (tokens, targets, meta), (_, greedy) in zip(seqs[b : b + p.batch_size], outs):
                            # greedy[k] is about token k + 1
                            for q, gap in zip(meta["query_positions"], meta["gaps"]):
                                t = q + 1  # the value position
                                ok = bool(greedy[t - 1])
                                correct += ok
                                total += 1
                                g = 1 << max(0, (gap - 1).bit_length())
                                gaps.setdefault(g, [0, 0])
                                gaps[g][0] += ok
                                gaps[g][1] += 1
                        bar.update(len(outs))
                    cells.append({"length": L, "pairs": P, "accuracy": correct / total, "n": total,
                                  "sequences": samples,
                                  "by_gap": [{"gap_max": g, "accuracy": c / n, "n": n} for g, (c, n) in sorted(gaps.items())]})
        results.append({"model": p.name, "train_seq_len": int(p.train_seq_len), "vocab_size": V, "cells": cells})
    return {
        "task": "mqar",
        "results": results,
        "seed": int(seed),
        "versions": versions(),
        "settings": {"lengths": lengths, "pairs": pairs, "samples": samples, "vocab_size": vocab_size,
                     "split": "eval", "first_id": 3, "pad_id": 0},
        "models": predictor_meta(predictors),
    }


def markdown(doc: dict) -> str:
    lengths = doc["settings"]["lengths"]
    parts = ["# MQAR accuracy at value positions\n",
             f"seed {doc['seed']}, {doc['settings']['samples']} sequences per cell; `*` = training length.\n"]
    rows = []
    for r in doc["results"]:
        for P in doc["settings"]["pairs"]:
            m = {c["length"]: c["accuracy"] for c in r["cells"] if c["pairs"] == P}
            rows.append([r["model"], P, *[m.get(L) for L in lengths]])
    trained = {r["train_seq_len"] for r in doc["results"]}
    head = ["model", "pairs", *[f"{L}*" if L in trained and len(trained) == 1 else str(L) for L in lengths]]
    parts.append(md_table(head, rows, digits=3))
    return "\n".join(parts)


def outputs(doc: dict) -> dict[str, str | bytes]:
    """``mqar.json``, ``mqar.md`` and ``mqar.png`` (accuracy vs length per model and pair count)."""
    series = []
    for r in doc["results"]:
        for P in doc["settings"]["pairs"]:
            cs = [c for c in r["cells"] if c["pairs"] == P]
            series.append((f"{r['model']} ({P} pairs)", [c["length"] for c in cs], [c["accuracy"] for c in cs],
                           r["train_seq_len"]))
    return {
        "mqar.json": to_json(doc),
        "mqar.md": markdown(doc),
        "mqar.png": lines_png(series, xlabel="sequence length (tokens)", ylabel="accuracy at value positions (0-1)",
                              title="MQAR", logx=True, ylim=(0.0, 1.0)),
    }
