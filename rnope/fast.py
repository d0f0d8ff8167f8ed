"""Static-shape decode: one token per row through fixed-size cache buffers, optionally compiled.

gpt-fast's recipe (STYLE.md): the cache buffers never change shape, the write slot and the
visibility mask come from the stream time as a *tensor*, and nothing in the step reads a Python int
that changes between steps — so ``torch.compile(decode_step, dynamic=False)`` traces one graph and
reuses it for every token. Each layer writes its new K/V at ``slot = time % size`` (a ring for
sliding layers, the position itself for global layers) and attends its whole buffer; unwritten or
out-of-window slots are masked by :func:`rnope.kernels.visibility` from the slot times.

:func:`decode_step` is the eager reference; :class:`Decoder` drives it (compiled when asked and
possible, eager otherwise) and keeps the cache's ``seen`` in step. The cache it leaves behind is
the one ``model(token[:, None], cache=cache)`` would have left, so the two can be mixed.
"""

from __future__ import annotations

import warnings

import torch

from .cache import HybridCache
from .model import Context, Transformer

__all__ = ["Decoder", "compile_available", "decode_step"]


def decode_step(model: Transformer, tokens: torch.Tensor, time: torch.Tensor, start: torch.Tensor | None, kv: tuple) -> torch.Tensor:
    """tokens (B, 1) at stream time ``time`` (1,) long -> logits (B, vocab).

    ``kv``: per layer ``(k, v, time)`` cache buffers (written in place); ``start`` (B,) left padding
    or None. Pure tensor code: the function :class:`Decoder` compiles.
    """
    B = tokens.shape[0]
    positions = time[None].expand(B, 1) if start is None else (time[None] - start[:, None]).clamp(min=0)
    ctx = Context(times=time, positions=positions, start=start, cache=None, impl=model.attn_impl, kv=kv)
    return model.logits(model.hidden(tokens, ctx))[:, -1]


_COMPILED = None


def _compiled():
    global _COMPILED
    if _COMPILED is None:
        _COMPILED = torch.compile(decode_step, dynamic=False, fullgraph=True)
    return _COMPILED


def compile_available() -> bool:
    """Whether ``torch.compile`` can be tried here (inductor needs a C++ compiler on CPU)."""
    import shutil

    if not hasattr(torch, "compile"):
        return False
    if torch.cuda.is_available():
        return True
    return any(shutil.which(c) for c in ("g++", "c++", "clang++"))


class Decoder:
    """Decode one token per row into ``cache`` (after its prefill): ``logits = dec(token)``.

    compile: ``True`` compiles the step (one graph per model, batch size and cache length; the first
    call pays the compile), ``False`` runs it eagerly; a failed compile warns and falls back to eager.
    """

    def __init__(self, model: Transformer, cache: HybridCache, *, compile: bool = False):
        self.model, self.cache = model, cache
        self.kv = tuple((layer.k, layer.v, layer.time) for layer in cache.layers)
        start = cache.start
        self.start = None if start is None or not bool(start.any()) else start
        self.compiled = bool(compile) and compile_available()
        self._fn = _compiled() if self.compiled else decode_step
        dev = cache.layers[0].k.device
        self._time = torch.zeros(1, dtype=torch.long, device=dev)

    def __call__(self, token: torch.Tensor) -> torch.Tensor:
        """token (B,) -> logits (B, vocab); the cache advances by one."""
        cache = self.cache
        if cache.seen == 0:
            raise ValueError("Decoder needs a prefilled cache (run the prompt through the model first)")
        cache.check(token.shape[0], 1)
        self._time.fill_(cache.seen)
        tokens = token[:, None]
        try:
            logits = self._fn(self.model, tokens, self._time, self.start, self.kv)
        except Exception as e:  # no compiler, an unsupported op, ...: the eager step is exact
            if self._fn is decode_step:
                raise
            warnings.warn(f"rnope.fast: compiled decode failed ({e.__class__.__name__}); decoding eagerly", stacklevel=2)
            self._fn, self.compiled = decode_step, False
            logits = decode_step(self.model, tokens, self._time, self.start, self.kv)
        cache.advance(1)
        return logits
