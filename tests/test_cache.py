"""The static cache write of the decode step against LayerCache.update."""

import pytest
import torch

from rnope.config import LayerSpec
from rnope.kernels import reference_attention, sdpa, visibility


# ------------------------------------------------------------------------------------ static writes
@pytest.mark.parametrize("slots,max_len", [(5, 40), (None, 40), (64, 40)])  # ring, full, ring wider than the cache
def test_static_update_matches_layer_cache_update(slots, max_len):
    """The static-shape step (``update(..., seen=None)``: write, attend the whole buffer) leaves the
    same cache and attends the same keys as the sized update."""
    from rnope.cache import LayerCache

    spec = LayerSpec(rope=True, span="sliding", window=slots) if slots else LayerSpec(rope=False, span="full")
    a = LayerCache(spec, 2, 2, 4, max_len, torch.float32, "cpu")
    b = LayerCache(spec, 2, 2, 4, max_len, torch.float32, "cpu")
    g = torch.Generator().manual_seed(0)
    for t in range(max_len):
        k, v = torch.randn(2, 2, 1, 4, generator=g), torch.randn(2, 2, 1, 4, generator=g)
        times = torch.tensor([t])
        ka, va, ta = a.update(k, v, times, t)
        kb, vb, tb = b.update(k, v, times, None)
        assert torch.equal(a.k, b.k) and torch.equal(a.v, b.v) and torch.equal(a.time, b.time)
        # attending the whole buffer under the visibility mask == attending what update returns
        q = torch.randn(2, 4, 1, 4, generator=g)
        ya = reference_attention(q, ka, va, visibility(times, ta, spec))[0]
        yb = sdpa.decode(q, kb, vb, visibility(times, tb, spec))
        torch.testing.assert_close(yb, ya, atol=1e-5, rtol=1e-5)
