"""The decode attention kernels (sliding sub-window blocks, single-query decode, empty rows) against the reference."""

import pytest
import torch

from rnope.config import LayerSpec
from rnope.kernels import reference_attention, sdpa, visibility

from ..conftest import TINY

W = TINY["window"]


# ------------------------------------------------------------------------------------ decode kernel
@pytest.mark.parametrize("Tq", [1, 2, 4])
@pytest.mark.parametrize("H,Hkv", [(4, 2), (4, 4), (4, 1)])
@pytest.mark.parametrize("padded", [False, True])
def test_decode_kernel_equals_reference_forward_and_backward(Tq, H, Hkv, padded):
    g = torch.Generator().manual_seed(0)
    B, S, D = 3, 29, 8
    q = (torch.randn(B, H, Tq, D, generator=g) * 2).requires_grad_(True)
    k = (torch.randn(B, Hkv, S, D, generator=g) * 2).requires_grad_(True)
    v = torch.randn(B, Hkv, S, D, generator=g).requires_grad_(True)
    k_time = torch.arange(S)
    k_time[5] = -1  # an unwritten slot
    q_time = torch.arange(S - Tq, S)
    spec = LayerSpec(rope=True, span="sliding", window=7)
    start = torch.tensor([0, 4, 30]) if padded else None  # row 2: every key is padding -> empty rows
    allowed = visibility(q_time, k_time, spec, start)
    ref = reference_attention(q, k, v, allowed)[0]
    out = sdpa.decode(q, k, v, allowed)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    w = torch.randn(ref.shape, generator=g)
    for a, b in zip(torch.autograd.grad((out * w).sum(), (q, k, v)), torch.autograd.grad((ref * w).sum(), (q, k, v))):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("W", [33, 48, 64])  # windows > 32 use query blocks of W/2 (grad) or W/4 (inference)
@pytest.mark.parametrize("T", [W_ + d for W_ in (64,) for d in (1, 37)] + [301])
def test_sliding_kernel_sub_window_blocks_equal_reference(W, T):
    from rnope.kernels.sdpa import _query_block

    assert _query_block(W, True) < W and _query_block(W, False) < _query_block(W, True)
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, h, T, 8, generator=g).requires_grad_(True) for h in (4, 2, 2))
    spec = LayerSpec(rope=True, span="sliding", window=W)
    times = torch.arange(T)
    ref = reference_attention(q, k, v, visibility(times, times, spec))[0]
    out = sdpa.sliding(q, k, v, W)  # grad enabled: W/2 blocks
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    w = torch.randn(ref.shape, generator=g)
    for a, b in zip(torch.autograd.grad((out * w).sum(), (q, k, v)), torch.autograd.grad((ref * w).sum(), (q, k, v))):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    with torch.no_grad():  # inference: W/4 blocks
        torch.testing.assert_close(sdpa.sliding(q, k, v, W), ref, atol=1e-5, rtol=1e-5)


def test_fill_empty_rows_is_unchanged_semantics():
    from rnope.kernels import fill_empty_rows

    m = torch.tensor([[True, False], [False, False]])[None, None]
    assert fill_empty_rows(m)[0, 0].tolist() == [[True, False], [True, True]]
