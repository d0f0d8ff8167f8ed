"""Scoring for the synthetic tasks (docs/evaluation.md, docs/ruler.md; RULER's metrics).

* :func:`string_match_all` -- fraction of gold strings found in the prediction (case-insensitive
  substring): NIAH, vt, cwe, fwe.
* :func:`string_match_part` -- 1.0 if any gold string is found: QA.
* :func:`exact_value` -- the NIAH grid / passkey metric: 1.0 if the needle's value occurs in the
  continuation as a whole token (``12345`` is not found inside ``123456``).
* :func:`metric_name` / :func:`score_item` -- the task's metric, and that metric applied to one
  :class:`~rnope.tasks.common.Item` (RULER: ``string_match_part`` for QA tasks ``qa_*``,
  ``string_match_all`` for its synthetic tasks).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from .common import Item

__all__ = ["exact_value", "metric_name", "score_item", "string_match_all", "string_match_part"]


def string_match_all(pred: str, refs: Sequence[str]) -> float:
    """Fraction of ``refs`` that occur in ``pred`` (case-insensitive substring); 0.0 if no refs."""
    if not refs:
        return 0.0
    p = pred.lower()
    return sum(r.lower() in p for r in refs) / len(refs)


def string_match_part(pred: str, refs: Sequence[str]) -> float:
    """1.0 if any of ``refs`` occurs in ``pred`` (case-insensitive substring), else 0.0."""
    p = pred.lower()
    return float(any(r.lower() in p for r in refs))


def exact_value(pred: str, value: str) -> float:
    """1.0 if ``value`` occurs in ``pred`` not flanked by another letter or digit, else 0.0."""
    pattern = r"(?<![0-9A-Za-z])" + re.escape(value) + r"(?![0-9A-Za-z])"
    return float(re.search(pattern, pred, flags=re.IGNORECASE) is not None)


def metric_name(task: str) -> str:
    """The metric :func:`score_item` applies to ``task``."""
    if task in ("passkey", "lookup"):
        return "exact_value"
    if task.startswith("qa"):
        return "string_match_part"
    return "string_match_all"


def score_item(item: Item, pred: str) -> float:
    """Score a continuation of ``item.prompt``: :func:`exact_value` for ``passkey`` (and the mean
    of it over the answers of a retrieval-family ``lookup`` item), :func:`string_match_part` for a
    QA task (RULER: any gold answer counts), otherwise :func:`string_match_all` over
    ``item.answers`` (RULER's metric for its synthetic tasks)."""
    if item.task == "passkey":
        return exact_value(pred, item.answers[0])
    if item.task == "lookup":
        return sum(exact_value(pred, a) for a in item.answers) / len(item.answers)
    if metric_name(item.task) == "string_match_part":
        return string_match_part(pred, item.answers)
    return string_match_all(pred, item.answers)
