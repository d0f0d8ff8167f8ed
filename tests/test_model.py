"""Model semantics: cached decode == full forward, locality of windows, position invariances."""

import pytest
import torch

from rnope import ModelConfig, Transformer
from rnope.decode import compile_available

from .conftest import CORE_PRESETS, TINY, left_padded_rows, tiny_model

W = TINY["window"]


def _incremental(model, tokens, prompt_len, mask=None):
    """Prefill ``prompt_len`` tokens, then decode one token at a time; logits for all positions."""
    cache = model.new_cache(tokens.shape[0], tokens.shape[1])
    outs = [model(tokens[:, :prompt_len], cache=cache, attention_mask=None if mask is None else mask[:, :prompt_len])]
    for t in range(prompt_len, tokens.shape[1]):
        outs.append(model(tokens[:, t : t + 1], cache=cache))
    assert len(cache) == tokens.shape[1]
    return torch.cat(outs, dim=1)


@pytest.mark.parametrize("preset", CORE_PRESETS + ["debug"])
@pytest.mark.parametrize("prompt_len", [W - 1, W, W + 1, 3 * W + 5])
@torch.no_grad()
def test_cached_decode_equals_full_forward(preset, prompt_len):
    model = tiny_model(preset)
    tokens = torch.randint(0, TINY["vocab_size"], (3, prompt_len + 2 * W + 3))  # decode across window boundaries
    full = model(tokens)
    inc = _incremental(model, tokens, prompt_len)
    assert (full - inc).abs().max().item() <= 1e-4


@pytest.mark.parametrize("preset", CORE_PRESETS)
@torch.no_grad()
def test_left_padded_batch_equals_unpadded_rows(preset):
    model = tiny_model(preset)
    lens = [3 * W + 5, W - 1, W + 1]
    rows, tokens, mask = left_padded_rows(lens, 2 * W)
    T = tokens.shape[1]
    P = max(lens)  # prefill the padded prompts, then decode the rest together
    inc = _incremental(model, tokens, P, mask)
    padded_full = model(tokens, attention_mask=mask)
    for i, r in enumerate(rows):
        alone = model(r[None])[0]
        got = inc[i, T - len(r) :]
        assert (got - alone).abs().max().item() <= 1e-4, (preset, i)
        assert (padded_full[i, T - len(r) :] - alone).abs().max().item() <= 1e-4
    assert torch.isfinite(inc).all() and torch.isfinite(padded_full).all()


@torch.no_grad()
def test_swa_one_layer_sees_exactly_w_keys():
    model = tiny_model("swa", n_layer=1)
    T = 30
    tokens = torch.randint(0, TINY["vocab_size"], (1, T))
    t = T - 1
    base = model(tokens)[0, t]
    far = tokens.clone()
    far[0, t - W] = (far[0, t - W] + 1) % TINY["vocab_size"]  # just outside the window
    near = tokens.clone()
    near[0, t - W + 1] = (near[0, t - W + 1] + 1) % TINY["vocab_size"]  # oldest key inside
    assert torch.equal(model(far)[0, t], base)
    assert (model(near)[0, t] - base).abs().max() > 1e-4


@torch.no_grad()
def test_nope_invariant_to_position_shift_rope_only_relative():
    tokens = torch.randint(0, TINY["vocab_size"], (2, 20))
    pos = torch.arange(20)[None].expand(2, 20)
    nope = tiny_model("nope", n_layer=1)
    torch.testing.assert_close(nope(tokens, positions=pos + 1000), nope(tokens, positions=pos), atol=1e-5, rtol=0)
    rope = tiny_model("rope", n_layer=1)
    torch.testing.assert_close(rope(tokens, positions=pos + 37), rope(tokens, positions=pos), atol=1e-4, rtol=0)
    scaled = rope(tokens, positions=pos * 2)  # not a shift: relative offsets change
    assert (scaled - rope(tokens, positions=pos)).abs().max() > 1e-3


@pytest.mark.parametrize("preset", ["rnope-swa", "rope", "swa"])
def test_cache_nbytes_formula(preset):
    model = tiny_model(preset)
    cfg = model.config
    for L in (W - 1, W, 5 * W):
        cache = model.new_cache(2, L)
        per_pos = 2 * 2 * cfg.n_kv_head * cfg.head_dim * 4  # K and V, batch 2, fp32
        n_global = sum(s.is_global for s in cfg.layers)
        assert cache.nbytes == per_pos * (n_global * L + (cfg.n_layer - n_global) * min(W, L))
        assert cache.nbytes == per_pos * cfg.kv_positions(L)


@torch.no_grad()
def test_bad_inputs():
    model = tiny_model("rnope-swa")
    with pytest.raises(ValueError, match=r"^token id 61 is outside the vocabulary \[0, 61\)$"):
        model(torch.tensor([[1, 61]]))
    with pytest.raises(ValueError, match=r"^tokens must be a 2-D \(batch, time\) tensor, got \(3,\)$"):
        model(torch.tensor([1, 2, 3]))
    cache = model.new_cache(1, 4)
    model(torch.tensor([[1, 2, 3]]), cache=cache)
    with pytest.raises(ValueError, match=r"^cache full: 3 tokens cached \+ 2 new > max_seq_len 4$"):
        model(torch.tensor([[1, 2]]), cache=cache)
    with pytest.raises(ValueError, match=r"^cache was made for batch_size 1, got a batch of 2$"):
        model(torch.tensor([[1], [2]]), cache=cache)
    with pytest.raises(ValueError, match="left padding"):
        model(torch.tensor([[1, 2, 3]]), attention_mask=torch.tensor([[1, 0, 1]]))


def test_backward_through_every_preset():
    for preset in CORE_PRESETS:
        model = tiny_model(preset).train()
        tokens = torch.randint(0, TINY["vocab_size"], (2, 3 * W + 1))
        loss = torch.nn.functional.cross_entropy(model(tokens[:, :-1]).flatten(0, 1), tokens[:, 1:].flatten())
        loss.backward()
        grads = [p.grad for p in model.parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads), preset


@torch.no_grad()
def test_fast_and_reference_model_paths_agree():
    for preset in CORE_PRESETS:
        model = tiny_model(preset)
        tokens = torch.randint(0, TINY["vocab_size"], (2, 4 * W + 3))
        fast = model(tokens)
        model.attn_impl = "reference"
        torch.testing.assert_close(model(tokens), fast, atol=1e-4, rtol=1e-4)


def test_meta_device_build():
    with torch.device("meta"):
        model = Transformer(ModelConfig.from_preset("rnope-swa", n_layer=8))
    assert all(p.is_meta for p in model.parameters())


def _reference_loss(model, x, y, reduction):
    logits = model(x)
    return torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), y.flatten(), ignore_index=-100, reduction=reduction)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_targets_give_the_cross_entropy_of_the_logits(reduction):
    """``model(x, targets=y)`` (the trainer's call: the loss inside forward, so it compiles with the
    model) equals cross-entropy of the logits, ignored targets (-100) left out, and so do the grads."""
    model = tiny_model("rnope-swa").train()
    x = torch.randint(0, TINY["vocab_size"], (2, 3 * W))
    y = torch.randint(0, TINY["vocab_size"], (2, 3 * W))
    y[0, :5] = -100
    y[1, -3:] = -100
    got = model(x, targets=y, reduction=reduction)
    got.backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    want = _reference_loss(model, x, y, reduction)
    want.backward()
    assert got.dtype == torch.float32 and got.shape == ()
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    for g, p in zip(grads, model.parameters()):
        torch.testing.assert_close(g, p.grad, rtol=0, atol=0)
    n = int((y != -100).sum())
    assert n == y.numel() - 8
    if reduction == "mean":  # the mean is over the kept targets only
        torch.testing.assert_close(got * n, _reference_loss(model, x, y, "sum").detach(), rtol=1e-6, atol=1e-5)


def test_targets_bad_inputs():
    model = tiny_model("rnope-swa")
    x = torch.randint(0, TINY["vocab_size"], (2, 5))
    with pytest.raises(ValueError, match=r"^targets must have the tokens' shape \(2, 5\), got \(2, 4\)$"):
        model(x, targets=x[:, :4])
    with pytest.raises(ValueError, match=r"^targets must have the tokens' shape \(2, 5\), got list$"):
        model(x, targets=[[1]])
    with pytest.raises(ValueError, match=r"^targets must be integer ids, got dtype torch.float32$"):
        model(x, targets=x.float())
    with pytest.raises(ValueError, match=r"^targets cannot be combined with logits_to_keep \(the loss needs every position\)$"):
        model(x, targets=x, logits_to_keep=1)
    with pytest.raises(ValueError, match=r"^reduction must be 'mean' or 'sum', got 'none'$"):
        model(x, targets=x, reduction="none")


@pytest.mark.slow
@pytest.mark.skipif(not compile_available(), reason="torch.compile needs a C++ compiler")
def test_compiled_loss_in_graph_equals_eager():
    """The trainer compiles ``fwd(x, targets=y)``: one graph with the loss, same value and grads."""
    model = tiny_model("rnope-swa").train()
    x = torch.randint(0, TINY["vocab_size"], (2, 3 * W))
    y = torch.randint(0, TINY["vocab_size"], (2, 3 * W))
    y[:, :2] = -100
    want = model(x, targets=y, reduction="sum")
    want.backward()
    ref = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    torch._dynamo.reset()
    got = torch.compile(model, dynamic=False, fullgraph=True)(x, targets=y, reduction="sum")
    got.backward()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)
    for g, p in zip(ref, model.parameters()):
        torch.testing.assert_close(p.grad, g, rtol=1e-4, atol=1e-4)
