"""Model configuration: a frozen, validated dataclass with one expanded per-layer spec.

The layer pattern is a short string (nanochat's ``"SSSL"`` idea), repeated to ``n_layer`` and
expanded **once** into ``ModelConfig.layers`` — every consumer (attention, cache, accounting,
analysis, export) reads that tuple and nothing else. Pattern letters:

=====  ===================  ======================================================
letter positional encoding   span
=====  ===================  ======================================================
``S``  RoPE                 sliding window of ``window`` keys (t-W < s <= t)
``R``  RoPE                 full causal
``Q``  RoPE + QK-LayerNorm  full causal (the paper's QK-Norm baseline)
``C``  RoPE                 chunked local attention of ``chunk_size`` (Llama-4)
``N``  NoPE                 full causal (the paper's global layer)
``W``  NoPE                 sliding window
=====  ===================  ======================================================

RNoPE-SWA (arXiv 2501.18795 §3) is ``"SSSN"``: three RoPE sliding-window layers, then one NoPE
full-attention layer, the global layer last in each block of four (HF ``cohere2``: layer i is
full iff ``(i+1) % 4 == 0``).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Literal

from .rope import SCALINGS

Span = Literal["full", "sliding", "chunked"]

PATTERN_LETTERS: dict[str, tuple[bool, Span, bool]] = {
    # letter: (rope, span, qk_norm)
    "S": (True, "sliding", False),
    "R": (True, "full", False),
    "Q": (True, "full", True),
    "C": (True, "chunked", False),
    "N": (False, "full", False),
    "W": (False, "sliding", False),
}


@dataclass(frozen=True)
class LayerSpec:
    """What one attention layer does. ``window``/``chunk`` are set only for that span."""

    rope: bool
    span: Span
    window: int | None = None
    chunk: int | None = None
    qk_norm: bool = False
    rope_theta: float = 10_000.0
    # RoPE layers only (rnope.rope documents each method and its paper)
    rope_scaling: str = "none"
    rope_factor: float = 1.0
    rope_original_len: int = 0
    rope_fope_sigma: float = 0.1
    rope_fraction: float = 1.0
    qk_l2norm: bool = False
    # NoPE layers only: query temperature "none" | "llama4" | "log" | "ssmax" (rnope.nope_scale);
    # attn_temp_scale is the coefficient (Llama 4's 0.1, log's c), attn_temp_floor the position
    # scale (Llama 4's floor 8192, log's training length)
    temperature: str = "none"
    attn_temp_scale: float = 0.1
    attn_temp_floor: int = 8192

    @property
    def is_global(self) -> bool:
        return self.span == "full"

    @property
    def kv_slots(self) -> int | None:
        """Cache slots this layer needs (None = every position)."""
        if self.span == "sliding":
            return self.window
        if self.span == "chunked":
            return self.chunk
        return None


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """Shapes and per-layer behaviour of an rnope Transformer.

    Defaults are the small CPU size (``tiny`` preset shapes live in ``PRESETS``). Derived values are
    properties; ``layers`` is the single expanded per-layer spec.
    """

    vocab_size: int = 259
    n_layer: int = 4
    d_model: int = 128
    n_head: int = 4
    n_kv_head: int = 2
    d_ff: int = 384
    max_seq_len: int = 2048
    pattern: str = "SSSN"
    window: int = 128
    chunk_size: int = 256
    rope_theta: float = 10_000.0
    logit_scale: float = 1.0
    norm_eps: float = 1e-5
    tie_embeddings: bool = True
    init_std: float = 0.02
    # architecture family: Cohere (parallel block, LayerNorm, interleaved RoPE) by default;
    # Llama/SmolLM3 style is "sequential" + "rmsnorm" + "half"
    block: str = "parallel"
    norm: str = "layernorm"
    rope_layout: str = "interleaved"
    qkv_bias: bool = False  # biases on the q/k/v projections, none on o_proj (Qwen2)
    # positional-scheme relatives: RoPE extensions, iRoPE, NoPE temperature
    rope_scaling: str = "none"
    rope_factor: float = 1.0
    rope_original_len: int = 0  # 0 = max_seq_len
    rope_fope_sigma: float = 0.1
    rope_fraction: float = 1.0
    rope_qk_l2norm: bool = False
    # NoPE-layer query scale β(p) (rnope.nope_scale): "llama4" 1 + scale·ln(floor((p+1)/floor) + 1),
    # "log" 1 + scale·ln(max(1, (p+1)/floor)) with floor = the training length, "ssmax" learned
    nope_temperature: str = "none"
    attn_temp_scale: float = 0.1
    attn_temp_floor: int = 8192
    layers: tuple[LayerSpec, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        ints = {
            "vocab_size": 1,
            "n_layer": 1,
            "d_model": 1,
            "n_head": 1,
            "n_kv_head": 1,
            "d_ff": 1,
            "max_seq_len": 1,
            "window": 1,
            "chunk_size": 1,
        }
        for name, lo in ints.items():
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int):
                raise ValueError(f"{name} must be an integer, got {v!r}")
            if v < lo:
                raise ValueError(f"{name} must be >= {lo}, got {v}")
        if self.d_model % self.n_head:
            raise ValueError(f"n_head={self.n_head} does not divide d_model={self.d_model}")
        if self.n_head % self.n_kv_head:
            raise ValueError(f"n_kv_head={self.n_kv_head} does not divide n_head={self.n_head}")
        if self.head_dim % 2:
            raise ValueError(f"head_dim={self.head_dim} (d_model/n_head) must be even for RoPE")
        choices = {
            "block": ("parallel", "sequential"),
            "norm": ("layernorm", "rmsnorm"),
            "rope_layout": ("interleaved", "half"),
            "rope_scaling": SCALINGS,
            "nope_temperature": ("none", "llama4", "log", "ssmax"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        if not isinstance(self.qkv_bias, bool):
            raise ValueError(f"qkv_bias must be true or false, got {self.qkv_bias!r}")
        for name in ("rope_original_len",):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {v!r}")
        if isinstance(self.attn_temp_floor, bool) or not isinstance(self.attn_temp_floor, int) or self.attn_temp_floor < 1:
            raise ValueError(f"attn_temp_floor must be an integer >= 1, got {self.attn_temp_floor!r}")
        if not 0.0 < self.rope_fraction <= 1.0:
            raise ValueError(f"rope_fraction must be in (0, 1], got {self.rope_fraction!r}")
        if not self.rope_factor >= 1.0:
            raise ValueError(f"rope_factor must be >= 1, got {self.rope_factor!r}")
        if self.rope_scaling == "ntk" and self.head_dim <= 2:
            raise ValueError(f"rope_scaling 'ntk' needs head_dim > 2, got {self.head_dim}")
        for name in ("attn_temp_scale", "rope_fope_sigma"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
                raise ValueError(f"{name} must be a number >= 0, got {v!r}")
        for name in ("rope_theta", "logit_scale", "norm_eps", "init_std"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
                raise ValueError(f"{name} must be a positive number, got {v!r}")
        if not isinstance(self.pattern, str) or not self.pattern:
            raise ValueError(f"pattern must be a non-empty string of {''.join(PATTERN_LETTERS)}, got {self.pattern!r}")
        for ch in self.pattern:
            if ch not in PATTERN_LETTERS:
                raise ValueError(
                    f"pattern {self.pattern!r}: unknown letter {ch!r} (known: {', '.join(PATTERN_LETTERS)})"
                )
        object.__setattr__(self, "layers", self._expand())

    def _expand(self) -> tuple[LayerSpec, ...]:
        specs = []
        for i in range(self.n_layer):
            rope, span, qk = PATTERN_LETTERS[self.pattern[i % len(self.pattern)]]
            specs.append(
                LayerSpec(
                    rope=rope,
                    span=span,
                    window=self.window if span == "sliding" else None,
                    chunk=self.chunk_size if span == "chunked" else None,
                    qk_norm=qk,
                    rope_theta=float(self.rope_theta),
                    **(self._rope_options() if rope else self._nope_options()),
                )
            )
        return tuple(specs)

    def _rope_options(self) -> dict:
        return dict(
            rope_scaling=self.rope_scaling,
            rope_factor=float(self.rope_factor),
            rope_original_len=self.rope_original_len or self.max_seq_len,
            rope_fope_sigma=float(self.rope_fope_sigma),
            rope_fraction=float(self.rope_fraction),
            qk_l2norm=self.rope_qk_l2norm,
        )

    def _nope_options(self) -> dict:
        return dict(
            temperature=self.nope_temperature,
            attn_temp_scale=float(self.attn_temp_scale),
            attn_temp_floor=self.attn_temp_floor,
        )

    # ---- derived values -------------------------------------------------------------------
    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head

    @property
    def n_global(self) -> int:
        return sum(1 for s in self.layers if s.is_global)

    @property
    def n_local(self) -> int:
        return self.n_layer - self.n_global

    def kv_positions(self, length: int) -> int:
        """Positions of K/V a hybrid cache holds for ``length`` tokens: n_global·L + Σ min(slots, L)."""
        return sum(length if s.kv_slots is None else min(s.kv_slots, length) for s in self.layers)

    def num_params(self) -> int:
        """Parameter count (tied embeddings counted once) computed from the shapes alone."""
        d, hd = self.d_model, self.head_dim
        attn = d * self.n_head * hd * 2 + d * self.n_kv_head * hd * 2
        attn += (self.n_head + 2 * self.n_kv_head) * hd if self.qkv_bias else 0
        mlp = 3 * d * self.d_ff
        per_layer = attn + mlp + d * (2 if self.block == "sequential" else 1)  # norm weights
        qk = sum((self.n_head + self.n_kv_head) * hd for s in self.layers if s.qk_norm)  # per-head weights (HF cohere)
        qk += sum(self.n_head for s in self.layers if s.temperature == "ssmax")  # SSMax s per head
        emb = self.vocab_size * d * (1 if self.tie_embeddings else 2)
        return emb + self.n_layer * per_layer + qk + d

    # ---- (de)serialisation ----------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.init}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        known = {f.name for f in dataclasses.fields(cls) if f.init}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown model config key {unknown[0]!r} (known: {', '.join(sorted(known))})")
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def replace(self, **overrides: Any) -> "ModelConfig":
        return ModelConfig.from_dict({**self.to_dict(), **overrides})

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> "ModelConfig":
        """A preset from ``PRESETS`` with keyword overrides (any init field)."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r} (known: {', '.join(sorted(PRESETS))})")
        return cls.from_dict({**PRESETS[name], **overrides})


# Small default size for CPU experiments (≈1M parameters with the byte-level vocabulary).
_SMALL = dict(vocab_size=259, n_layer=4, d_model=128, n_head=4, n_kv_head=2, d_ff=384, max_seq_len=2048, window=128)

PRESETS: dict[str, dict[str, Any]] = {
    # the paper: 3 RoPE sliding-window layers + 1 NoPE global layer per block, theta 10k, GQA
    "rnope-swa": {**_SMALL, "pattern": "SSSN", "rope_theta": 10_000.0},
    "rope": {**_SMALL, "pattern": "R"},
    "nope": {**_SMALL, "pattern": "N"},
    "qknorm": {**_SMALL, "pattern": "Q"},
    "rnope": {**_SMALL, "pattern": "RRRN"},
    "swa": {**_SMALL, "pattern": "S"},
    # Cohere Command R7B shapes (HF CohereLabs/c4ai-command-r7b-12-2024): ≈8.03B parameters
    "command-r7b": dict(
        vocab_size=256_000,
        n_layer=32,
        d_model=4096,
        n_head=32,
        n_kv_head=8,
        d_ff=14_336,
        max_seq_len=131_072,
        pattern="SSSN",
        window=4096,
        rope_theta=50_000.0,
        logit_scale=0.25,
        tie_embeddings=True,
    ),
    # ---- positional-scheme relatives (rnope.rope cites each method) ----
    # ABF: a larger base frequency (Xiong et al. 2023)
    "rope-abf": {**_SMALL, "pattern": "R", "rope_theta": 500_000.0},
    # extension methods, as applied when moving to 4x the original context
    "rope-pi": {**_SMALL, "pattern": "R", "rope_scaling": "linear", "rope_factor": 4.0},
    "rope-ntk": {**_SMALL, "pattern": "R", "rope_scaling": "ntk", "rope_factor": 4.0},
    "rope-yarn": {**_SMALL, "pattern": "R", "rope_scaling": "yarn", "rope_factor": 4.0},
    "rope-resonance": {**_SMALL, "pattern": "R", "rope_scaling": "resonance"},
    "rope-fope": {**_SMALL, "pattern": "R", "rope_scaling": "fope"},
    "p-rope": {**_SMALL, "pattern": "R", "rope_fraction": 0.75},
    # Llama 4 iRoPE: 3 RoPE chunked-local layers + 1 NoPE global layer with temperature tuning,
    # weightless L2 QK-norm on RoPE layers only
    "llama4-irope": {**_SMALL, "pattern": "CCCN", "nope_temperature": "llama4", "rope_qk_l2norm": True},
    # RNoPE-SWA with NoPE-layer temperature: Llama-4 formula / Scalable-Softmax (s·log n)
    "rnope-swa-temp": {**_SMALL, "pattern": "SSSN", "nope_temperature": "llama4"},
    "rnope-swa-ssmax": {**_SMALL, "pattern": "SSSN", "nope_temperature": "ssmax"},
    # SmolLM3: NoPE every 4th layer, all full attention, Llama block (sequential, RMSNorm, half RoPE)
    "smollm3": {**_SMALL, "pattern": "RRRN", "block": "sequential", "norm": "rmsnorm", "rope_layout": "half", "rope_theta": 5e6},
    # torchtitan-style debug model for tests
    "debug": dict(vocab_size=64, n_layer=4, d_model=32, n_head=4, n_kv_head=2, d_ff=64, max_seq_len=256, window=8, chunk_size=8),
}
