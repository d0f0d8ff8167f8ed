"""The harness shared by the parts of ``rnope bench`` (:mod:`rnope.bench`): the benchmark shape, the machine
record, interleaved timing rounds, and the rnope models with their transformers twins (same weights)."""

from __future__ import annotations

import statistics
import sys
import time
from typing import Callable

import torch

from .outputs import machine

SHAPE = dict(vocab_size=4096, n_layer=8, d_model=256, n_head=4, n_kv_head=2, d_ff=768, window=128)
PRESETS = ("rnope-swa", "rope")
HF_CLASS = {"rnope-swa": "Cohere2ForCausalLM", "rope": "CohereForCausalLM"}


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------- machine
def machine_info() -> dict:
    """The ``machine`` record of ``bench.json`` (:func:`rnope.outputs.machine` ``"bench"``)."""
    return machine("bench")


def matmul_peak(n: int = 2048, reps: int = 3) -> float:
    """Best fp32 ``torch.mm`` FLOP/s of ``reps`` n³ products (the MFU denominator)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def interleaved(fns: dict[str, Callable[[], float | None]], rounds: int, between: Callable[[], None] | None = None) -> dict[str, list[float]]:
    """Call every fn once per round, in turn; each returns its own seconds (None: time the call)."""
    out: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            t = time.perf_counter()
            r = fn()
            out[k].append(r if isinstance(r, float) else time.perf_counter() - t)
        if between is not None:
            between()
    return out


def med(xs: list[float]) -> float:
    return statistics.median(xs)


# ---------------------------------------------------------------------------------------------- models
def config(preset: str, max_seq_len: int = 512, **overrides):
    from rnope import ModelConfig

    return ModelConfig.from_preset(preset, **{**SHAPE, "max_seq_len": max_seq_len, **overrides})


def rnope_model(preset: str, max_seq_len: int, seed: int = 0):
    from rnope import Transformer

    torch.manual_seed(seed)
    return Transformer(config(preset, max_seq_len))


def hf_twin(model, attn: str = "sdpa"):
    """The transformers model ``rnope export`` maps ``model`` to, with the same weights (None if
    transformers is missing)."""
    try:
        from transformers import AutoConfig, AutoModelForCausalLM
    except ImportError:
        return None
    from rnope.interop.hf import hf_key
    from rnope.interop.hf_config import to_hf_config

    d = to_hf_config(model.config)
    model_type = d.pop("model_type")
    d = {k: v for k, v in d.items() if k not in ("rnope", "architectures", "dtype")}
    hc = AutoConfig.for_model(model_type, **d)
    hf = AutoModelForCausalLM.from_config(hc, attn_implementation=attn, dtype=torch.float32)
    res = hf.load_state_dict({hf_key(k): v for k, v in model.state_dict().items()}, strict=False)
    extra = [k for k in res.missing_keys if not (k == "lm_head.weight" and model.config.tie_embeddings)]
    if extra or res.unexpected_keys:
        raise RuntimeError(f"weight mapping to transformers failed: missing {extra}, unexpected {res.unexpected_keys}")
    if model.config.tie_embeddings:
        hf.tie_weights()
    return hf
