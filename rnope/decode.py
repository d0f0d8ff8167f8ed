"""Static-shape decode: one token per row through fixed-size cache buffers, optionally compiled.

gpt-fast's recipe: the cache buffers never change shape, the write slot and the
visibility mask come from the stream time as a *tensor*, and nothing in the step reads a Python int
that changes between steps — so ``torch.compile(decode_step, dynamic=False)`` traces one graph and
reuses it for every token. Each layer writes its new K/V at ``slot = time % size`` (a ring for
sliding layers, the position itself for global layers) and attends its whole buffer; unwritten or
out-of-window slots are masked by :func:`rnope.kernels.visibility` from the slot times.

On CPU a B=1 step should be bound by streaming the weights from memory, but one row times a
matrix through BLAS (``F.linear``) reads them at about a third of the bandwidth a plain sum gets,
and each of the ~50 products and ~16 attention matmuls is a separate call. The compiled B=1 CPU
step therefore projects with :func:`matvec_linear` and attends with :func:`matvec_attention`:
broadcast products summed over the reduced axis, which inductor fuses with the norms, RoPE, cache
writes and softmax into one C++ kernel that streams each weight once (``cpp_wrapper`` calls it
without the Python wrapper's per-buffer work). :func:`decode_weights` concatenates q/k/v and
gate/up for it; for the eager step it gives row-major transposed copies of gate/up and the head,
which stream faster through BLAS than the (out, in) weights. Only the order of fp32 sums changes.

:func:`decode_step` is the eager reference; :class:`Decoder` drives it (compiled when asked and
possible, eager otherwise) and keeps the cache's ``seen`` in step. The cache it leaves behind is
the one ``model(token[:, None], cache=cache)`` would have left, so the two can be mixed.
"""

from __future__ import annotations

import warnings

import torch

from .cache import HybridCache
from .kernels.masks import fill_empty_rows
from .model import Context, Transformer

__all__ = ["Decoder", "compile_available", "decode_step", "decode_weights", "matvec_attention", "matvec_linear"]


def decode_step(model: Transformer, tokens: torch.Tensor, time: torch.Tensor, start: torch.Tensor | None, kv: tuple,
                wts: tuple | None = None, matvec: bool = False) -> torch.Tensor:
    """tokens (B, 1) at stream time ``time`` (1,) long -> logits (B, vocab).

    ``kv``: per layer ``(k, v, time)`` cache buffers (written in place); ``start`` (B,) left padding
    or None; ``wts``: optional decode weight layouts from :func:`decode_weights` made with the same
    ``matvec``. Pure tensor code: the function :class:`Decoder` compiles.
    """
    B = tokens.shape[0]
    positions = time[None].expand(B, 1) if start is None else (time[None] - start[:, None]).clamp(min=0)
    ctx = Context(times=time, positions=positions, start=start, cache=None, impl=model.attn_impl, kv=kv)
    if wts is not None:
        ctx.dec, ctx.head = wts
        ctx.linear = matvec_linear if matvec else _matmul_t
    if matvec:
        ctx.attend = matvec_attention
    return model.logits(model.hidden(tokens, ctx), ctx)[:, -1]


def matvec_linear(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``F.linear(x, w)`` written as a broadcast product summed over ``in``: x (..., in), w (out, in).

    Only for compiled code: inductor turns it into one vectorised streaming reduction over ``w``
    (no (…, out, in) temporary) that reads the weights at close to memory bandwidth, where the
    BLAS gemv of a single row reaches a third of it on CPU. The same products, summed in another
    order (fp32 rounding only)."""
    return (x.unsqueeze(-2) * w).sum(-1)


def matvec_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """:func:`rnope.kernels.sdpa.decode` with its two matmuls written as broadcast products and sums,
    for compiled code only (like :func:`matvec_linear`): inductor fuses scores, mask and softmax
    into a few loops over the cached keys, where the batched gemv of one query row is slow on CPU.
    Past ``MATVEC_PV_BMM_KEYS`` keys, p·V goes back to a bmm, which reads a long V faster.
    q (B, H, Tq, D), k/v (B, Hkv, S, D), allowed (B|1, 1, Tq, S)."""
    B, H, Tq, D = q.shape
    Hkv, S = k.shape[1], k.shape[2]
    r = H // Hkv
    qg = q.float().reshape(B, Hkv, r * Tq, D)  # query head h = kv·r + j shares KV head kv (GQA)
    scores = (qg.unsqueeze(-2) * k.float().unsqueeze(2)).sum(-1) * D**-0.5  # (B, Hkv, r·Tq, S)
    ok = fill_empty_rows(allowed)[:, :, None]  # (B|1, 1, 1, Tq, S)
    scores = scores.view(B, Hkv, r, Tq, S).masked_fill(~ok, float("-inf"))
    p = scores.softmax(dim=-1).view(B, Hkv, r * Tq, S)
    if S > MATVEC_PV_BMM_KEYS:  # long caches: p·V as a batched matmul streams V faster (see below)
        return (p @ v.float()).view(B, H, Tq, D).to(q.dtype)
    return (p.unsqueeze(-1) * v.float().unsqueeze(2)).sum(-2).view(B, H, Tq, D).to(q.dtype)


# Above this many cached keys :func:`matvec_attention` computes p·V as a bmm: 8 global layers of
# 2 KV heads × 64 dims, compiled, 2 threads (benchmarks/RESULTS.md): 4160 keys 2.38 -> 2.21 ms,
# 8256 keys 4.96 -> 4.48 ms, 16448 keys 10.05 -> 8.27 ms; at 2112 keys the reduction is faster
# (0.83 against 0.87 ms). The branch is taken at trace time (one graph per cache length).
MATVEC_PV_BMM_KEYS = 4096


def _matmul_t(x: torch.Tensor, wt: torch.Tensor) -> torch.Tensor:
    return x @ wt  # wt (in, out): a row-major transposed copy


DECODE_WEIGHTS_MAX_BYTES = 256 * 2**20


@torch.no_grad()
def decode_weights(model: Transformer, matvec: bool = False) -> tuple | None:
    """Weight layouts for decoding a few rows: ``(per layer (qkv, o, gate_up, down), head)``.

    ``matvec`` (compiled B=1 CPU decode, projected by :func:`matvec_linear`): (out, in) matrices,
    q/k/v and gate/up concatenated (copies: one streaming reduction each instead of three and two),
    o, down and the head the modules' own weights. Otherwise (eager, projected as ``x @ w``): only
    gate/up concatenated and the head, as row-major (in, out) copies — on CPU one row times a long
    row-major matrix streams ~25% faster than ``F.linear`` — and None for the rest (the modules).

    A snapshot: the decoder holding it must not outlive a weight update. None when the copies would
    exceed ``DECODE_WEIGHTS_MAX_BYTES``, or off the CPU without ``matvec``.
    """
    head = model.embed_tokens.weight if model.config.tie_embeddings else model.lm_head.weight
    if head.device.type != "cpu" and not matvec:
        return None
    layers = [(b.self_attn, b.mlp) for b in model.layers]
    copied = (lambda a, m: (a.q_proj, a.k_proj, a.v_proj, m.gate_proj, m.up_proj)) if matvec else (lambda a, m: (m.gate_proj, m.up_proj))
    extra = sum(t.weight.numel() * t.weight.element_size() for a, m in layers for t in copied(a, m))
    if not matvec:
        extra += head.numel() * head.element_size()
    if extra > DECODE_WEIGHTS_MAX_BYTES:
        return None
    per_layer = []
    for a, m in layers:
        gate_up = torch.cat((m.gate_proj.weight, m.up_proj.weight))
        if matvec:
            qkv = torch.cat((a.q_proj.weight, a.k_proj.weight, a.v_proj.weight))
            per_layer.append((qkv, a.o_proj.weight, gate_up, m.down_proj.weight))
        else:
            per_layer.append((None, None, gate_up.t().contiguous(), None))
    return tuple(per_layer), (head if matvec else head.t().contiguous())


_COMPILED: dict = {}
# CPU: the C++ wrapper calls the step's kernels without the Python wrapper's per-buffer overhead
_OPTIONS = {"cpu": {"cpp_wrapper": True}}


def _compiled(device_type: str = "cpu", graphs: bool = False):
    key = (device_type, graphs)
    if key not in _COMPILED:
        opts = _OPTIONS.get(device_type)
        kw = {"mode": "reduce-overhead"} if graphs else {"options": opts} if opts else {}
        _COMPILED[key] = torch.compile(decode_step, dynamic=False, fullgraph=True, **kw)
    return _COMPILED[key]


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
    On CPU it snapshots decode weight layouts (:func:`decode_weights`): make a new Decoder after
    changing the weights (``generate`` makes one per call).

    cuda_graphs: with ``compile`` on a CUDA cache, replay the step as a CUDA graph
    (``mode="reduce-overhead"``; the cache buffers are marked as static addresses, so the graph
    writes them in place). A small model's step is launch-bound on a GPU: on an H200, 8 layers ×
    d 256 at B = 2 took 0.60 ms per step against 2.48 ms compiled without graphs. Each call returns
    a copy of the logits (the graph's output buffer is overwritten by the next replay). Ignored off
    CUDA or without ``compile``.
    """

    def __init__(self, model: Transformer, cache: HybridCache, *, compile: bool = False, cuda_graphs: bool = False):
        self.model, self.cache = model, cache
        self.kv = tuple((layer.k, layer.v, layer.time) for layer in cache.layers)
        start = cache.start
        self.start = None if start is None or not bool(start.any()) else start
        self.compiled = bool(compile) and compile_available()
        dev = cache.layers[0].k.device
        self.graphs = self.compiled and bool(cuda_graphs) and dev.type == "cuda"
        self._fn = _compiled(dev.type, self.graphs) if self.compiled else decode_step
        # one row on CPU, compiled: projections as streaming reductions (matvec_linear)
        self.matvec = self.compiled and cache.batch_size == 1 and dev.type == "cpu"
        self.wts = decode_weights(model, self.matvec)
        self._time = torch.zeros(1, dtype=torch.long, device=dev)
        if self.graphs:  # written in place by the replayed graph: their addresses must not change
            for buf in (self._time, *(t for kv in self.kv for t in kv)):
                torch._dynamo.mark_static_address(buf)

    def __call__(self, token: torch.Tensor) -> torch.Tensor:
        """token (B,) -> logits (B, vocab); the cache advances by one."""
        cache = self.cache
        if cache.seen == 0:
            raise ValueError("Decoder needs a prefilled cache (run the prompt through the model first)")
        cache.check(token.shape[0], 1)
        self._time.fill_(cache.seen)
        # one layout for every caller: a column view (seq[:, i]) and a fresh argmax would otherwise
        # be two graphs, and the switch a recompile in the middle of decoding
        tokens = token.reshape(-1, 1).contiguous()
        try:
            if self.graphs:
                torch.compiler.cudagraph_mark_step_begin()
                logits = self._fn(self.model, tokens, self._time, self.start, self.kv, self.wts, self.matvec).clone()
            else:
                logits = self._fn(self.model, tokens, self._time, self.start, self.kv, self.wts, self.matvec)
        except Exception as e:  # no compiler, an unsupported op, ...: the eager step is exact
            if self._fn is decode_step:
                raise
            warnings.warn(f"rnope.fast: compiled decode failed ({e.__class__.__name__}); decoding eagerly", stacklevel=2)
            self._fn, self.compiled, self.graphs = decode_step, False, False
            if self.matvec:  # matvec_linear is for compiled code only: back to the eager layouts
                self.matvec, self.wts = False, decode_weights(self.model)
            logits = decode_step(self.model, tokens, self._time, self.start, self.kv, self.wts)
        cache.advance(1)
        return logits
