"""Probe segments (docs/evaluation.md "Attention analysis") and the attention mass each one receives.

Segments of a NIAH probe, as token labels:

* **Begin** -- the first :data:`BEGIN_TOKENS` (10) tokens;
* **End** -- the question + answer prefix (:attr:`rnope.tasks.Item.query_span`): these tokens are
  also the queries whose attention is measured;
* **Needle** -- the needle's tokens (:attr:`rnope.tasks.Item.needle_spans`);
* **Context** -- everything else.

Task spans are *character* spans; a token belongs to a span when its character range overlaps it
(byte-level BPE tokens such as ``" 12345"`` carry the separator in front, and the 2-4 byte tokens of
one multi-byte character all map to that character). Where segments collide the order of precedence
is Begin, End, Needle, Context.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

__all__ = [
    "BEGIN",
    "BEGIN_TOKENS",
    "CONTEXT",
    "END",
    "NEEDLE",
    "SEGMENTS",
    "encode_with_offsets",
    "group_layers",
    "layer_groups",
    "segment_labels",
    "segment_mass",
    "token_span",
]

SEGMENTS: tuple[str, ...] = ("begin", "needle", "context", "end")
BEGIN, NEEDLE, CONTEXT, END = range(4)
BEGIN_TOKENS = 10


def encode_with_offsets(tokenizer, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    """Token ids and per-token character offsets of ``text`` (no special tokens added).

    ``tokenizer`` is an :class:`rnope.tokenizer.Tokenizer` (its wrapped ``tokenizers`` object gives
    the offsets). The ids are checked against ``tokenizer.encode`` so the probe is exactly what the
    model would read.
    """
    hf = getattr(tokenizer, "hf", None)
    if hf is None:
        raise ValueError(f"tokenizer {type(tokenizer).__name__} gives no character offsets (need rnope.Tokenizer)")
    enc = hf.encode(text, add_special_tokens=False)
    ids, offsets = list(enc.ids), [tuple(o) for o in enc.offsets]
    if hasattr(tokenizer, "encode") and list(tokenizer.encode(text)) != ids:
        raise ValueError("tokenizer offsets disagree with its encode(); cannot map spans to tokens")
    return ids, offsets


def token_span(offsets: Sequence[tuple[int, int]], span: tuple[int, int]) -> tuple[int, int]:
    """Half-open token range ``[a, b)`` of the tokens whose character range overlaps ``span``.

    A zero-width token counts as inside when its offset lies in the span. Tokens overlapping a span
    are contiguous for a left-to-right tokenizer; an empty span or no overlap gives ``(0, 0)``.
    """
    s0, s1 = int(span[0]), int(span[1])
    hit = [
        i
        for i, (a, b) in enumerate(offsets)
        if s0 < s1 and ((a < s1 and b > s0) if b > a else (s0 <= a < s1))
    ]
    return (hit[0], hit[-1] + 1) if hit else (0, 0)


def segment_labels(
    n_tokens: int,
    offsets: Sequence[tuple[int, int]],
    needle_spans: Sequence[tuple[int, int]],
    query_span: tuple[int, int],
    *,
    begin_tokens: int = BEGIN_TOKENS,
) -> np.ndarray:
    """(n_tokens,) int8 labels: :data:`BEGIN`, :data:`NEEDLE`, :data:`CONTEXT` or :data:`END`."""
    if len(offsets) != n_tokens:
        raise ValueError(f"{len(offsets)} offsets for {n_tokens} tokens")
    labels = np.full(n_tokens, CONTEXT, dtype=np.int8)
    for span in needle_spans:
        a, b = token_span(offsets, span)
        labels[a:b] = NEEDLE
    a, b = token_span(offsets, query_span)
    labels[a:b] = END
    labels[: min(begin_tokens, n_tokens)] = BEGIN
    return labels


def segment_mass(weights: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Attention mass per segment: weights (..., Tk) x labels (Tk,) -> (..., 4) in :data:`SEGMENTS` order."""
    onehot = torch.nn.functional.one_hot(labels.long(), len(SEGMENTS)).to(weights.dtype)
    return weights @ onehot


def layer_groups(specs) -> dict[str, list[int]]:
    """Layer indices by type: ``all``, ``rope_layers``, ``nope_layers``, ``sliding_layers``,
    ``global_layers`` (full span) and ``chunked_layers``; empty groups are left out."""
    groups = {
        "all": list(range(len(specs))),
        "rope_layers": [i for i, s in enumerate(specs) if s.rope],
        "nope_layers": [i for i, s in enumerate(specs) if not s.rope],
        "sliding_layers": [i for i, s in enumerate(specs) if s.span == "sliding"],
        "global_layers": [i for i, s in enumerate(specs) if s.span == "full"],
        "chunked_layers": [i for i, s in enumerate(specs) if s.span == "chunked"],
    }
    return {k: v for k, v in groups.items() if v}


def group_layers(per_layer: np.ndarray, specs) -> dict[str, np.ndarray]:
    """Mean over the layers of each group (:func:`layer_groups`) of a per-layer array (L, ...)."""
    per_layer = np.asarray(per_layer, dtype=np.float64)
    return {name: per_layer[idx].mean(axis=0) for name, idx in layer_groups(specs).items()}
