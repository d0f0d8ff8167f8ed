"""Attention kernels behind one interface (see :func:`attend`)."""

from .masks import fill_empty_rows, visibility
from .reference import reference_attention
from . import sdpa

__all__ = ["attend_fresh", "fill_empty_rows", "reference_attention", "sdpa", "visibility"]

IMPLS = ("auto", "reference", "dense")


def attend_fresh(q, k, v, spec, *, times, start=None, impl="auto"):
    """Attention where keys are exactly the queries' own tokens (no cache history).

    ``impl``: ``auto`` picks the fast path for the layer's span (O(T·W) sliding, per-chunk
    causal, causal SDPA); ``dense`` builds the full visibility mask (the O(T²) baseline);
    ``reference`` runs the eager kernel.
    """
    if impl == "auto":
        if spec.span == "sliding":
            return sdpa.sliding(q, k, v, spec.window, start=start)
        if start is None:
            return sdpa.causal(q, k, v) if spec.span == "full" else sdpa.chunked(q, k, v, spec.chunk)
    allowed = visibility(times, times, spec, start)
    if impl == "reference":
        return reference_attention(q, k, v, allowed)[0]
    return sdpa.masked(q, k, v, allowed)
