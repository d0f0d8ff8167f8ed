"""Every fast kernel equals the eager reference, forward and backward, with GQA and odd lengths."""

import pytest
import torch

from rnope.config import LayerSpec
from rnope.kernels import attend_fresh, reference_attention, sdpa, visibility


def _qkv(B=2, H=4, Hkv=2, T=37, D=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    mk = lambda h: (torch.randn(B, h, T, D, generator=g) * 2).requires_grad_(True)  # noqa: E731
    return mk(H), mk(Hkv), mk(Hkv)


def _grads(out, tensors, seed=1):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out.shape, generator=g)
    return torch.autograd.grad((out * w).sum(), tensors)


SPECS = [
    LayerSpec(rope=True, span="full"),
    LayerSpec(rope=True, span="sliding", window=5),
    LayerSpec(rope=True, span="sliding", window=16),
    LayerSpec(rope=True, span="sliding", window=64),  # window > T: never binds
    LayerSpec(rope=True, span="chunked", chunk=6),
]


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: f"{s.span}{s.window or s.chunk or ''}")
@pytest.mark.parametrize("T", [1, 7, 37])
@pytest.mark.parametrize("padded", [False, True])
def test_fast_equals_reference(spec, T, padded):
    q, k, v = _qkv(T=T)
    times = torch.arange(T)
    start = torch.tensor([0, min(3, T - 1)]) if padded else None
    ref = reference_attention(q, k, v, visibility(times, times, spec, start))[0]
    fast = attend_fresh(q, k, v, spec, times=times, start=start, impl="auto")
    dense = attend_fresh(q, k, v, spec, times=times, start=start, impl="dense")
    # compare only real (non-padded) query rows
    rows = torch.ones(2, T, dtype=torch.bool) if start is None else torch.arange(T)[None] >= start[:, None]
    for out in (fast, dense):
        torch.testing.assert_close(out.transpose(1, 2)[rows], ref.transpose(1, 2)[rows], atol=1e-5, rtol=1e-5)
    sel = lambda o: o.transpose(1, 2)[rows]  # noqa: E731
    for g_ref, g_fast in zip(_grads(sel(ref), (q, k, v)), _grads(sel(fast), (q, k, v))):
        torch.testing.assert_close(g_fast, g_ref, atol=1e-4, rtol=1e-4)


def test_window_semantics_w_keys_including_self():
    spec = LayerSpec(rope=True, span="sliding", window=4)
    m = visibility(torch.arange(10), torch.arange(10), spec)[0, 0]
    assert m[9].nonzero().flatten().tolist() == [6, 7, 8, 9]  # t-W < s <= t
    assert m[2].nonzero().flatten().tolist() == [0, 1, 2]


def test_chunk_semantics():
    spec = LayerSpec(rope=True, span="chunked", chunk=4)
    m = visibility(torch.arange(10), torch.arange(10), spec)[0, 0]
    assert m[5].nonzero().flatten().tolist() == [4, 5]
    assert m[8].nonzero().flatten().tolist() == [8]


def test_reference_weights_rows_sum_to_one_and_respect_mask():
    q, k, v = _qkv(T=20)
    spec = LayerSpec(rope=True, span="sliding", window=6)
    allowed = visibility(torch.arange(20), torch.arange(20), spec)
    _, w = reference_attention(q, k, v, allowed, need_weights=True)
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 4, 20))
    assert float(w.detach().masked_select(~allowed.expand_as(w)).abs().max()) == 0.0


def test_fully_masked_rows_are_finite():
    q, k, v = _qkv(T=6)
    allowed = torch.zeros(1, 1, 6, 6, dtype=torch.bool)
    assert torch.isfinite(sdpa.masked(q, k, v, allowed)).all()
    assert torch.isfinite(reference_attention(q, k, v, allowed)[0]).all()


def test_sliding_long_sequence_many_blocks():
    q, k, v = _qkv(B=1, T=301, D=16, seed=3)
    spec = LayerSpec(rope=True, span="sliding", window=32)
    t = torch.arange(301)
    ref = reference_attention(q, k, v, visibility(t, t, spec))[0]
    torch.testing.assert_close(sdpa.sliding(q, k, v, 32), ref, atol=1e-5, rtol=1e-5)
