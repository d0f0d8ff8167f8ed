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


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


TEMPERATURES = ("none", "llama4", "log", "ssmax")


@dataclass(frozen=True)
class RopeOptions:
    """How RoPE layers rotate q and k (``rnope.rope`` documents each method and its paper).

    ``ModelConfig.rope`` holds the model's options; each RoPE layer's ``LayerSpec.rope_options`` is
    the same with ``original_len`` resolved (0 = the model's ``max_seq_len``). Numbers are stored as
    floats. The flat names of older configs (``rope_theta``, ``rope_scaling``, ...) map here.
    """

    theta: float = 10_000.0  # base frequency θ (ABF: a larger θ)
    scaling: str = "none"  # extension method: none | linear | ntk | yarn | resonance | fope
    factor: float = 1.0  # s, the context-extension factor (linear, ntk, yarn)
    original_len: int = 0  # L, the pre-extension length (yarn, resonance, fope); 0 = max_seq_len
    fope_sigma: float = 0.1  # σ of FoPE's fixed mixing matrix
    fraction: float = 1.0  # p-RoPE: the fraction of (highest-frequency) pairs rotated
    qk_l2norm: bool = False  # Llama 4: weightless L2 norm of q and k after the rotation

    def __post_init__(self) -> None:
        if not _is_num(self.theta) or not self.theta > 0:
            raise ValueError(f"rope_theta must be a positive number, got {self.theta!r}")
        if self.scaling not in SCALINGS:
            raise ValueError(f"rope_scaling must be one of {', '.join(SCALINGS)}, got {self.scaling!r}")
        if not _is_num(self.factor) or not self.factor >= 1.0:
            raise ValueError(f"rope_factor must be >= 1, got {self.factor!r}")
        if not _is_int(self.original_len) or self.original_len < 0:
            raise ValueError(f"rope_original_len must be an integer >= 0, got {self.original_len!r}")
        if not _is_num(self.fope_sigma) or self.fope_sigma < 0:
            raise ValueError(f"rope_fope_sigma must be a number >= 0, got {self.fope_sigma!r}")
        if not _is_num(self.fraction) or not 0.0 < self.fraction <= 1.0:
            raise ValueError(f"rope_fraction must be in (0, 1], got {self.fraction!r}")
        if not isinstance(self.qk_l2norm, bool):
            raise ValueError(f"rope_qk_l2norm must be true or false, got {self.qk_l2norm!r}")
        for name in ("theta", "factor", "fope_sigma", "fraction"):
            object.__setattr__(self, name, float(getattr(self, name)))


@dataclass(frozen=True)
class NopeOptions:
    """The query scale β(p) of NoPE layers (``rnope.nope_scale``).

    ``temperature``: "none"; "llama4" 1 + scale·ln(floor((p+1)/floor) + 1); "log"
    1 + scale·ln(max(1, (p+1)/floor)) with floor = the training length; "ssmax" a learned
    Scalable-Softmax scale per head (``scale`` / ``floor`` unused). The flat names of older configs
    (``nope_temperature``, ``attn_temp_scale``, ``attn_temp_floor``) map here.
    """

    temperature: str = "none"
    scale: float = 0.1  # the coefficient: Llama 4's 0.1, log's c
    floor: int = 8192  # the position scale: Llama 4's floor 8192, log's training length

    def __post_init__(self) -> None:
        if self.temperature not in TEMPERATURES:
            raise ValueError(f"nope_temperature must be one of {', '.join(TEMPERATURES)}, got {self.temperature!r}")
        if not _is_num(self.scale) or self.scale < 0:
            raise ValueError(f"attn_temp_scale must be a number >= 0, got {self.scale!r}")
        if not _is_int(self.floor) or self.floor < 1:
            raise ValueError(f"attn_temp_floor must be an integer >= 1, got {self.floor!r}")
        object.__setattr__(self, "scale", float(self.scale))


# the option groups of ModelConfig, and the flat names older configs use for their fields
OPTION_GROUPS: dict[str, type] = {"rope": RopeOptions, "nope": NopeOptions}
FLAT_OPTIONS: dict[str, tuple[str, str]] = {
    "rope_theta": ("rope", "theta"),
    "rope_scaling": ("rope", "scaling"),
    "rope_factor": ("rope", "factor"),
    "rope_original_len": ("rope", "original_len"),
    "rope_fope_sigma": ("rope", "fope_sigma"),
    "rope_fraction": ("rope", "fraction"),
    "rope_qk_l2norm": ("rope", "qk_l2norm"),
    "nope_temperature": ("nope", "temperature"),
    "attn_temp_scale": ("nope", "scale"),
    "attn_temp_floor": ("nope", "floor"),
}


@dataclass(frozen=True)
class LayerSpec:
    """What one attention layer does. ``window``/``chunk`` are set only for that span.

    A RoPE layer carries ``rope_options`` (``original_len`` resolved), a NoPE layer
    ``nope_options``; the other is None. Left out, the defaults of its kind are filled in.
    """

    rope: bool
    span: Span
    window: int | None = None
    chunk: int | None = None
    qk_norm: bool = False
    rope_options: RopeOptions | None = None
    nope_options: NopeOptions | None = None

    def __post_init__(self) -> None:
        if self.rope and self.nope_options is not None or not self.rope and self.rope_options is not None:
            raise ValueError("a RoPE layer takes rope_options only and a NoPE layer nope_options only")
        if self.rope and self.rope_options is None:
            object.__setattr__(self, "rope_options", RopeOptions())
        if not self.rope and self.nope_options is None:
            object.__setattr__(self, "nope_options", NopeOptions())

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
    # positional-scheme options: RoPE theta and extensions (RoPE layers), query temperature (NoPE layers)
    rope: RopeOptions = RopeOptions()
    nope: NopeOptions = NopeOptions()
    layers: tuple[LayerSpec, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name, cls in OPTION_GROUPS.items():  # a mapping of options is accepted for the object
            v = getattr(self, name)
            if not isinstance(v, cls):
                object.__setattr__(self, name, cls(**_options(name, v)))
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
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        if not isinstance(self.qkv_bias, bool):
            raise ValueError(f"qkv_bias must be true or false, got {self.qkv_bias!r}")
        if self.rope.scaling == "ntk" and self.head_dim <= 2:
            raise ValueError(f"rope_scaling 'ntk' needs head_dim > 2, got {self.head_dim}")
        for name in ("logit_scale", "norm_eps", "init_std"):
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
        rope = dataclasses.replace(self.rope, original_len=self.rope.original_len or self.max_seq_len)
        specs = []
        for i in range(self.n_layer):
            uses_rope, span, qk = PATTERN_LETTERS[self.pattern[i % len(self.pattern)]]
            specs.append(
                LayerSpec(
                    rope=uses_rope,
                    span=span,
                    window=self.window if span == "sliding" else None,
                    chunk=self.chunk_size if span == "chunked" else None,
                    qk_norm=qk,
                    rope_options=rope if uses_rope else None,
                    nope_options=None if uses_rope else self.nope,
                )
            )
        return tuple(specs)

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
        qk += sum(self.n_head for s in self.layers if not s.rope and s.nope_options.temperature == "ssmax")  # SSMax s per head
        emb = self.vocab_size * d * (1 if self.tie_embeddings else 2)
        return emb + self.n_layer * per_layer + qk + d

    # ---- (de)serialisation ----------------------------------------------------------------
    # Mappings of fields (config.json, presets, overrides) name the options nested, {"rope": {"factor": 4}},
    # or by their flat names of older configs, {"rope_factor": 4}; see merge_overrides.
    def to_dict(self) -> dict[str, Any]:
        """Every init field; the option groups as nested dicts (``"rope": {...}, "nope": {...}``)."""
        out = {}
        for f in dataclasses.fields(self):
            if f.init:
                v = getattr(self, f.name)
                out[f.name] = {g.name: getattr(v, g.name) for g in dataclasses.fields(v)} if f.name in OPTION_GROUPS else v
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        """The config of a mapping of fields, nested or flat option names (see :func:`merge_overrides`);
        a group's options left out keep their defaults."""
        return cls(**merge_overrides(d))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def replace(self, **overrides: Any) -> "ModelConfig":
        """This config with ``overrides`` (fields; options nested, as a partial mapping or a whole
        options object, or by flat name)."""
        return ModelConfig.from_dict(merge_overrides(self.to_dict(), overrides))

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> "ModelConfig":
        """A preset from ``PRESETS`` with keyword overrides (any init field, or an option by nested or flat name)."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r} (known: {', '.join(sorted(PRESETS))})")
        return cls.from_dict(merge_overrides(PRESETS[name], overrides))


def _options(group: str, value: Any) -> dict[str, Any]:
    """``{option: value}`` of one group given as its options object or a (partial) mapping."""
    cls = OPTION_GROUPS[group]
    if isinstance(value, cls):
        return {f.name: getattr(value, f.name) for f in dataclasses.fields(cls)}
    if not isinstance(value, dict):
        raise ValueError(f"{group} must be a mapping of {cls.__name__} fields, got {type(value).__name__}")
    known = [f.name for f in dataclasses.fields(cls)]
    for k in value:
        if k not in known:
            raise ValueError(
                f"unknown model config key '{group}.{k}' (known: {', '.join(sorted(f'{group}.{n}' for n in known))})"
            )
    return dict(value)


def _split(d: dict[str, Any]) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """(plain fields, {group: {option: value}}) of one mapping; a flat name and its nested twin must agree."""
    if not isinstance(d, dict):
        raise ValueError(f"a model config must be a mapping, got {type(d).__name__}")
    known = {f.name for f in dataclasses.fields(ModelConfig) if f.init}
    plain: dict[str, Any] = {}
    groups: dict[str, dict[str, Any]] = {g: {} for g in OPTION_GROUPS}
    flat: list[tuple[str, Any]] = []
    for k, v in d.items():
        if k in FLAT_OPTIONS:
            flat.append((k, v))
        elif k in OPTION_GROUPS:
            groups[k].update(_options(k, v))
        elif k in known:
            plain[k] = v
        else:
            raise ValueError(f"unknown model config key {k!r} (known: {', '.join(sorted(known))})")
    for k, v in flat:
        g, name = FLAT_OPTIONS[k]
        if name in groups[g] and groups[g][name] != v:
            raise ValueError(
                f"{k}={v!r} and {g}.{name}={groups[g][name]!r} name the same option with different values; give one of them"
            )
        groups[g][name] = v
    return plain, groups


def merge_overrides(*layers: dict[str, Any]) -> dict[str, Any]:
    """Merge mappings of ModelConfig fields, later ones winning, into one canonical mapping.

    Options may be given nested (``{"rope": {"factor": 4.0}}``: a partial mapping merges option by
    option, an options object replaces the whole group) or by the flat names of older configs
    (``{"rope_factor": 4.0}``, see :data:`FLAT_OPTIONS`). Within one mapping a flat name and its
    nested twin with different values are a ``ValueError`` naming both; an unknown key is a
    ``ValueError`` too. The result holds plain fields and, for each group given, a nested dict.
    """
    plain: dict[str, Any] = {}
    groups: dict[str, dict[str, Any]] = {g: {} for g in OPTION_GROUPS}
    for d in layers:
        p, gs = _split(d)
        plain.update(p)
        for g, opts in gs.items():
            groups[g].update(opts)
    return {**plain, **{g: opts for g, opts in groups.items() if opts}}


# Small default size for CPU experiments (≈1M parameters with the byte-level vocabulary).
_SMALL = dict(vocab_size=259, n_layer=4, d_model=128, n_head=4, n_kv_head=2, d_ff=384, max_seq_len=2048, window=128)

PRESETS: dict[str, dict[str, Any]] = {
    # the paper: 3 RoPE sliding-window layers + 1 NoPE global layer per block, theta 10k, GQA
    "rnope-swa": {**_SMALL, "pattern": "SSSN", "rope": {"theta": 10_000.0}},
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
        rope={"theta": 50_000.0},
        logit_scale=0.25,
        tie_embeddings=True,
    ),
    # ---- positional-scheme relatives (rnope.rope cites each method) ----
    # ABF: a larger base frequency (Xiong et al. 2023)
    "rope-abf": {**_SMALL, "pattern": "R", "rope": {"theta": 500_000.0}},
    # extension methods, as applied when moving to 4x the original context
    "rope-pi": {**_SMALL, "pattern": "R", "rope": {"scaling": "linear", "factor": 4.0}},
    "rope-ntk": {**_SMALL, "pattern": "R", "rope": {"scaling": "ntk", "factor": 4.0}},
    "rope-yarn": {**_SMALL, "pattern": "R", "rope": {"scaling": "yarn", "factor": 4.0}},
    "rope-resonance": {**_SMALL, "pattern": "R", "rope": {"scaling": "resonance"}},
    "rope-fope": {**_SMALL, "pattern": "R", "rope": {"scaling": "fope"}},
    "p-rope": {**_SMALL, "pattern": "R", "rope": {"fraction": 0.75}},
    # Llama 4 iRoPE: 3 RoPE chunked-local layers + 1 NoPE global layer with temperature tuning,
    # weightless L2 QK-norm on RoPE layers only
    "llama4-irope": {**_SMALL, "pattern": "CCCN", "rope": {"qk_l2norm": True}, "nope": {"temperature": "llama4"}},
    # RNoPE-SWA with NoPE-layer temperature: Llama-4 formula / Scalable-Softmax (s·log n)
    "rnope-swa-temp": {**_SMALL, "pattern": "SSSN", "nope": {"temperature": "llama4"}},
    "rnope-swa-ssmax": {**_SMALL, "pattern": "SSSN", "nope": {"temperature": "ssmax"}},
    # SmolLM3: NoPE every 4th layer, all full attention, Llama block (sequential, RMSNorm, half RoPE)
    "smollm3": {**_SMALL, "pattern": "RRRN", "block": "sequential", "norm": "rmsnorm", "rope_layout": "half", "rope": {"theta": 5e6}},
    # torchtitan-style debug model for tests
    "debug": dict(vocab_size=64, n_layer=4, d_model=32, n_head=4, n_kv_head=2, d_ff=64, max_seq_len=256, window=8, chunk_size=8),
}
