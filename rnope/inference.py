"""The one inference path: left padding, chunked prefill, decode, sampling, generation and scoring.

Everything that runs a model on text at inference time goes through these functions: ``rnope
generate`` and :func:`rnope.generate`, the evaluations (:mod:`rnope.evals.predictor`), the study
(:mod:`rnope.reproduce`), the lm-eval adapter and the benchmarks (:mod:`rnope.bench`).

* :func:`left_pad` — prompts of different lengths into one (B, T) batch and its mask.
* :func:`prefill` — the prompt through ``model(tokens, cache=...)`` into a :class:`HybridCache`,
  in chunks when a padded batch's attention scores would not fit (:func:`auto_chunk`); returns the
  last position's logits.
* decode — :class:`rnope.decode.Decoder`: one token per row over fixed-size cache buffers, the
  step optionally compiled (gpt-fast's recipe).
* :func:`generate` — prefill, then sample and decode until ``max_new_tokens`` or a stop token.
* :func:`score_tokens` — log-probabilities of given continuations, chunk by chunk
  (:func:`forward_chunks`), so only one chunk's ``chunk x vocab`` logits exist at once.
"""

from __future__ import annotations

from collections.abc import Iterator
from numbers import Integral, Real
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from .decode import Decoder, cache_length, check_decode_weights, record_decoded, should_compile
from .model import Transformer

__all__ = ["ATTN_BUDGET", "LOGIT_BUDGET", "Decoder", "auto_chunk", "check_cache_fits", "check_sampling",
           "forward_chunks", "free_memory", "generate", "left_pad", "prefill", "sample", "score_tokens"]

LOGIT_BUDGET = 256 * 2**20  # bytes of logits alive at once
ATTN_BUDGET = 512 * 2**20  # bytes of masked attention scores alive at once (chunked path)

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


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Left-pad token lists into ``(tokens (B, T), mask (B, T))``; mask is None when no row is padded."""
    T = max(len(p) for p in prompts)
    tokens = torch.full((len(prompts), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), T), dtype=torch.long)
    for i, p in enumerate(prompts):
        tokens[i, T - len(p) :] = torch.as_tensor(list(p), dtype=torch.long)
        mask[i, T - len(p) :] = 1
    padded = bool((mask == 0).any())
    return tokens.to(device), (mask.to(device) if padded else None)


def auto_chunk(model: Transformer, batch: int, length: int, padded: bool) -> int:
    """Chunk size for :func:`forward_chunks`: the whole input when it is unpadded and its logits
    fit :data:`LOGIT_BUDGET` (one pass on the fast kernels); otherwise the largest chunk whose
    logits and masked attention scores fit the budgets (at least 16)."""
    cfg = model.config
    c_logits = LOGIT_BUDGET // max(1, batch * cfg.vocab_size * 4)
    if not padded and length <= c_logits:
        return length
    c_attn = ATTN_BUDGET // max(1, batch * cfg.n_head * length * 4)
    return max(16, min(length, c_logits, c_attn))


def forward_chunks(
    model: Transformer, tokens: torch.Tensor, mask: torch.Tensor | None, cache, chunk_size: int, logits_to_keep: int = 0
) -> Iterator[tuple[int, int, torch.Tensor]]:
    """Run ``tokens`` (B, T) through ``model`` into ``cache`` chunk by chunk; yield ``(t0, t1,
    logits (B, t1-t0, V))`` per chunk (logits at position p predict token p+1; only the last
    ``logits_to_keep`` positions of each chunk when > 0). The first chunk holds at least one real
    token of every left-padded row."""
    B, T = tokens.shape
    first = chunk_size
    if mask is not None:
        first = max(first, int((mask == 0).sum(dim=1).max()) + 1)
    t0 = 0
    while t0 < T:
        t1 = min(T, t0 + (first if t0 == 0 else chunk_size))
        am = mask[:, :t1] if (t0 == 0 and mask is not None) else None
        logits = model(tokens[:, t0:t1], cache=cache, attention_mask=am, logits_to_keep=logits_to_keep)
        yield t0, t1, logits
        t0 = t1


def prefill(model: Transformer, prompts: Sequence[Sequence[int]], cache, pad_id: int = 0,
            chunk_size: int | None = None) -> torch.Tensor:
    """Left-pad ``prompts`` and run them through the model into ``cache`` (in chunks of
    ``chunk_size`` tokens, default :func:`auto_chunk`); the last position's logits (B, V)."""
    device = model.embed_tokens.weight.device
    tokens, mask = left_pad(prompts, pad_id, device)
    B, T = tokens.shape
    chunk = chunk_size or auto_chunk(model, B, T, mask is not None)
    logits = None
    for _, _, lg in forward_chunks(model, tokens, mask, cache, chunk, logits_to_keep=1):
        logits = lg
    return logits[:, -1]


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
    compile: bool | None = None,
    chunk_size: int | None = None,
    decode_weights: str | None = None,
) -> list[list[int]]:
    """Generate up to ``max_new_tokens`` per prompt; returns the new ids per prompt.

    A row stops after emitting any of ``stop_ids`` (the stop token is included). ``callback(step,
    tokens)`` is called after each step with the new token of every row (None for finished rows).
    Prompts are left-padded with ``pad_id`` into one batch and prefilled in chunks of ``chunk_size``
    tokens (default: :func:`auto_chunk`). Decode runs :class:`rnope.decode.Decoder` over fixed-size
    cache buffers. ``compile``: None (default) picks the faster path by itself
    (:func:`rnope.decode.should_compile`): eager until the step of this shape has decoded enough
    tokens in this process to repay a compile (one long generation, or many short ones), compiled
    from then on, the graph cached for the rest of the process; ``True`` compiles now (the first
    call pays the compile); ``False`` never compiles. A compiled step's cache is sized to
    :func:`rnope.decode.cache_length` so other prompt lengths reuse its graph. Compiling falls back
    to eager where it is not possible; greedy tokens are the same either way. ``decode_weights``
    ``"float16"`` / ``"bfloat16"`` lets the compiled one-row CPU step read its weights in that dtype
    (about half the bytes per token; logits within the weights' rounding, so greedy tokens may
    differ from fp32; :class:`rnope.decode.Decoder`); None keeps the model's.

    Arguments are checked, never clipped or read as something else (:func:`check_sampling`):
    ``max_new_tokens`` >= 1, ``temperature`` >= 0 (0 = greedy; a negative one is an error, not
    greedy), ``top_k`` >= 1 and ``top_p`` in (0, 1]; a bad one raises ``ValueError`` naming it and
    its value. Every prompt id must lie in ``[0, vocab_size)``. There is no length limit to clip
    to: the decode cache is allocated for the longest prompt plus ``max_new_tokens``, and positions
    are not bounded by the model (past ``config.max_seq_len`` RoPE layers extrapolate).
    """
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
    check_decode_weights(decode_weights)

    device = model.embed_tokens.weight.device
    generator = None
    if seed is not None:
        generator = torch.Generator(device=device).manual_seed(seed)
    stops = set(stop_ids or ())
    B = len(prompts)
    total = max(len(p) for p in prompts) + max_new_tokens
    bucket = cache_length(total)  # the step's shape class: a compiled step's cache length
    if compile is None:
        compile = should_compile(model, B, bucket, max_new_tokens)
    length = bucket if compile else total
    check_cache_fits(model, B, length)
    cache = model.new_cache(B, length)
    out: list[list[int]] = [[] for _ in range(B)]
    done = [False] * B
    logits = prefill(model, prompts, cache, pad_id, chunk_size)
    decode = Decoder(model, cache, compile=bool(compile), weights=decode_weights)
    steps = 0
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
        steps += 1
    if steps:
        record_decoded(model, B, bucket, steps, decode.compiled)
    return out


@torch.inference_mode()
def score_tokens(
    model: Transformer,
    rows: Sequence[Sequence[int]],
    n_score: Sequence[int],
    *,
    pad_id: int = 0,
    chunk_size: int | None = None,
) -> list[tuple[list[float], list[bool]]]:
    """Log-probabilities (float64 sums are safe) of the last ``n_score[i]`` tokens of each row,
    and whether each is the greedy (argmax) choice. Rows are left-padded into one batch; logits
    exist only for one chunk at a time and log-softmax only for the scored positions."""
    if len(rows) != len(n_score):
        raise ValueError("rows and n_score differ in length")
    for r, n in zip(rows, n_score):
        if not 1 <= n < len(r):
            raise ValueError(f"cannot score {n} tokens of a {len(r)}-token row (need 1 <= n < length)")
    device = model.embed_tokens.weight.device
    tokens, mask = left_pad(rows, pad_id, device)
    B, T = tokens.shape
    K = max(n_score)
    lo = T - K - 1  # first position whose logits are needed
    chunk = chunk_size or auto_chunk(model, B, T, mask is not None)
    cache = model.new_cache(B, T)
    lp = torch.zeros((B, K), dtype=torch.float64, device=device)
    greedy = torch.zeros((B, K), dtype=torch.bool, device=device)
    for t0, t1, logits in forward_chunks(model, tokens, mask, cache, chunk):
        a, b = max(t0, lo), min(t1, T - 1)
        if a >= b:
            continue
        lg = logits[:, a - t0 : b - t0].float()
        tgt = tokens[:, a + 1 : b + 1]
        logp = F.log_softmax(lg, dim=-1)
        lp[:, a - lo : b - lo] = logp.gather(-1, tgt[..., None]).squeeze(-1).double()
        greedy[:, a - lo : b - lo] = lg.argmax(dim=-1) == tgt
    out = []
    for i, n in enumerate(n_score):
        out.append((lp[i, K - n :].tolist(), greedy[i, K - n :].tolist()))
    return out
