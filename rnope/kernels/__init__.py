"""Attention kernels behind one call, :func:`attention`, and a registry of backends by name.

Two situations reach a kernel:

* *fresh* attention: the keys are exactly the queries' own tokens (training, a prefill into an
  empty cache). The backend picks a kernel for the layer's span: O(T·W) blockwise sliding,
  per-chunk causal, causal SDPA, FlexAttention block masks on CUDA — or the dense / reference
  baselines.
* *cached* attention: the queries attend keys read back from the KV cache, under a visibility mask
  built from the keys' stream times (:func:`rnope.kernels.masks.visibility`).

``impl`` names the backend: ``auto`` (fast path per span; on CUDA FlexAttention for sliding and
chunked layers), ``sdpa`` (``auto`` without FlexAttention), ``flex`` (force FlexAttention for
sliding / chunked layers without padding; eager off CUDA — a test of its masks, not a fast path),
``dense`` (the full O(T²) mask through SDPA), ``reference`` (the eager kernel every other one is
tested against) and ``matvec`` (cached attention as broadcast reductions, for the compiled
one-row CPU decode step). :data:`CACHED` maps each name to its cached-attention function.
"""

from __future__ import annotations

from . import flex, rotary, sdpa
from .masks import fill_empty_rows, visibility
from .matvec import matvec_attention, matvec_linear
from .reference import reference_attention

__all__ = ["CACHED", "IMPLS", "attend_fresh", "attention", "fill_empty_rows", "flex", "matvec_attention",
           "matvec_linear", "reference_attention", "rotary", "sdpa", "visibility"]


def _cached_sdpa(q, k, v, allowed):
    # a few queries (decode): grouped matmuls beat the flash kernel; more: SDPA under the mask
    return sdpa.decode(q, k, v, allowed) if q.shape[2] <= sdpa.DECODE_MAX_Q else sdpa.masked(q, k, v, allowed)


def _cached_reference(q, k, v, allowed):
    return reference_attention(q, k, v, allowed)[0]


#: cached attention ``fn(q, keys, values, allowed)`` by backend name
CACHED = {
    "auto": _cached_sdpa,
    "sdpa": _cached_sdpa,
    "flex": _cached_sdpa,
    "dense": _cached_sdpa,
    "reference": _cached_reference,
    "matvec": matvec_attention,
}

IMPLS = ("auto", "reference", "dense", "flex", "sdpa")  # the names a user may choose (``attn_impl``)


def attend_fresh(q, k, v, spec, *, times, start=None, impl="auto"):
    """Attention where keys are exactly the queries' own tokens (no cache history); see module doc."""
    use_flex = impl == "flex" or impl == "auto" and q.is_cuda and flex.available(q.device)
    if use_flex and start is None and spec.span != "full" and flex.importable():
        return flex.attend(q, k, v, spec)
    if impl in ("flex", "sdpa", "matvec"):
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


def attention(q, k, v, spec, *, times, start=None, impl="auto", allowed=None):
    """The one attention call of a layer. q (B, H, Tq, D); k/v (B, Hkv, Tk, D).

    ``allowed`` None: fresh attention (the keys are the queries' own tokens at ``times``); else the
    (B|1, 1, Tq, Tk) visibility of cached keys, attended by the backend :data:`CACHED` ``[impl]``.
    """
    if allowed is None:
        return attend_fresh(q, k, v, spec, times=times, start=start, impl=impl)
    return CACHED[impl](q, k, v, allowed)
