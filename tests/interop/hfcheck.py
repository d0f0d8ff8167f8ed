"""Helpers the Hugging Face parity tests share: load an exported / built directory with transformers,
seeded prompts, transformers' greedy tokens, the worst logit gap over its attention backends."""

from __future__ import annotations

import torch


def hf_model(d, impl: str = "eager"):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(d, attn_implementation=impl, dtype=torch.float32).eval()


def prompt_ids(n: int, seed: int = 1, batch: int = 1, *, vocab: int) -> torch.Tensor:
    """Token ids in [3, vocab): no special token."""
    return torch.randint(3, vocab, (batch, n), generator=torch.Generator().manual_seed(seed))


def hf_greedy(hf, prompt: list[int], n: int) -> list[int]:
    """transformers' ``n`` greedy tokens after ``prompt`` (no early stop)."""
    from transformers import GenerationConfig

    cfg = GenerationConfig(max_new_tokens=n, do_sample=False, eos_token_id=None, pad_token_id=0)
    with torch.no_grad():
        return hf.generate(torch.tensor([prompt]), generation_config=cfg)[0, len(prompt):].tolist()


def max_logit_delta(d, x: torch.Tensor, ours: torch.Tensor, expect_class: str | None = None) -> float:
    """max |Δ logits| between ``ours`` and transformers on ``x``, over its eager and sdpa attention;
    with ``expect_class``, each loaded model must be of that class."""
    worst = 0.0
    for impl in ("eager", "sdpa"):
        hf = hf_model(d, impl)
        if expect_class is not None:
            assert type(hf).__name__ == expect_class
        worst = max(worst, (hf(x).logits - ours).abs().max().item())
    return worst


def leftovers(parent, name: str) -> list[str]:
    """Temporary directories an atomic write of ``name`` left in ``parent``."""
    return [p.name for p in parent.iterdir() if p.name.startswith(f".{name}.tmp")]
