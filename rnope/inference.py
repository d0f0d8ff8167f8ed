"""Batched generation over the hybrid cache: prefill, decode one token, sample (gpt-fast style).

Prompts are left-padded into one batch; the first forward (prefill) fills the cache, then each
step decodes one token per row. Greedy at temperature 0.
"""

from __future__ import annotations

from numbers import Integral, Real
from typing import Callable, Sequence

import torch

from .model import Transformer

TokenCallback = Callable[[int, list[int | None]], None]


def check_sampling(
    max_new_tokens: int,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    *,
    flags: bool = False,
) -> None:
    """Raise ``ValueError`` (one line naming the argument and its value) unless ``max_new_tokens``
    is an integer >= 1, ``temperature`` a number >= 0 (0 = greedy), ``top_k`` None or an integer >= 1
    and ``top_p`` None or in (0, 1]. Nothing is clipped or read as a default.

    ``flags=True`` names the arguments as ``rnope generate`` spells them (``--top-k``), so the CLI
    and :func:`generate` refuse the same values with the same words.
    """

    def name(arg: str) -> str:
        return "--" + arg.replace("_", "-") if flags else arg

    def integer(arg: str, v) -> None:
        if isinstance(v, bool) or not isinstance(v, Integral):
            raise ValueError(f"{name(arg)} must be an integer, got {v!r}")

    integer("max_new_tokens", max_new_tokens)
    if max_new_tokens < 1:
        raise ValueError(f"{name('max_new_tokens')} must be >= 1, got {max_new_tokens}")
    if isinstance(temperature, bool) or not isinstance(temperature, Real):
        raise ValueError(f"{name('temperature')} must be a number, got {temperature!r}")
    if not temperature >= 0:  # also NaN
        raise ValueError(f"{name('temperature')} must be >= 0 (0 = greedy), got {float(temperature)}")
    if top_k is not None:
        integer("top_k", top_k)
        if top_k < 1:
            raise ValueError(f"{name('top_k')} must be >= 1, got {top_k}")
    if top_p is not None:
        if isinstance(top_p, bool) or not isinstance(top_p, Real):
            raise ValueError(f"{name('top_p')} must be a number, got {top_p!r}")
        if not 0 < top_p <= 1:  # also NaN
            raise ValueError(f"{name('top_p')} must be in (0, 1], got {top_p}")


def free_memory(device: torch.device) -> int | None:
    """Bytes that can still be allocated on ``device`` (None where that cannot be read)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    if device.type == "cpu":
        try:
            with open("/proc/meminfo", encoding="ascii") as f:
                for line in f:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024
        except (OSError, ValueError):
            return None
    return None


def check_cache_fits(model: Transformer, batch_size: int, length: int) -> None:
    """Raise ``ValueError`` when a KV cache for ``batch_size`` rows of ``length`` tokens cannot fit in
    the free memory of the model's device (sized on the ``meta`` device: nothing is allocated)."""
    device = model.embed_tokens.weight.device
    need = model.new_cache(batch_size, length, device="meta").nbytes
    free = free_memory(device)
    if free is not None and need > free:
        raise ValueError(f"a KV cache for {batch_size} row(s) of {length} tokens (prompt + max_new_tokens) needs "
                         f"{need / 2**30:.1f} GiB, more than the {free / 2**30:.1f} GiB free on {device.type}")


def sample(
    logits: torch.Tensor,
    *,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Next token ids (B,) from last-position logits (B, V); greedy at ``temperature`` 0.
    A negative (or NaN) temperature raises ``ValueError``: it is never read as greedy."""
    if not temperature >= 0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {float(temperature)}")
    if temperature == 0:
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

    Arguments are checked, never clipped or read as something else (:func:`check_sampling`):
    ``max_new_tokens`` >= 1, ``temperature`` >= 0 (0 = greedy; a negative one is an error, not
    greedy), ``top_k`` >= 1 and ``top_p`` in (0, 1]; a bad one raises ``ValueError`` naming it and
    its value. Every prompt id must lie in ``[0, vocab_size)``. There is no length limit to clip
    to: the decode cache is allocated for the longest prompt plus ``max_new_tokens``, and positions
    are not bounded by the model (past ``config.max_seq_len`` RoPE layers extrapolate).
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
    check_sampling(max_new_tokens, temperature, top_k, top_p)

    device = model.embed_tokens.weight.device
    generator = None
    if seed is not None:
        generator = torch.Generator(device=device).manual_seed(seed)
    stops = set(stop_ids or ())
    B = len(prompts)
    total = max(len(p) for p in prompts) + max_new_tokens
    check_cache_fits(model, B, total)
    cache = model.new_cache(B, total)
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
