"""Study profiles of ``rnope reproduce``: the models, their shared recipe, and what is measured.

Every model of a study gets the same data, tokenizer, size, token budget and stages (the
paper's controlled comparison, arXiv 2501.18795 §2):

1. ``near`` — a retrieval curriculum, first step: dense short question/answer documents
   (:func:`rnope.tasks.recall_document`, ``recall_near``: the value stated 0–2 filler sentences
   before its question, many documents per sequence). Tiny models trained on text + sparse
   long passkey documents learn no retrieval at all; at short distances they learn to copy the
   value within a few hundred steps (the reproduce issue's notes, measured while building this).
2. ``far`` — the same documents with up to 40 filler sentences: the copy now has to reach
   across the window, i.e. through the global layers. Their key phrases also draw words from the
   training prose, so that the model matches the question's key, not a memorised kind word
   (:func:`rnope.tasks.train_mix.key_words`).
3. ``pretrain`` — the built-in corpus mixed with recall and train-template passkey documents.
4. ``long`` — the paper's long-context stage: 4x longer sequences mixed 1:3 with short ones; the
   RoPE baselines raise theta as the paper did (10k -> 2M); a RoPE-extension row applies its
   method here instead.
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
    # recipe
    seq_len: int
    batch_size: int
    lr: float
    near_steps: int  # recall_near curriculum stage
    far_steps: int  # recall (long-distance) curriculum stage
    curriculum_seq_len: int  # sequence length of the near/far stages (recall documents are short)
    pretrain_steps: int
    long_steps: int
    long_factor: int  # long stage length = long_factor · seq_len
    synthetic_ratio: float
    long_synthetic_ratio: float
    # evaluation
    niah_factors: tuple[int, ...]
    niah_depths: tuple[float, ...]
    niah_samples: int
    ruler_tasks: tuple[str, ...]
    ruler_factors: tuple[int, ...]
    ruler_samples: int
    ppl_factors: tuple[int, ...]
    analysis_factors: tuple[int, ...]
    analysis_samples: int
    seeds: int
    models: tuple[ModelSpec, ...]

    def hash(self) -> str:
        """Identity of a study: a directory holding another hash is a different study."""
        blob = json.dumps(dataclasses.asdict(self), sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def tokens_per_model(self) -> int:
        """Training tokens of one model; every step of the long stage holds long_factor x the tokens
        of a short step (B long rows, or long_factor·B short ones)."""
        B = self.batch_size
        return ((self.near_steps + self.far_steps) * B * self.curriculum_seq_len + self.pretrain_steps * B * self.seq_len
                + self.long_steps * self.long_factor * B * self.seq_len)


#: synthetic kinds of the pre-training and long stages (the curriculum stages set their own)
PRETRAIN_KINDS = ("recall", "passkey")

ROPE_LONG = {"rope_theta": 2_000_000.0}  # the paper's RoPE baselines: theta 10k -> 2M for the long stage

PAPER_MODELS = (
    ModelSpec("rope", "rope", long_model=ROPE_LONG),
    ModelSpec("nope", "nope"),
    ModelSpec("qknorm", "qknorm", long_model=ROPE_LONG),
    ModelSpec("rnope", "rnope"),
    ModelSpec("rnope@theta=1000000", "rnope", model={"rope_theta": 1_000_000.0}),
    ModelSpec("rnope-swa", "rnope-swa"),
    ModelSpec("swa", "swa"),
)

RELATIVES = (
    ModelSpec("rope-abf", "rope-abf"),
    ModelSpec("rope-yarn", "rope", long_model={"rope_scaling": "yarn", "rope_factor": 4.0}),
    ModelSpec("llama4-irope", "llama4-irope"),
    ModelSpec("rnope-swa-temp", "rnope-swa-temp"),
)

PROFILES: dict[str, Profile] = {
    # one seed, 1x-8x the training length, in ~15 minutes on a 2-core CPU: the recipe cut to the bone
    # (d_model 64, the curriculum at 128 tokens, ~3.5 CPU-minutes per model, 2 at a time). Batch 8
    # with twice the steps: at this budget the number of updates decides whether retrieval emerges
    # (batch 16 made it a coin toss; docs/retrieval.md). `standard` is the smallest profile measured
    # to carry retrieval over to the unseen evaluation template
    "quick": Profile(
        name="quick", d_model=64, n_layer=4, n_head=4, n_kv_head=2, d_ff=192, window=64, vocab_size=1024,
        seq_len=256, batch_size=8, lr=3e-3, near_steps=800, far_steps=1000, curriculum_seq_len=128, pretrain_steps=500,
        long_steps=40, long_factor=4, synthetic_ratio=0.5, long_synthetic_ratio=0.5,
        niah_factors=(1, 2, 4, 8), niah_depths=(0.0, 25.0, 50.0, 75.0, 100.0), niah_samples=2,
        ruler_tasks=("niah_single_1", "niah_multikey_2", "vt"), ruler_factors=(2, 4), ruler_samples=2,
        ppl_factors=(1, 2, 4, 8), analysis_factors=(1, 4), analysis_samples=2, seeds=1,
        models=PAPER_MODELS,
    ),
    # one seed, the recipe measured to teach retrieval (configs/retrieval.yaml's): 11-13 CPU-minutes per
    # model, 45.5 min for the study on a 2-core CPU (docs/study-standard: at 8x rnope-swa 0.83, rope 0.33)
    "standard": Profile(
        name="standard", d_model=128, n_layer=4, n_head=4, n_kv_head=2, d_ff=384, window=64, vocab_size=1024,
        seq_len=256, batch_size=16, lr=2e-3, near_steps=400, far_steps=500, curriculum_seq_len=256, pretrain_steps=400,
        long_steps=40, long_factor=4, synthetic_ratio=0.5, long_synthetic_ratio=0.5,
        niah_factors=(1, 2, 4, 8), niah_depths=(0.0, 50.0, 100.0), niah_samples=2,
        ruler_tasks=("niah_single_1", "niah_multikey_2", "vt"), ruler_factors=(2, 4), ruler_samples=2,
        ppl_factors=(1, 2, 4, 8), analysis_factors=(1, 4), analysis_samples=1, seeds=1,
        models=PAPER_MODELS,
    ),
}

# three seeds of `standard`'s recipe, 1x-16x, mean +- spread: 158.6 min measured on a 2-core CPU
# (docs/study-full; 282 training-minutes, 2 at a time). On a GPU it scales up and adds the relatives (GPU_FULL)
PROFILES["full"] = dataclasses.replace(
    PROFILES["standard"], name="full", seeds=3,
    niah_factors=(1, 2, 4, 8, 16), niah_depths=(0.0, 25.0, 50.0, 75.0, 100.0), niah_samples=4,
    ruler_tasks=("niah_single_1", "niah_single_2", "niah_multikey_1", "niah_multikey_2", "niah_multivalue",
                 "niah_multiquery", "vt", "cwe", "fwe"),
    ruler_factors=(1, 2, 4, 8), ruler_samples=4,
    ppl_factors=(1, 2, 4, 8, 16), analysis_factors=(1, 4, 8), analysis_samples=2,
)

# A minutes-free profile for the test suite: the whole pipeline on two tiny models.
PROFILES["smoke"] = Profile(
    name="smoke", d_model=32, n_layer=4, n_head=2, n_kv_head=1, d_ff=64, window=32, vocab_size=512,
    seq_len=256, batch_size=2, lr=3e-3, near_steps=1, far_steps=1, curriculum_seq_len=128, pretrain_steps=2, long_steps=2, long_factor=2,
    synthetic_ratio=0.5, long_synthetic_ratio=0.5,
    niah_factors=(1, 2), niah_depths=(50.0,), niah_samples=1,
    # niah_multikey_1 does not fit 256 tokens: the study must skip that length, not crash after training
    ruler_tasks=("niah_single_1", "niah_multikey_1"), ruler_factors=(1, 2), ruler_samples=1,
    ppl_factors=(1, 2), analysis_factors=(1, 2), analysis_samples=1, seeds=1,
    models=(ModelSpec("rope", "rope", long_model=ROPE_LONG), ModelSpec("rnope-swa", "rnope-swa")),
)

# On a GPU the full profile scales its model and budget up (same shape of study) and adds the relatives.
GPU_FULL = dict(models=PAPER_MODELS + RELATIVES, d_model=512, n_layer=8, n_head=8, n_kv_head=2, d_ff=1536, window=256, vocab_size=4096, seq_len=1024,
                batch_size=32, lr=2e-3, near_steps=600, far_steps=900, curriculum_seq_len=512, pretrain_steps=4000,
                long_steps=800)


def get_profile(name: str, *, gpu: bool = False) -> Profile:
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r} (known: {', '.join(PROFILES)})")
    p = PROFILES[name]
    if gpu and name == "full":
        p = dataclasses.replace(p, **GPU_FULL)
    return p
