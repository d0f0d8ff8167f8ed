"""Attention kernels behind one interface (see :func:`attend`)."""

from .masks import fill_empty_rows, visibility
from .reference import reference_attention
from . import flex, rotary, sdpa

__all__ = ["attend_fresh", "fill_empty_rows", "flex", "reference_attention", "rotary", "sdpa", "visibility"]

IMPLS = ("auto", "reference", "dense", "flex", "sdpa")


def attend_fresh(q, k, v, spec, *, times, start=None, impl="auto"):
    """Attention where keys are exactly the queries' own tokens (no cache history).

    ``impl``: ``auto`` picks the fast path for the layer's span (on CUDA, FlexAttention block
    masks for sliding / chunked layers; else O(T·W) blockwise sliding, per-chunk causal, causal
    SDPA); ``dense`` builds the full visibility mask (the O(T²) baseline); ``reference`` runs the
    eager kernel; ``flex`` forces FlexAttention for sliding / chunked layers without padding (eager
    off CUDA: a test of its masks, not a fast path); ``sdpa`` is ``auto`` without FlexAttention.
    """
    use_flex = impl == "flex" or impl == "auto" and q.is_cuda and flex.available(q.device)
    if use_flex and start is None and spec.span != "full" and flex.importable():
        return flex.attend(q, k, v, spec)
    if impl in ("flex", "sdpa"):
        impl = "auto"
    if impl == "auto":
        if spec.span == "sliding":
            return sdpa.sliding(q, k, v, spec.window, start=start)
        if start is None:
            return sdpa.causal(q, k, v) if spec.span == "full" else sdpa.chunked(q, k, v, spec.chunk)
    allowed = visibility(times, times, spec, start)
    if impl == "reference":
        return reference_attention(q, k, v, allowed)[0]
    return sdpa.masked(q, k, v, allowed)
