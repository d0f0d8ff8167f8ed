"""FlexAttention masks and the flex model path against the reference."""

import pytest
import torch

from rnope.config import LayerSpec
from rnope.kernels import attend_fresh, flex, reference_attention, visibility

from ..conftest import TINY, tiny_model

W = TINY["window"]


# ------------------------------------------------------------------------------------ FlexAttention
@pytest.mark.skipif(not flex.importable(), reason="FlexAttention needs torch >= 2.5")
@pytest.mark.parametrize("spec", [LayerSpec(rope=True, span="sliding", window=5), LayerSpec(rope=True, span="sliding", window=64),
                                  LayerSpec(rope=True, span="chunked", chunk=6), LayerSpec(rope=False, span="full")],
                         ids=["sliding5", "sliding64", "chunked6", "causal"])
@pytest.mark.parametrize("T", [1, 37, 130])
@torch.no_grad()
def test_flex_masks_equal_reference(spec, T):
    import warnings

    g = torch.Generator().manual_seed(0)
    q, k, v = torch.randn(2, 4, T, 8, generator=g), torch.randn(2, 2, T, 8, generator=g), torch.randn(2, 2, T, 8, generator=g)
    times = torch.arange(T)
    ref = reference_attention(q, k, v, visibility(times, times, spec))[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "flex_attention called without torch.compile" (eager reference off the GPU)
        out = flex.attend(q, k, v, spec, compiled=False)
        via = attend_fresh(q, k, v, spec, times=times, impl="flex")
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(via, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.skipif(not flex.importable(), reason="FlexAttention needs torch >= 2.5")
@torch.no_grad()
def test_flex_model_path_equals_reference_and_padding_falls_back():
    import warnings

    model = tiny_model("rnope-swa")
    tokens = torch.randint(0, TINY["vocab_size"], (2, 3 * W + 5))
    mask = torch.ones_like(tokens)
    mask[1, :4] = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        outs = {}
        for impl in ("flex", "sdpa", "reference"):
            model.attn_impl = impl
            outs[impl] = (model(tokens), model(tokens, attention_mask=mask))
    for impl in ("flex", "sdpa"):
        torch.testing.assert_close(outs[impl][0], outs["reference"][0], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(outs[impl][1][:, 4:], outs["reference"][1][:, 4:], atol=1e-4, rtol=1e-4)
