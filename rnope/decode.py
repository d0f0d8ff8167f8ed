"""Static-shape decode: one token per row through fixed-size cache buffers, optionally compiled.

gpt-fast's recipe: the cache buffers never change shape, the write slot and the visibility mask
come from the stream time as a *tensor*, and nothing in the step reads a Python int that changes
between steps, so ``torch.compile(decode_step, dynamic=False)`` traces one graph and reuses it for
every token. The step is the model's own forward (:meth:`rnope.model.Transformer.hidden` and
``logits``) with a static-shape cache context (``Context.seen = None``): each layer writes its new
K/V through :meth:`rnope.cache.LayerCache.write` at ``slot = time % size`` (a ring for sliding
layers, the position itself for global layers) and attends its whole buffer; unwritten or
out-of-window slots are masked by :func:`rnope.kernels.visibility` from the slot times.

Decode weight layouts are modules swapped into a *decode copy* of the model by :func:`fuse` (the
copy shares every parameter with the model; only the fused matrices are copies):

* ``matvec`` (the compiled one-row CPU step): q/k/v and gate/up each concatenated into one
  :class:`FusedLinear`, and every projection and the head computed by
  :func:`rnope.kernels.matvec_linear`, with cached attention by the ``matvec`` backend; inductor
  fuses the step into one C++ kernel that streams each weight once (``cpp_wrapper`` calls it without
  the Python wrapper's per-buffer work).
* ``rowmajor`` (the eager CPU step): gate/up concatenated and the head, as row-major (in, out)
  copies: one row times a long row-major matrix streams ~25% faster through BLAS than ``F.linear``.

Only the order of fp32 sums changes. :class:`Decoder` drives the step (compiled when asked and
possible, eager otherwise) and keeps the cache's ``seen`` in step; the cache it leaves behind is the
one ``model(token[:, None], cache=cache)`` would have left, so the two can be mixed.
"""

from __future__ import annotations

import copy
import shutil
import warnings
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .cache import HybridCache, LayerCache
from .kernels import matvec_linear
from .model import Context, Transformer

__all__ = ["AUTO_COMPILE_TOKENS", "DECODE_WEIGHTS", "DECODE_WEIGHTS_MAX_BYTES", "Decoder", "FusedLinear", "cache_length",
           "check_decode_weights", "compile_available", "decode_step", "fuse", "should_compile"]


class FusedLinear(nn.Module):
    """One projection computed as ``kind`` says, with the same outputs as ``F.linear(x, weight, bias)``.

    ``weight`` (out, in), e.g. q/k/v concatenated. ``kind``: ``linear`` (``F.linear``), ``matvec``
    (:func:`rnope.kernels.matvec_linear`, compiled code only) or ``rowmajor`` (``x @ wᵀ`` with a
    row-major transposed copy of the weight). Holds tensors, not parameters: a decode snapshot.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None, kind: str = "linear"):
        super().__init__()
        if kind not in ("linear", "matvec", "rowmajor"):
            raise ValueError(f"FusedLinear kind must be linear, matvec or rowmajor, got {kind!r}")
        self.kind = kind
        self.weight = weight.t().contiguous() if kind == "rowmajor" else weight
        self.bias = bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "matvec":
            y = matvec_linear(x, self.weight)
        elif self.kind == "rowmajor":
            y = x @ self.weight
        else:
            return F.linear(x, self.weight, self.bias)
        return y if self.bias is None else y + self.bias


DECODE_WEIGHTS_MAX_BYTES = 256 * 2**20  # largest total of copied matrices a decode copy may hold


def _cat(*mods: nn.Linear) -> tuple[torch.Tensor, torch.Tensor | None]:
    w = torch.cat([m.weight for m in mods])
    b = None if mods[0].bias is None else torch.cat([m.bias for m in mods])
    return w, b


def _shallow(module: nn.Module) -> nn.Module:
    """A new module object sharing the parameters, buffers and attributes of ``module``, whose
    children can be replaced without touching the original."""
    new = copy.copy(module)
    new._modules = type(module._modules)(module._modules)
    return new


#: decode weight dtypes a user may ask for (``Decoder(weights=...)``, ``rnope generate --decode-weights``)
DECODE_WEIGHTS = {"float32": None, "float16": torch.float16, "bfloat16": torch.bfloat16}


def check_decode_weights(weights: str | None) -> torch.dtype | None:
    """The dtype of a ``weights`` choice (None = the model's own); ValueError naming a bad one."""
    if weights is None:
        return None
    if weights not in DECODE_WEIGHTS:
        raise ValueError(f"decode weights must be one of {', '.join(DECODE_WEIGHTS)}, got {weights!r}")
    return DECODE_WEIGHTS[weights]


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


@torch.no_grad()
def fuse(model: Transformer, kind: str, weight_dtype: torch.dtype | None = None) -> Transformer | None:
    """A decode copy of ``model`` with the ``kind`` weight layouts (module doc) swapped in, or None
    when the copied matrices would exceed ``DECODE_WEIGHTS_MAX_BYTES`` or ``rowmajor`` is asked for
    off the CPU (then decode with ``model`` itself).

    ``weight_dtype`` (``matvec`` only): store every matrix of the copy (projections and the head) in
    this narrower dtype, float16 or bfloat16; :func:`rnope.kernels.matvec_linear` widens it inside
    the reduction, so a step reads half the bytes and still computes in fp32. Rounding the weights
    changes the logits (about 1e-3 relative for float16): an opt-in, not the reference.

    A snapshot: the copy shares the model's parameters, but its fused matrices are copies, so a
    copy must not outlive a weight update (:class:`Decoder` makes one per decode).
    """
    if kind not in ("matvec", "rowmajor"):
        raise ValueError(f"decode layout must be matvec or rowmajor, got {kind!r}")
    if weight_dtype is not None and kind != "matvec":
        raise ValueError(f"decode weights in {weight_dtype} need the matvec layout, got {kind!r}")
    head = model.embed_tokens.weight if model.config.tie_embeddings else model.lm_head.weight
    if head.device.type != "cpu" and kind == "rowmajor":
        return None
    matvec = kind == "matvec"
    narrow = weight_dtype is not None and weight_dtype != head.dtype
    size = lambda *ms: sum(m.weight.numel() * m.weight.element_size() for m in ms)  # noqa: E731
    if narrow:  # every matrix is copied, at the narrow dtype's size
        mats = [m for b in model.layers for m in (b.self_attn.q_proj, b.self_attn.k_proj, b.self_attn.v_proj,
                                                  b.self_attn.o_proj, b.mlp.gate_proj, b.mlp.up_proj, b.mlp.down_proj)]
        extra = (sum(m.weight.numel() for m in mats) + head.numel()) * torch.empty((), dtype=weight_dtype).element_size()
    else:
        extra = sum(size(b.self_attn.q_proj, b.self_attn.k_proj, b.self_attn.v_proj) if matvec else 0 for b in model.layers)
        extra += sum(size(b.mlp.gate_proj, b.mlp.up_proj) for b in model.layers)
        extra += 0 if matvec else head.numel() * head.element_size()
    if extra > DECODE_WEIGHTS_MAX_BYTES:
        return None
    cast = (lambda w: w.to(weight_dtype)) if narrow else (lambda w: w)  # noqa: E731

    def fl(w, b=None):
        return FusedLinear(cast(w), b, kind)

    dm = _shallow(model)
    blocks = []
    for block in model.layers:
        b, a, m = _shallow(block), _shallow(block.self_attn), _shallow(block.mlp)
        m.gate_up_proj = fl(*_cat(block.mlp.gate_proj, block.mlp.up_proj))
        if matvec:
            a.qkv_proj = fl(*_cat(a.q_proj, a.k_proj, a.v_proj))
            a.o_proj = fl(a.o_proj.weight)
            m.down_proj = fl(m.down_proj.weight)
        b.self_attn, b.mlp = a, m
        blocks.append(b)
    dm.layers = nn.ModuleList(blocks)
    dm.lm_head = fl(head)
    if matvec and model.attn_impl != "reference":  # the reference kernel stays the reference
        dm.attn_impl = "matvec"
    return dm


def decode_step(model: Transformer, tokens: torch.Tensor, time: torch.Tensor, start: torch.Tensor | None,
                layers: Sequence[LayerCache]) -> torch.Tensor:
    """tokens (B, 1) at stream time ``time`` (1,) long -> logits (B, vocab).

    ``layers``: the per-layer caches (``HybridCache.layers``, written in place); ``start`` (B,) left
    padding or None; ``model``: the model or a decode copy from :func:`fuse`. Pure tensor code: the
    function :class:`Decoder` compiles.
    """
    B = tokens.shape[0]
    positions = time[None].expand(B, 1) if start is None else (time[None] - start[:, None]).clamp(min=0)
    ctx = Context(times=time, positions=positions, start=start, kv=layers, seen=None, impl=model.attn_impl)
    return model.logits(model.hidden(tokens, ctx))[:, -1]


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
    if not hasattr(torch, "compile"):
        return False
    if torch.cuda.is_available():
        return True
    return any(shutil.which(c) for c in ("g++", "c++", "clang++"))


# --------------------------------------------------------------------------------- when to compile
#: ``compile=None`` (auto) compiles a decode step once this many tokens were (or are about to be)
#: decoded with its shape in this process: the compile must repay itself. Measured for the 7M
#: bench shape on 2 CPU threads (benchmarks/RESULTS.md): a cold compile takes 10-19 s (4 s with
#: inductor's on-disk cache warm from an earlier process) and saves 3-4 ms per token (eager
#: 170-250 tok/s, compiled 400-950 tok/s after a 2k prompt, depending on the machine's load), so it
#: repays after ~1,000-6,000 tokens.
AUTO_COMPILE_TOKENS = 4096
#: at most this many step shapes are compiled automatically per process (each distinct shape is one
#: graph; torch's recompile limit for one function is 8, past which it silently runs eagerly)
AUTO_COMPILE_MAX_SHAPES = 6

_decoded: dict[tuple, int] = {}  # step shape -> tokens decoded eagerly in this process
_warm: set[tuple] = set()  # step shapes with a compiled step in this process


def _shape_key(model: Transformer, batch: int, length: int, device: torch.device) -> tuple:
    return (model.config, model.embed_tokens.weight.dtype, device.type, batch, length)


def cache_length(n: int) -> int:
    """The cache length a compiled step is built for: ``n`` rounded up to a quarter octave (at most
    4 lengths per doubling: 2176 -> 2560, 300 -> 320), so calls with other prompt lengths reuse
    the same graph. Global layers attend the extra slots masked; sliding layers are unaffected."""
    step = max(64, 1 << max(0, n.bit_length() - 3))
    return -(-n // step) * step


def should_compile(model: Transformer, batch: int, length: int, new_tokens: int) -> bool:
    """The automatic choice (``generate(compile=None)``): compile the decode step for ``batch`` rows
    and a cache of ``length`` tokens when a compiled step of that shape is already warm in this
    process, or when the tokens decoded with it (this call's ``new_tokens`` included) reach
    :data:`AUTO_COMPILE_TOKENS`. Only where compiling pays: one row on CPU (the fused matvec step)
    or any batch on CUDA, with a C++ compiler (:func:`compile_available`)."""
    device = model.embed_tokens.weight.device
    key = _shape_key(model, batch, length, device)
    if key in _warm:
        return True
    if not (device.type == "cuda" or (device.type == "cpu" and batch == 1)) or not compile_available():
        return False
    if len(_warm) >= AUTO_COMPILE_MAX_SHAPES:
        return False
    return _decoded.get(key, 0) + new_tokens >= AUTO_COMPILE_TOKENS


def record_decoded(model: Transformer, batch: int, length: int, tokens: int, compiled: bool) -> None:
    """Account ``tokens`` decoded with a step of this shape (for :func:`should_compile`)."""
    key = _shape_key(model, batch, length, model.embed_tokens.weight.device)
    if compiled:
        _warm.add(key)
    else:
        _decoded[key] = _decoded.get(key, 0) + tokens


class Decoder:
    """Decode one token per row into ``cache`` (after its prefill): ``logits = dec(token)``.

    compile: ``True`` compiles the step (one graph per model shape, batch size and cache length; the
    first call pays the compile), ``False`` runs it eagerly; a failed compile warns and falls back to
    eager. On CPU it decodes through a decode copy of the model (:func:`fuse`): make a new Decoder
    after changing the weights (``generate`` makes one per call).

    cuda_graphs: with ``compile`` on a CUDA cache, replay the step as a CUDA graph
    (``mode="reduce-overhead"``; the cache buffers are marked as static addresses, so the graph
    writes them in place). A small model's step is launch-bound on a GPU: on an H200, 8 layers ×
    d 256 at B = 2 took 0.60 ms per step against 2.48 ms compiled without graphs. Each call returns
    a copy of the logits (the graph's output buffer is overwritten by the next replay). Ignored off
    CUDA or without ``compile``.

    weights: ``"float16"`` or ``"bfloat16"`` stores the decode copy's matrices in that dtype for the
    compiled one-row CPU step, which is bound by reading the weights: about half the bytes per token
    (:func:`fuse`). The logits move by the weights' rounding (float16: ~1e-3 relative); greedy
    tokens usually, not always, agree with fp32. Elsewhere (eager, a batch, CUDA) the step keeps the
    model's weights; ``self.weights`` says which dtype the step reads. None / ``"float32"``: the model's.
    """

    def __init__(self, model: Transformer, cache: HybridCache, *, compile: bool = False, cuda_graphs: bool = False,
                 weights: str | None = None):
        self.model, self.cache = model, cache
        self.layers = cache.layers
        start = cache.start
        self.start = None if start is None or not bool(start.any()) else start
        self.compiled = bool(compile) and compile_available()
        dev = cache.layers[0].k.device
        self.graphs = self.compiled and bool(cuda_graphs) and dev.type == "cuda"
        self._fn = _compiled(dev.type, self.graphs) if self.compiled else decode_step
        # one row on CPU, compiled: projections as streaming reductions (matvec layouts)
        self.matvec = self.compiled and cache.batch_size == 1 and dev.type == "cpu"
        narrow = check_decode_weights(weights)  # checked everywhere, used by the matvec step only
        narrow = narrow if self.matvec else None
        fused = fuse(model, "matvec" if self.matvec else "rowmajor", narrow)
        self.step_model = fused or model
        self.weights = _dtype_name(narrow if fused is not None and narrow is not None else model.embed_tokens.weight.dtype)
        self._time = torch.zeros(1, dtype=torch.long, device=dev)
        if self.graphs:  # written in place by the replayed graph: their addresses must not change
            for buf in (self._time, *(t for layer in self.layers for t in (layer.k, layer.v, layer.time))):
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
                logits = self._fn(self.step_model, tokens, self._time, self.start, self.layers).clone()
            else:
                logits = self._fn(self.step_model, tokens, self._time, self.start, self.layers)
        except Exception as e:  # no compiler, an unsupported op, ...: the eager step is exact
            if self._fn is decode_step:
                raise
            warnings.warn(f"rnope.decode: compiled decode failed ({e.__class__.__name__}); decoding eagerly", stacklevel=2)
            self._fn, self.compiled, self.graphs = decode_step, False, False
            if self.matvec:  # matvec layouts are for compiled code only: back to the eager ones
                self.matvec = False
                self.step_model = fuse(self.model, "rowmajor") or self.model
                self.weights = _dtype_name(self.model.embed_tokens.weight.dtype)
            logits = decode_step(self.step_model, tokens, self._time, self.start, self.layers)
        cache.advance(1)
        return logits
