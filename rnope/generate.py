"""Batched generation over the hybrid cache: prefill, decode one token, sample (gpt-fast style).

Prompts are left-padded into one batch; the first forward (prefill) fills the cache, then each
step decodes one token per row. Greedy at temperature 0.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from .model import Transformer

TokenCallback = Callable[[int, list[int | None]], None]


def sample(
    logits: torch.Tensor,
    *,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Next token ids (B,) from last-position logits (B, V)."""
    if temperature <= 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = logits.softmax(dim=-1)
    if top_p is not None and top_p < 1.0:
        sorted_p, idx = probs.sort(dim=-1, descending=True)
        drop = sorted_p.cumsum(dim=-1) - sorted_p > top_p  # keep the smallest prefix reaching top_p
        sorted_p = sorted_p.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, idx, sorted_p)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def prefill(model: Transformer, prompts: Sequence[Sequence[int]], cache, pad_id: int = 0) -> torch.Tensor:
    """Left-pad ``prompts``, run them through the model into ``cache``; last-position logits (B, V)."""
    device = model.embed_tokens.weight.device
    T = max(len(p) for p in prompts)
    tokens = torch.full((len(prompts), T), pad_id, dtype=torch.long, device=device)
    mask = torch.zeros((len(prompts), T), dtype=torch.long, device=device)
    for i, p in enumerate(prompts):
        tokens[i, T - len(p) :] = torch.as_tensor(list(p), dtype=torch.long)
        mask[i, T - len(p) :] = 1
    return model(tokens, cache=cache, attention_mask=mask, logits_to_keep=1)[:, -1]


def decode_one_token(model: Transformer, token: torch.Tensor, cache) -> torch.Tensor:
    """One decode step: token (B,) -> logits (B, V)."""
    return model(token[:, None], cache=cache)[:, -1]


@torch.inference_mode()
def generate(
    model: Transformer,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    stop_ids: Sequence[int] | None = None,
    *,
    pad_id: int = 0,
    callback: TokenCallback | None = None,
    compile: bool = False,
) -> list[list[int]]:
    """Generate up to ``max_new_tokens`` per prompt; returns the new ids per prompt.

    A row stops after emitting any of ``stop_ids`` (the stop token is included). ``callback(step,
    tokens)`` is called after each step with the new token of every row (None for finished rows).
    Decode runs :class:`rnope.fast.Decoder` over fixed-size cache buffers; ``compile=True`` compiles
    its step with ``torch.compile`` (worth it for long generations: the first call compiles; it
    falls back to eager where compiling is not possible).
    """
    from .fast import Decoder

    vocab = model.config.vocab_size
    if isinstance(prompts, torch.Tensor):
        prompts = prompts.tolist()
    if len(prompts) == 0:
        raise ValueError("prompts is empty: give at least one prompt")
    for i, p in enumerate(prompts):
        if isinstance(p, str):
            raise ValueError(f"prompt {i} is a string; encode it with the tokenizer first")
        if len(p) == 0:
            raise ValueError(f"prompt {i} is empty: every prompt needs at least one token")
        bad = [t for t in p if not 0 <= int(t) < vocab]
        if bad:
            raise ValueError(f"prompt {i} has token id {bad[0]} outside the vocabulary [0, {vocab})")
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if max_new_tokens == 0:
        return [[] for _ in prompts]

    device = model.embed_tokens.weight.device
    generator = None
    if seed is not None:
        generator = torch.Generator(device=device).manual_seed(seed)
    stops = set(stop_ids or ())
    B = len(prompts)
    cache = model.new_cache(B, max(len(p) for p in prompts) + max_new_tokens)
    out: list[list[int]] = [[] for _ in range(B)]
    done = [False] * B
    logits = prefill(model, prompts, cache, pad_id)
    decode = Decoder(model, cache, compile=compile)
    for step in range(max_new_tokens):
        nxt = sample(logits, temperature=temperature, top_k=top_k, top_p=top_p, generator=generator)
        ids = nxt.tolist()
        emitted: list[int | None] = []
        for i, t in enumerate(ids):
            if done[i]:
                emitted.append(None)
                continue
            out[i].append(t)
            emitted.append(t)
            if t in stops:
                done[i] = True
        if callback is not None:
            callback(step, emitted)
        if all(done) or step == max_new_tokens - 1:
            break
        logits = decode(nxt)
    return out
