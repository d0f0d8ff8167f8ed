"""Property tests (hypothesis, bounded): cached decode == uncached forward on random small models and
padded batches; synthetic NIAH / RULER items always hold their needles inside the requested length.

The tokenizer round-trip property (any Unicode string, byte-level and a small BPE) lives in
tests/test_tokenizer.py (``test_round_trip_property_*``) and is not repeated here.
"""

from __future__ import annotations

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rnope import ModelConfig, Transformer
from rnope.tasks import TASKS, get_task
from rnope.tokenizer import Tokenizer

TOL = 1e-4
LETTERS = "SRQNCW"


@st.composite
def model_cases(draw):
    """A random small config, a left-padded batch of prompts and a number of decode steps."""
    n_kv = draw(st.sampled_from([1, 2]))
    n_head = n_kv * draw(st.sampled_from([1, 2, 3]))
    head_dim = draw(st.sampled_from([4, 8]))  # even; head_dim 2 with one head (d_model 2) makes LayerNorm ill-conditioned
    cfg = dict(
        vocab_size=draw(st.integers(8, 40)),
        n_layer=draw(st.integers(1, 4)),
        n_head=n_head,
        n_kv_head=n_kv,
        d_model=n_head * head_dim,
        d_ff=draw(st.sampled_from([8, 16, 32])),
        max_seq_len=64,
        pattern=draw(st.text(alphabet=LETTERS, min_size=1, max_size=4)),
        window=draw(st.integers(1, 12)),
        chunk_size=draw(st.integers(1, 12)),
        tie_embeddings=draw(st.booleans()),
    )
    lens = draw(st.lists(st.integers(1, 20), min_size=1, max_size=3))
    steps = draw(st.integers(1, 8))
    seed = draw(st.integers(0, 2**16))
    return cfg, lens, steps, seed


def _model(cfg: dict, seed: int) -> Transformer:
    torch.manual_seed(seed)
    model = Transformer(ModelConfig(**cfg)).eval()
    with torch.no_grad():  # larger than the init, so attention is sharp and mistakes show
        for name, p in model.named_parameters():
            if "norm" in name:
                p.normal_(1.0, 0.2)
            else:
                p.normal_(0, 1.0 if "embed" in name else 0.3)
    return model


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(model_cases())
@torch.no_grad()
def test_cached_padded_decode_equals_unpadded_forward(case):
    """Prefill a left-padded batch into the cache, decode ``steps`` tokens one at a time; every real
    position of every row equals the row's own unpadded, uncached forward (and so does the padded
    uncached forward with ``attention_mask``)."""
    cfg, lens, steps, seed = case
    model = _model(cfg, seed)
    g = torch.Generator().manual_seed(seed)
    V = cfg["vocab_size"]
    rows = [torch.randint(0, V, (n + steps,), generator=g) for n in lens]  # prompt + the tokens to decode
    B, P = len(rows), max(lens)
    T = P + steps
    tokens = torch.zeros(B, T, dtype=torch.long)
    mask = torch.zeros(B, T, dtype=torch.long)
    for i, r in enumerate(rows):
        tokens[i, T - len(r):] = r
        mask[i, T - len(r):] = 1

    cache = model.new_cache(B, T)
    outs = [model(tokens[:, :P], cache=cache, attention_mask=mask[:, :P])]
    for t in range(P, T):
        outs.append(model(tokens[:, t:t + 1], cache=cache))
    cached = torch.cat(outs, dim=1)
    padded = model(tokens, attention_mask=mask)
    assert len(cache) == T and torch.isfinite(cached).all()
    for i, r in enumerate(rows):
        alone = model(r[None])[0]
        got = cached[i, T - len(r):]
        err = (got - alone).abs().max().item()
        assert err <= TOL, f"row {i} ({len(r)} tokens of {T}): cached decode differs by {err:.2e} ({cfg})"
        err = (padded[i, T - len(r):] - alone).abs().max().item()
        assert err <= TOL, f"row {i}: padded forward differs by {err:.2e} ({cfg})"


# ---- synthetic tasks ----------------------------------------------------------------------------------
ESSAY = [
    "The harbour was quiet in the early morning. Fishing boats rocked gently against the pier. "
    "A gull called from the roof of the market hall. Nets were piled beside the crates of ice.",
    "Inland, the road climbed through orchards and small farms. In autumn the apples were sold at the gate. "
    "Children walked to school along the stone wall. The old mill had stood empty for many years.",
]
BYTE = Tokenizer.byte_level()


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(task=st.sampled_from(list(TASKS)), seed=st.integers(0, 2**31), length=st.integers(200, 3000),
       depth=st.one_of(st.none(), st.floats(0, 100, allow_nan=False)), split=st.sampled_from(["eval", "train"]))
def test_needles_always_inside_the_requested_length(task, seed, length, depth, split):
    """With the real (byte-level) tokenizer: the item fits ``length`` tokens including the generation
    budget, every needle lies inside the context, and the gold answers are in the needles -- or the
    length is refused with one ``too short`` line."""
    try:
        item = get_task(task)(seed, length, depth, encode=BYTE.encode, split=split, essay=ESSAY)
    except ValueError as e:
        assert f"length {length} is too short for task {task!r}" in str(e) and "\n" not in str(e)
        return
    n_prompt = len(BYTE.encode(item.prompt))
    assert n_prompt + item.gen_tokens <= length and item.length == length
    cs, ce = item.meta["context_span"]
    assert item.needle_spans, "no needle"
    for a, b in item.needle_spans:
        assert cs <= a < b <= ce <= item.query_span[0] <= len(item.prompt)
        assert len(BYTE.encode(item.prompt[:b])) <= n_prompt  # token-wise inside the prompt too
    needles = " ".join(item.needles)
    if task in ("cwe", "fwe"):  # answers are the most frequent words of the context
        assert item.answers and all(ans in item.prompt[cs:ce] for ans in item.answers)
    else:
        assert all(ans in needles for ans in item.answers)
    if depth is not None and (task in ("passkey", "vt") or task.startswith("niah")):
        assert item.depth == depth  # depth tasks place the queried needle at the requested depth
