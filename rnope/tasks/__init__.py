"""Synthetic long-context tasks shared by evaluation and training (docs/evaluation.md).

Text tasks share one signature and live in :data:`TASKS`::

    item = get_task("niah_single_1")(seed, length, depth, encode=tok.encode, split="eval", essay=None)

``passkey`` is the passkey of docs/evaluation.md; the other eleven are RULER's synthetic tasks (:data:`RULER_TASKS`).
Token-space tasks (:func:`mqar`, :func:`copy_task`) take ids, not text, and are not in ``TASKS``.
"""

from __future__ import annotations

from collections.abc import Callable

from .common import Item, fit_haystack, item_rng, owned_by, stable_seed
from .mqar import copy_batch, copy_task, mqar, mqar_batch
from .niah import (
    niah_multikey_1,
    niah_multikey_2,
    niah_multikey_3,
    niah_multiquery,
    niah_multivalue,
    niah_single_1,
    niah_single_2,
    niah_single_3,
    passkey,
)
from .ruler import cwe, fwe, vt
from .scoring import exact_value, metric_name, score_item, string_match_all, string_match_part
from .synthetic import synthetic_documents, synthetic_items

__all__ = [
    "ESSAY_TASKS",
    "Item",
    "RULER_TASKS",
    "TASKS",
    "copy_batch",
    "copy_task",
    "exact_value",
    "fit_haystack",
    "get_task",
    "item_rng",
    "metric_name",
    "mqar",
    "mqar_batch",
    "owned_by",
    "score_item",
    "stable_seed",
    "string_match_all",
    "string_match_part",
    "synthetic_documents",
    "synthetic_items",
]

TASKS: dict[str, Callable[..., Item]] = {
    "passkey": passkey,
    "niah_single_1": niah_single_1,
    "niah_single_2": niah_single_2,
    "niah_single_3": niah_single_3,
    "niah_multikey_1": niah_multikey_1,
    "niah_multikey_2": niah_multikey_2,
    "niah_multikey_3": niah_multikey_3,
    "niah_multivalue": niah_multivalue,
    "niah_multiquery": niah_multiquery,
    "vt": vt,
    "cwe": cwe,
    "fwe": fwe,
}

#: RULER's 11 offline synthetic tasks (qa_1 / qa_2 need downloads and are out of scope).
RULER_TASKS: tuple[str, ...] = tuple(t for t in TASKS if t != "passkey")

#: Tasks whose haystack is caller prose: they need ``essay=[...]``.
ESSAY_TASKS: frozenset[str] = frozenset(
    {"niah_single_2", "niah_single_3", "niah_multikey_1", "niah_multivalue", "niah_multiquery"}
)


def get_task(name: str) -> Callable[..., Item]:
    """The generator registered as ``name`` in :data:`TASKS`."""
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; known: {', '.join(TASKS)}") from None
