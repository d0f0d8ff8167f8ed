"""The hybrid-attention decoder (Cohere block), as in *Rope to Nope and Back Again* (arXiv 2501.18795).

Block (HF ``cohere`` / ``cohere2``): one LayerNorm without bias feeds attention and a SwiGLU MLP in
parallel, ``x + attn(ln(x)) + mlp(ln(x))``; GQA; interleaved rotary pairs in fp32 on RoPE layers
only; tied embeddings; logits multiplied by ``logit_scale``. Per-layer behaviour (RoPE or not,
window, chunk, QK-norm) is data from ``ModelConfig.layers`` — one Attention class, no subclasses.

Parameter names follow transformers' so export is a prefix away (``model.`` + name).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .cache import HybridCache, LayerCache
from .config import LayerSpec, ModelConfig
from .kernels import attention, rotary, visibility
from .nope_scale import log_temperature
from .rope import apply_rotary, llama4_temperature, rope_tables, rotary_angles

# observer(layer_idx, spec, q (B,H,Tq,D), k (B,Hkv,Tk,D), q_time (Tq,), k_time (Tk,), start (B,)|None)
Observer = Callable[..., None]


class LayerNorm(nn.Module):
    """LayerNorm without bias over the last dim; ``shape`` may be (H, D) for per-head QK-norm."""

    def __init__(self, shape: int | tuple[int, ...], eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(shape))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32 and self.weight.dtype == torch.float32 and self.weight.dim() == 1:
            return F.layer_norm(x, x.shape[-1:], self.weight, None, self.eps)  # one fused kernel
        y = F.layer_norm(x.float(), x.shape[-1:], eps=self.eps)
        return (y * self.weight.float()).to(x.dtype)


class RMSNorm(LayerNorm):
    """RMSNorm (Llama family), fp32 math."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (y * self.weight.float()).to(x.dtype)


def make_norm(config: ModelConfig, shape: int | tuple[int, ...]) -> LayerNorm:
    return (RMSNorm if config.norm == "rmsnorm" else LayerNorm)(shape, config.norm_eps)


@dataclass
class Context:
    """Per-forward facts shared by all layers: stream times, RoPE positions, padding, options."""

    times: torch.Tensor  # (T,) stream times of the new tokens
    positions: torch.Tensor  # (B, T) RoPE positions
    start: torch.Tensor | None  # (B,) left padding, None when there is none
    # per-layer KV caches (``HybridCache.layers``), None without a cache; ``seen`` = tokens cached
    # before this forward, or None for a static-shape step: each layer writes at ``times`` (a tensor)
    # and attends its whole fixed-size buffer, so no Python int changes between decode steps
    kv: Sequence[LayerCache] | None = None
    seen: int | None = 0
    impl: str = "auto"  # attention backend by name (rnope.kernels)
    observer: Observer | None = None
    _angles: dict = field(default_factory=dict)
    _masks: dict = field(default_factory=dict)

    def angles(self, attn: "Attention"):
        """cos/sin for a layer's tables, computed once per distinct table per forward."""
        key = attn.rope_key
        if key not in self._angles:
            dev = self.positions.device
            mix = None if attn.rope_mix is None else attn.rope_mix.to(dev)
            self._angles[key] = rotary_angles(self.positions, attn.inv_freq.to(dev), attn.rope_factor, mix)
        return self._angles[key]

    def cis(self, attn: "Attention") -> torch.Tensor:
        """The same angles as complex ``cos + i·sin`` (B, 1, T, D/2) for the eager interleaved path."""
        key = ("cis",) + attn.rope_key
        if key not in self._angles:
            self._angles[key] = rotary.cis(*self.angles(attn))
        return self._angles[key]

    def mask(self, spec: LayerSpec, k_time: torch.Tensor) -> torch.Tensor:
        """Visibility of the cached keys, computed once per forward per (span, window, chunk, length):
        every layer of a cache is written at the same times, so layers of one kind share it."""
        key = (spec.span, spec.window, spec.chunk, k_time.shape[0])
        if key not in self._masks:
            self._masks[key] = visibility(self.times, k_time, spec, self.start)
        return self._masks[key]

    def visible_keys(self, spec: LayerSpec) -> torch.Tensor:
        """Number of keys each query sees, n (B, T) — for Scalable-Softmax."""
        n = self.positions + 1
        if spec.span == "sliding":
            n = n.clamp(max=spec.window)
        elif spec.span == "chunked":
            n = self.positions % spec.chunk + 1
        return n


class Attention(nn.Module):
    def __init__(self, config: ModelConfig, spec: LayerSpec, layer_idx: int):
        super().__init__()
        self.spec, self.layer_idx = spec, layer_idx
        self.n_head, self.n_kv_head, self.head_dim = config.n_head, config.n_kv_head, config.head_dim
        d = config.d_model
        bias = config.qkv_bias  # Qwen2: q/k/v biases, none on o_proj
        self.q_proj = nn.Linear(d, self.n_head * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(d, self.n_kv_head * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(d, self.n_kv_head * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(self.n_head * self.head_dim, d, bias=False)
        # optional one product for q, k and v (same outputs, concatenated), set by rnope.decode.fuse
        self.qkv_proj: nn.Module | None = None
        self.layout = config.rope_layout
        if spec.qk_norm:  # QK-Norm baseline: LayerNorm over head_dim before the rotation (HF cohere)
            self.q_norm = make_norm(config, (self.n_head, self.head_dim))
            self.k_norm = make_norm(config, (self.n_kv_head, self.head_dim))
        if spec.rope:
            # plain fp32 attributes, not buffers: model.to(bfloat16) must not round the frequencies
            # (transformers keeps inv_freq in fp32 too); Context.angles moves them to the device.
            # Always on CPU, also when the model is built on "meta" (rnope.load assigns the weights)
            with torch.device("cpu"):
                self.inv_freq, self.rope_factor, self.rope_mix = rope_tables(spec.rope_options, self.head_dim, layer_idx=layer_idx)
            opts = spec.rope_options
            self.rope_key = (opts.theta, opts.scaling, opts.factor, opts.original_len,
                             opts.fraction, layer_idx if self.rope_mix is not None else -1)
        if not spec.rope and spec.nope_options.temperature == "ssmax":  # Scalable-Softmax: q · s_h · log n, s learnable per head
            self.ssmax_scale = nn.Parameter(torch.full((self.n_head,), 1.0 / math.log(max(config.max_seq_len, 3))))

    def forward(self, x: torch.Tensor, ctx: Context) -> torch.Tensor:
        B, T, _ = x.shape
        if self.qkv_proj is not None:
            nq, nk = self.n_head * self.head_dim, self.n_kv_head * self.head_dim
            q, k, v = self.qkv_proj(x).split((nq, nk, nk), dim=-1)
        else:
            q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        q = q.view(B, T, self.n_head, self.head_dim)
        k = k.view(B, T, self.n_kv_head, self.head_dim)
        v = v.view(B, T, self.n_kv_head, self.head_dim)
        if self.spec.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, H, T, D)
        if self.spec.rope:
            if rotary.use_complex(self.layout):  # one complex multiply: same math, ~10x faster eager
                rot = ctx.cis(self)
                q, k = rotary.apply_rotary_complex(q, rot), rotary.apply_rotary_complex(k, rot)
            else:
                cos, sin = ctx.angles(self)
                q, k = apply_rotary(q, cos, sin, self.layout), apply_rotary(k, cos, sin, self.layout)
            if self.spec.rope_options.qk_l2norm:  # Llama 4: weightless RMS-style L2 norm after RoPE, RoPE layers only
                q, k = _l2norm(q), _l2norm(k)
        elif self.spec.nope_options.temperature == "llama4":  # Llama 4 attn_temperature_tuning, NoPE layers only
            scale = llama4_temperature(ctx.positions, self.spec.nope_options.scale, self.spec.nope_options.floor)
            q = (q.float() * scale[:, None, :, None]).to(q.dtype)
        elif self.spec.nope_options.temperature == "log":  # β = 1 + c·ln(max(1, (p+1)/L_train)), NoPE layers only
            scale = log_temperature(ctx.positions, self.spec.nope_options.scale, self.spec.nope_options.floor)
            q = (q.float() * scale[:, None, :, None]).to(q.dtype)
        elif self.spec.nope_options.temperature == "ssmax":  # Scalable-Softmax (Nakanishi 2025): q · s·log(n)
            logn = ctx.visible_keys(self.spec).float().log()  # (B, T)
            q = (q.float() * (self.ssmax_scale.float()[None, :, None] * logn[:, None, :])[..., None]).to(q.dtype)

        layer = None if ctx.kv is None else ctx.kv[self.layer_idx]
        fresh = layer is None or ctx.seen == 0  # the keys are exactly the queries' own tokens
        if fresh:
            keys, vals, k_time, allowed = k, v, ctx.times, None
        else:
            keys, vals, k_time = layer.update(k, v, ctx.times, ctx.seen)
            allowed = ctx.mask(self.spec, k_time)
        if ctx.observer is not None:
            ctx.observer(self.layer_idx, self.spec, q, keys, ctx.times, k_time, ctx.start)
        y = attention(q, keys, vals, self.spec, times=ctx.times, start=ctx.start, impl=ctx.impl, allowed=allowed)
        if fresh and layer is not None:
            layer.write(k, v, ctx.times)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, -1))


class MLP(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.gate_proj = nn.Linear(config.d_model, config.d_ff, bias=False)
        self.up_proj = nn.Linear(config.d_model, config.d_ff, bias=False)
        self.down_proj = nn.Linear(config.d_ff, config.d_model, bias=False)
        # optional one product for gate and up (same outputs, concatenated), set by rnope.decode.fuse
        self.gate_up_proj: nn.Module | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gate_up_proj is not None:
            g, u = self.gate_up_proj(x).split(self.gate_proj.out_features, dim=-1)
            return self.down_proj(F.silu(g).mul_(u))
        if torch.is_grad_enabled():
            return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))
        g = F.silu(self.gate_proj(x), inplace=True)  # inference: no (B, T, d_ff) temporaries
        return self.down_proj(g.mul_(self.up_proj(x)))


class Block(nn.Module):
    """Cohere parallel block ``x + attn(ln(x)) + mlp(ln(x))``, or (``block="sequential"``) the
    Llama pre-norm block ``x += attn(ln1(x)); x += mlp(ln2(x))``."""

    def __init__(self, config: ModelConfig, layer_idx: int):
        super().__init__()
        self.input_layernorm = make_norm(config, config.d_model)
        self.self_attn = Attention(config, config.layers[layer_idx], layer_idx)
        self.mlp = MLP(config)
        self.sequential = config.block == "sequential"
        if self.sequential:
            self.post_attention_layernorm = make_norm(config, config.d_model)

    def forward(self, x: torch.Tensor, ctx: Context) -> torch.Tensor:
        h = self.input_layernorm(x)
        if self.sequential:
            x = x + self.self_attn(h, ctx)
            return x + self.mlp(self.post_attention_layernorm(x))
        y = self.self_attn(h, ctx)
        if torch.is_grad_enabled() or y.dtype != x.dtype:
            return x + y + self.mlp(h)
        return y.add_(x).add_(self.mlp(h))  # inference: the same sums in place, no temporaries


IGNORE_INDEX = -100  # a target the loss leaves out (``forward(targets=...)``)


def _check_targets(targets, tokens: torch.Tensor, logits_to_keep: int, reduction: str) -> None:
    if not isinstance(targets, torch.Tensor) or targets.shape != tokens.shape:
        shape = tuple(targets.shape) if isinstance(targets, torch.Tensor) else type(targets).__name__
        raise ValueError(f"targets must have the tokens' shape {tuple(tokens.shape)}, got {shape}")
    if targets.dtype not in (torch.long, torch.int32, torch.int64):
        raise ValueError(f"targets must be integer ids, got dtype {targets.dtype}")
    if logits_to_keep:
        raise ValueError("targets cannot be combined with logits_to_keep (the loss needs every position)")
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")


class Transformer(nn.Module):
    """``model(tokens)`` -> logits (B, T, vocab); ``model(tokens, targets=ids)`` -> the fp32 loss.
    See :meth:`forward` for caching and padding."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.d_model)
        self.layers = nn.ModuleList(Block(config, i) for i in range(config.n_layer))
        self.norm = make_norm(config, config.d_model)
        if not config.tie_embeddings:
            self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.attn_impl = "auto"  # "auto" | "dense" | "reference" | "flex" | "sdpa": kernels of fresh attention
        init_weights(self)

    # -------------------------------------------------------------------------------------------
    def new_cache(self, batch_size: int, max_seq_len: int | None = None, *, dtype=None, device=None) -> HybridCache:
        """A hybrid KV cache for ``batch_size`` rows and up to ``max_seq_len`` tokens (default: config)."""
        p = self.embed_tokens.weight
        return HybridCache(
            self.config,
            batch_size,
            max_seq_len or self.config.max_seq_len,
            dtype=dtype or p.dtype,
            device=device or p.device,
        )

    def forward(
        self,
        tokens: torch.Tensor,
        *,
        cache: HybridCache | None = None,
        attention_mask: torch.Tensor | None = None,
        positions: torch.Tensor | None = None,
        observer: Observer | None = None,
        logits_to_keep: int = 0,
        targets: torch.Tensor | None = None,
        reduction: str = "mean",
    ) -> torch.Tensor:
        """Logits for ``tokens`` (B, T) — or for the last ``logits_to_keep`` positions only (0 = all;
        a prefill that only samples the next token needs 1, sparing the T×vocab head).

        targets: (B, T) next-token ids; then the call returns the fp32 cross-entropy instead of the
            logits (``reduction`` "mean" over targets, or "sum"; targets equal to -100 are left out).
            Computing it inside ``forward`` lets ``torch.compile`` fuse the head's upcast and softmax
            into one graph, so no fp32 copy of the (B, T, vocab) logits is kept for backward
            (on an H200, bf16: 14% faster training steps and half the memory of a 125M model at T=8k).

        cache: a :class:`HybridCache`; new tokens are appended and positions continue.
        attention_mask: (B, T) 1 = token, 0 = left padding (only on the first call with a cache);
            padded rows get positions starting at their first real token.
        positions: explicit RoPE positions (B, T) (no cache); default 0..T-1 per real token.
        observer: called by every layer with its (post-RoPE) q and k — attention analysis hook.
        """
        B, T = self._check_tokens(tokens)
        if targets is not None:
            _check_targets(targets, tokens, logits_to_keep, reduction)
        if isinstance(logits_to_keep, bool) or not isinstance(logits_to_keep, int) or logits_to_keep < 0:
            raise ValueError(f"logits_to_keep must be an integer >= 0 (0 = every position), got {logits_to_keep!r}")
        start = None
        if cache is not None:
            cache.check(B, T)
            if attention_mask is not None:
                if cache.seen:
                    raise ValueError("attention_mask is only accepted on the first call with a cache (prefill)")
                cache.start = _left_padding(attention_mask, B, T)
            start = cache.start
            t0 = cache.seen
        else:
            t0 = 0
            if attention_mask is not None:
                start = _left_padding(attention_mask, B, T)
        if start is not None and not bool(start.any()):
            start = None
        times = torch.arange(t0, t0 + T, device=tokens.device)
        if positions is None:
            positions = times[None].expand(B, T) if start is None else (times[None] - start[:, None]).clamp(min=0)
        elif cache is not None or positions.shape != (B, T):
            raise ValueError(f"positions must be (B, T) = {(B, T)} and used without a cache, got {tuple(positions.shape)}")
        ctx = Context(times=times, positions=positions, start=start, kv=None if cache is None else cache.layers,
                      seen=t0, impl=self.attn_impl, observer=observer)
        x = self.hidden(tokens, ctx)
        if cache is not None:
            cache.advance(T)
        logits = self.logits(x[:, -logits_to_keep:] if logits_to_keep > 0 else x)
        if targets is None:
            return logits
        return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX, reduction=reduction)

    def hidden(self, tokens: torch.Tensor, ctx: Context) -> torch.Tensor:
        """The blocks: embeddings of ``tokens`` (B, T) -> last hidden states (B, T, d_model), before
        the final norm. No checks and no Python-side state: :mod:`rnope.decode` compiles through it."""
        x = self.embed_tokens(tokens)
        for block in self.layers:
            x = block(x, ctx)
        return x

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Final norm and the LM head: hidden (B, T, d_model) -> logits (B, T, vocab). Tied
        embeddings have no ``lm_head`` module (the embedding matrix is the head) unless one is set
        (:func:`rnope.decode.fuse` gives the decode copy its own)."""
        head = self._modules.get("lm_head")
        out = head(self.norm(x)) if head is not None else F.linear(self.norm(x), self.embed_tokens.weight)
        # a scale of 1 is skipped: the multiply (and its backward) over B·T·vocab logits is a tenth of a
        # small model's training step on a CPU
        return out if self.config.logit_scale == 1.0 else out * self.config.logit_scale

    def _check_tokens(self, tokens: torch.Tensor) -> tuple[int, int]:
        if not isinstance(tokens, torch.Tensor) or tokens.dim() != 2:
            shape = tuple(tokens.shape) if isinstance(tokens, torch.Tensor) else type(tokens).__name__
            raise ValueError(f"tokens must be a 2-D (batch, time) tensor, got {shape}")
        if tokens.dtype not in (torch.long, torch.int32, torch.int64):
            raise ValueError(f"tokens must be integer ids, got dtype {tokens.dtype}")
        B, T = tokens.shape
        if B == 0 or T == 0:
            raise ValueError(f"tokens must be non-empty, got shape {(B, T)}")
        if tokens.device.type != "meta" and not torch.compiler.is_compiling():  # a data-dependent check
            lo, hi = int(tokens.min()), int(tokens.max())
            if lo < 0 or hi >= self.config.vocab_size:
                bad = lo if lo < 0 else hi
                raise ValueError(f"token id {bad} is outside the vocabulary [0, {self.config.vocab_size})")
        return B, T

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


def _l2norm(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


def _left_padding(mask: torch.Tensor, B: int, T: int) -> torch.Tensor:
    """Pad counts per row from a (B, T) 0/1 mask; padding must be a prefix (left padding)."""
    if tuple(mask.shape) != (B, T):
        raise ValueError(f"attention_mask must have shape {(B, T)}, got {tuple(mask.shape)}")
    m = mask.to(torch.bool)
    start = (~m).sum(dim=1)
    expect = torch.arange(T, device=m.device)[None] >= start[:, None]
    if not torch.equal(m, expect):
        raise ValueError("attention_mask must be left padding (zeros only before the first token of each row)")
    if bool((start == T).any()):
        raise ValueError(f"attention_mask row {int((start == T).nonzero()[0])} has no tokens")
    return start


def init_weights(model: Transformer) -> None:
    """The one weight init: N(0, init_std) for embeddings and projections; the residual output
    projections (o_proj, down_proj) scaled by 1/sqrt(2·n_layer) (GPT-2); norm weights 1."""
    cfg = model.config
    std = cfg.init_std
    out_std = std / math.sqrt(2 * cfg.n_layer)
    for name, p in model.named_parameters():
        if name.endswith("norm.weight") or "layernorm" in name:
            nn.init.ones_(p)
        elif name.endswith(".bias"):
            nn.init.zeros_(p)
        elif name.endswith("ssmax_scale"):
            nn.init.constant_(p, 1.0 / math.log(max(cfg.max_seq_len, 3)))
        elif name.endswith(("o_proj.weight", "down_proj.weight")):
            nn.init.normal_(p, 0.0, out_std)
        else:
            nn.init.normal_(p, 0.0, std)
