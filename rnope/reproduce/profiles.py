"""Study profiles of ``rnope reproduce``: the models, their shared recipe, and what is measured.

Every model of a study gets the same data, tokenizer, size, token budget and stages (the
paper's controlled comparison, arXiv 2501.18795 §2). The stages (docs/study.md explains each
choice and what it was measured against):

1. ``near`` -- a retrieval curriculum: only short documents of the retrieval family
   (:func:`rnope.tasks.family.lookup_document`, ``lookup_near``): one needle, an answer prefix that
   ends with the words before the value, 0-2 filler sentences, one document per 64-token row. The
   copy circuit forms here; a NoPE model needs about 3,500 updates for it, RoPE models about 1,500,
   so the stage is sized for NoPE.
2. ``mix`` -- the built-in prose mixed with the whole retrieval family at the training length:
   short documents at growing distances (``lookup_far``), every wording and answer format
   (``lookup``: several keys, values or queries) and long items over noise, prose, word and
   distractor-needle haystacks (``lookup_long``).
3. ``long`` -- the paper's long-context stage: ``long_factor`` x longer sequences mixed 1:3 with
   short ones; the RoPE baselines raise theta as the paper did (10k -> 2M).

A profile may add conversions (:class:`Conversion`, ``rnope.reproduce.conversions``): a trained
model of the study converted to another layer pattern and trained on for ``convert_share`` of its
tokens, and models scored with an inference-time NoPE scale (``nope_scales``). Those rows are
evaluated exactly as the study's models are and reported in their own section.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ModelSpec:
    """One row of the study: a preset, model overrides, and overrides for the long stage only."""

    name: str
    preset: str
    model: dict = field(default_factory=dict)
    long_model: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Conversion:
    """A row made from a trained model of the study: ``parent`` converted (:func:`rnope.convert.convert`)
    to the pattern of preset ``to`` -- or, with ``drop_pe``, to NoPE everywhere (DroPE) -- then trained
    on (the ``adapt`` stage: the ``long`` stage's data, long sequences mixed 1:3 with short ones)."""

    name: str
    parent: str
    to: str | None = None
    drop_pe: bool = False


@dataclass(frozen=True)
class Profile:
    name: str
    # model size (shared by every row)
    d_model: int
    n_layer: int
    n_head: int
    n_kv_head: int
    d_ff: int
    window: int
    vocab_size: int  # BPE trained on the built-in prose training split
    init_std: float  # weight init (ModelConfig.init_std): larger than the default 0.02 (docs/study.md)
    # recipe (identical for every row)
    seq_len: int  # the training length: 1x of every evaluation
    batch_size: int
    lr: float  # peak learning rate of the near stage
    near_steps: int
    near_seq_len: int
    mix_steps: int
    mix_lr: float
    mix_synthetic_ratio: float
    long_steps: int
    long_factor: int  # long stage length = long_factor · seq_len
    long_lr: float
    long_synthetic_ratio: float
    mix_kinds: tuple[str, ...]  # synthetic kinds of the mix and long stages (a kind listed twice is drawn twice as often)
    # evaluation
    niah_factors: tuple[int, ...]
    niah_depths: tuple[float, ...]
    niah_samples: int  # per (length, depth): niah_samples · len(niah_depths) items per length and column
    niah_columns: tuple[str, ...]  # "WORDING/HAYSTACK": heldout/essay (the primary), passkey/noise, heldout/noise
    ruler_tasks: tuple[str, ...]
    ruler_factors: tuple[int, ...]
    ruler_samples: int
    ppl_factors: tuple[int, ...]
    analysis_factors: tuple[int, ...]
    analysis_samples: int
    seeds: int
    models: tuple[ModelSpec, ...]
    # conversions and inference-time NoPE scaling (rnope.reproduce.conversions); none by default
    conversions: tuple[Conversion, ...] = ()
    convert_share: float = 0.1  # a conversion trains on this share of its parent's tokens
    convert_lr: float = 2e-3
    nope_scales: tuple[tuple[str, str], ...] = ()  # (row, mode): row (a model or a conversion) scored with --nope-scale mode
    # the tokenizer's numbers: two-digit tokens, never merged with other text (Tokenizer.train_bpe digit_pairs). Values
    # are then copied in about half as many tokens, the same tokens wherever they stand (docs/study.md)
    digit_pairs: bool = True

    def hash(self) -> str:
        """Identity of a study: a directory holding another hash is a different study."""
        blob = json.dumps(dataclasses.asdict(self), sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def convert_steps(self) -> int:
        """Steps of a conversion's ``adapt`` stage, ``convert_share`` of the parent's tokens; the stage is shaped like
        ``long`` (every step holds ``long_factor`` x the tokens of a short step)."""
        step = self.batch_size * self.long_factor * self.seq_len
        return max(1, int(self.convert_share * self.tokens_per_model()) // step)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def primary(self) -> str:
        """The NIAH column every verdict reads: held-out wordings over prose."""
        return self.niah_columns[0]

    def tokens_per_model(self) -> int:
        """Training tokens of one model; every step of the long stage holds long_factor x the tokens
        of a short step (B long rows, or long_factor·B short ones)."""
        B = self.batch_size
        return (self.near_steps * B * self.near_seq_len + self.mix_steps * B * self.seq_len
                + self.long_steps * self.long_factor * B * self.seq_len)


#: the retrieval family in the mix and long stages; lookup_long twice: long items are half of them
MIX_KINDS = ("lookup_near", "lookup_far", "lookup", "lookup_long", "lookup_long", "lookup_long")
#: RULER's formats with training wordings (rnope.tasks: split "train"), added where they fit
RULER_TRAIN_KINDS = ("vt", "cwe", "fwe")

ROPE_LONG = {"rope": {"theta": 2_000_000.0}}  # the paper's RoPE baselines: theta 10k -> 2M for the long stage

PAPER_MODELS = (
    ModelSpec("rope", "rope", long_model=ROPE_LONG),
    ModelSpec("nope", "nope"),
    ModelSpec("qknorm", "qknorm", long_model=ROPE_LONG),
    ModelSpec("rnope", "rnope"),
    ModelSpec("rnope@theta=1000000", "rnope", model={"rope": {"theta": 1_000_000.0}}),
    ModelSpec("rnope-swa", "rnope-swa"),
    ModelSpec("swa", "swa"),
)
#: quick keeps the paper's core contrast: RoPE, NoPE, the hybrid, and sliding windows alone
CORE_MODELS = tuple(m for m in PAPER_MODELS if m.name in ("rope", "nope", "rnope-swa", "swa"))

RELATIVES = (
    ModelSpec("rope-abf", "rope-abf"),
    ModelSpec("rope-yarn", "rope", long_model={"rope": {"scaling": "yarn", "factor": 4.0}}),
    ModelSpec("llama4-irope", "llama4-irope"),
    ModelSpec("rnope-swa-temp", "rnope-swa-temp"),
)

#: the conversions a study can add: the RoPE model made RNoPE-SWA, and DroPE (every layer NoPE)
CONVERSIONS = (Conversion("rope-to-rnope-swa", "rope", to="rnope-swa"), Conversion("rope-drope", "rope", drop_pe=True))
#: every --nope-scale mode on the hybrid; the fitted scale on the converted hybrid (conversion plus log scaling, as
#: SWAN-GPT does) and on the DroPE row (DroPE's own inference-time scaling)
NOPE_SCALES = (("rnope-swa", "llama4"), ("rnope-swa", "log"), ("rnope-swa", "fitted"), ("rope-to-rnope-swa", "fitted"),
               ("rope-drope", "fitted"))

_NIAH_COLUMNS = ("heldout/essay", "passkey/noise", "heldout/noise")

PROFILES: dict[str, Profile] = {
    # four models x two seeds in about 15 minutes on a 2-core CPU: d_model 64, training length 128; NIAH to 16x, 4x past
    # the long stage (4x), where the paper read its length failures (its 256k against a 64k stage)
    "quick": Profile(
        name="quick", d_model=64, n_layer=4, n_head=4, n_kv_head=2, d_ff=192, window=64, vocab_size=1024,
        seq_len=128, batch_size=8, lr=1e-2, near_steps=3000, near_seq_len=64,
        mix_steps=1300, mix_lr=5e-3, mix_synthetic_ratio=0.75, init_std=0.05,
        long_steps=80, long_factor=4, long_lr=1e-3, long_synthetic_ratio=0.75, mix_kinds=MIX_KINDS,
        niah_factors=(1, 2, 4, 8, 16), niah_depths=(0.0, 25.0, 50.0, 75.0, 100.0), niah_samples=10,
        niah_columns=_NIAH_COLUMNS[:2],
        ruler_tasks=("niah_single_2", "niah_multikey_1", "vt"), ruler_factors=(4, 8), ruler_samples=50,
        ppl_factors=(1, 2, 4, 8), analysis_factors=(1, 8), analysis_samples=2, seeds=2,
        models=CORE_MODELS,
    ),
}

# quick's rope and rnope-swa (the same recipe, seeds and so the same models), then the conversions: rope made
# rnope-swa and rope made NoPE (DroPE), each trained on for 10 % of its parent's tokens, and rnope-swa / DroPE scored
# with every inference-time NoPE scale; NIAH to 32x, where the scales act
PROFILES["convert"] = dataclasses.replace(
    PROFILES["quick"], name="convert", models=tuple(m for m in CORE_MODELS if m.name in ("rope", "rnope-swa")),
    niah_factors=(1, 2, 4, 8, 16, 32), niah_columns=_NIAH_COLUMNS[:2], ppl_factors=(1, 4, 16, 32),
    conversions=CONVERSIONS, nope_scales=NOPE_SCALES,
)

# every paper model x three seeds, training length 256, the long stage at 2x (so 8x and 16x lie 4x and 8x past any
# trained position, as the paper's 256k lies 4x past its 64k stage), 1x-16x, nine RULER tasks: 160 min measured on a 2-core CPU.
# On a GPU it scales up and adds the relatives (GPU_FULL)
PROFILES["full"] = Profile(
    name="full", d_model=64, n_layer=4, n_head=4, n_kv_head=2, d_ff=192, window=64, vocab_size=1024,
    seq_len=256, batch_size=8, lr=1e-2, near_steps=4000, near_seq_len=64,
    mix_steps=4000, mix_lr=5e-3, mix_synthetic_ratio=0.75, init_std=0.05,
    long_steps=150, long_factor=2, long_lr=1e-3, long_synthetic_ratio=0.75, mix_kinds=MIX_KINDS + RULER_TRAIN_KINDS,
    niah_factors=(1, 2, 4, 8, 16), niah_depths=(0.0, 25.0, 50.0, 75.0, 100.0), niah_samples=10,
    niah_columns=_NIAH_COLUMNS[:2],
    ruler_tasks=("niah_single_1", "niah_single_2", "niah_multikey_1", "niah_multikey_2", "niah_multivalue",
                 "niah_multiquery", "vt", "cwe", "fwe"),
    ruler_factors=(1, 2, 4, 8), ruler_samples=25,  # 25 per task: 150-225 RULER items per length
    ppl_factors=(1, 2, 4, 8, 16), analysis_factors=(1, 4, 8), analysis_samples=2, seeds=3,
    models=PAPER_MODELS, digit_pairs=False,  # docs/study-full was measured with the plain BPE (docs/study.md)
)

# A minutes-free profile for the test suite: the whole pipeline on two tiny models.
PROFILES["smoke"] = Profile(
    name="smoke", d_model=32, n_layer=4, n_head=2, n_kv_head=1, d_ff=64, window=32, vocab_size=640,
    seq_len=256, batch_size=2, lr=3e-3, near_steps=2, near_seq_len=64, mix_steps=2, mix_lr=3e-3, init_std=0.02,
    mix_synthetic_ratio=0.5, long_steps=2, long_factor=2, long_lr=1e-3, long_synthetic_ratio=0.5, mix_kinds=MIX_KINDS,
    niah_factors=(1, 2), niah_depths=(50.0,), niah_samples=1, niah_columns=_NIAH_COLUMNS,
    # niah_multikey_1 does not fit 256 tokens: the study must skip that length, not crash after training
    ruler_tasks=("niah_single_1", "niah_multikey_1"), ruler_factors=(1, 2), ruler_samples=1,
    ppl_factors=(1, 2), analysis_factors=(1, 2), analysis_samples=1, seeds=1,
    models=(ModelSpec("rope", "rope", long_model=ROPE_LONG), ModelSpec("rnope-swa", "rnope-swa")),
    conversions=CONVERSIONS, nope_scales=(("rnope-swa", "fitted"), ("rope-drope", "log")),
)

# On a GPU the full profile scales its model and budget up (same shape of study) and adds the relatives.
GPU_FULL = dict(models=PAPER_MODELS + RELATIVES, d_model=512, n_layer=8, n_head=8, n_kv_head=2, d_ff=1536, window=256,
                vocab_size=4096, seq_len=1024, batch_size=32, lr=2e-3, near_steps=1500, near_seq_len=256,
                mix_steps=4000, mix_lr=1e-3, long_steps=800, long_lr=5e-4)


def get_profile(name: str, *, gpu: bool = False) -> Profile:
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r} (known: {', '.join(PROFILES)})")
    p = PROFILES[name]
    if gpu and name == "full":
        p = dataclasses.replace(p, **GPU_FULL)
    return p
