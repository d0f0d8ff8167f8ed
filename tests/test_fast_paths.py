"""One table: every fast path of the package against its eager reference, on the same inputs.

Each row builds (fast output, reference output) and a tolerance. The files beside this one test each
path in depth (gradients, padding, odd lengths, every preset): ``tests/kernels/``,
``tests/inference/test_decode.py``, ``tests/test_cache.py``, ``tests/test_model.py``. This table is
the index: a fast path without a row here has no reference.
"""

import pytest
import torch
import torch.nn.functional as F

from rnope.config import LayerSpec
from rnope.decode import Decoder, decode_step, fuse
from rnope.kernels import CACHED, attend_fresh, flex, matvec_attention, matvec_linear, reference_attention, visibility

from .conftest import TINY, tiny_model

W = TINY["window"]


def _qkv(B=2, H=4, Hkv=2, Tq=37, Tk=None, D=8):
    g = torch.Generator().manual_seed(0)
    Tk = Tq if Tk is None else Tk
    return (torch.randn(B, H, Tq, D, generator=g), torch.randn(B, Hkv, Tk, D, generator=g),
            torch.randn(B, Hkv, Tk, D, generator=g))


def _fresh(spec, impl):
    def run():
        q, k, v = _qkv()
        t = torch.arange(q.shape[2])
        ref = reference_attention(q, k, v, visibility(t, t, spec, None))[0]
        return attend_fresh(q, k, v, spec, times=t, impl=impl), ref
    return run


def _cached(backend, B):
    def run():
        q, k, v = _qkv(B=B, Tq=1, Tk=40)
        spec = LayerSpec(rope=True, span="sliding", window=16)
        allowed = visibility(torch.tensor([39]), torch.arange(40), spec, None)
        return CACHED[backend](q, k, v, allowed), reference_attention(q, k, v, allowed)[0]
    return run


def _flex_sliding():
    if not flex.importable():
        pytest.skip("FlexAttention is not importable in this torch")
    q, k, v = _qkv(Tq=64)
    spec = LayerSpec(rope=True, span="sliding", window=16)
    t = torch.arange(64)
    return flex.attend(q, k, v, spec, compiled=False), reference_attention(q, k, v, visibility(t, t, spec, None))[0]


def _matvec_linear():
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(1, 1, 48, generator=g), torch.randn(96, 48, generator=g)
    return matvec_linear(x, w), F.linear(x, w)


def _matvec_attention():
    q, k, v = _qkv(B=1, Tq=1, Tk=40)
    allowed = torch.ones(1, 1, 1, 40, dtype=torch.bool)
    return matvec_attention(q, k, v, allowed), reference_attention(q, k, v, allowed)[0]


def _model_path(preset):
    def run():
        model = tiny_model(preset)
        tokens = torch.randint(0, TINY["vocab_size"], (2, 3 * W + 5), generator=torch.Generator().manual_seed(1))
        fast = model(tokens)
        model.attn_impl = "reference"
        return fast, model(tokens)
    return run


def _decoder(preset):
    """The static-shape decode step after a prefill against the full forward's last positions."""
    def run():
        model = tiny_model(preset)
        tokens = torch.randint(0, TINY["vocab_size"], (2, 3 * W + 5), generator=torch.Generator().manual_seed(2))
        P = W + 1
        cache = model.new_cache(2, tokens.shape[1])
        model(tokens[:, :P], cache=cache)
        dec = Decoder(model, cache)
        got = torch.stack([dec(tokens[:, t]) for t in range(P, tokens.shape[1])], dim=1)
        return got, model(tokens)[:, P:]
    return run


def _fused(preset, kind):
    """decode_step through the fused decode copy (q/k/v and gate/up as one module) against the model's own modules."""
    def run():
        model = tiny_model(preset)
        B = 1 if kind == "matvec" else 2
        tokens = torch.randint(0, TINY["vocab_size"], (B, W + 4), generator=torch.Generator().manual_seed(3))
        caches = [model.new_cache(B, tokens.shape[1]) for _ in range(2)]
        for c in caches:
            model(tokens[:, : W + 1], cache=c)
        dm = fuse(model, kind)
        outs = ([], [])
        for t in range(W + 1, tokens.shape[1]):
            time = torch.tensor([t])
            outs[0].append(decode_step(dm, tokens[:, t : t + 1], time, None, caches[0].layers))
            outs[1].append(decode_step(model, tokens[:, t : t + 1], time, None, caches[1].layers))
        return torch.cat(outs[0], 1), torch.cat(outs[1], 1)
    return run


FAST_PATHS = {
    # name: (build () -> (fast, reference), atol)
    "kernels/sdpa-causal": (_fresh(LayerSpec(rope=True, span="full"), "auto"), 1e-5),
    "kernels/sdpa-sliding": (_fresh(LayerSpec(rope=True, span="sliding", window=5), "auto"), 1e-5),
    "kernels/sdpa-chunked": (_fresh(LayerSpec(rope=True, span="chunked", chunk=6), "auto"), 1e-5),
    "kernels/dense-masked": (_fresh(LayerSpec(rope=True, span="sliding", window=5), "dense"), 1e-5),
    "kernels/flex-sliding": (_flex_sliding, 1e-5),
    "kernels/cached-sdpa-decode": (_cached("sdpa", 2), 1e-5),
    "kernels/cached-matvec": (_cached("matvec", 1), 1e-5),
    "kernels/matvec-attention": (_matvec_attention, 1e-5),
    "kernels/matvec-linear": (_matvec_linear, 1e-5),
    "model/rnope-swa-fast-attention": (_model_path("rnope-swa"), 1e-4),
    "model/rope-fast-attention": (_model_path("rope"), 1e-4),
    "decode/static-step-rnope-swa": (_decoder("rnope-swa"), 1e-4),
    "decode/static-step-rope": (_decoder("rope"), 1e-4),
    "decode/fused-rowmajor": (_fused("rnope-swa", "rowmajor"), 1e-5),
    "decode/fused-matvec": (_fused("rnope-swa", "matvec"), 1e-5),
}


@pytest.mark.parametrize("name", list(FAST_PATHS))
@torch.no_grad()
def test_fast_path_equals_reference(name):
    build, atol = FAST_PATHS[name]
    fast, ref = build()
    assert fast.shape == ref.shape
    torch.testing.assert_close(fast, ref, atol=atol, rtol=atol)
