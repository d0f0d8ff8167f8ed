"""The static decoder (eager, compiled, fused weight layouts, matvec) against the full forward and each other."""

import pytest
import torch

from rnope import ModelConfig, Transformer, generate
from rnope.config import LayerSpec
from rnope.decode import Decoder, compile_available, decode_step, fuse
from rnope.kernels import matvec_attention, matvec_linear, sdpa, visibility

from ..conftest import CORE_PRESETS, TINY, left_padded_rows, tiny_model

W = TINY["window"]


# ------------------------------------------------------------------------------------ decoder
def _decode_all(model, tokens, prompt_len, mask=None, compile=False):
    cache = model.new_cache(tokens.shape[0], tokens.shape[1])
    pm = None if mask is None else mask[:, :prompt_len]
    outs = [model(tokens[:, :prompt_len], cache=cache, attention_mask=pm)]
    dec = Decoder(model, cache, compile=compile)
    for t in range(prompt_len, tokens.shape[1]):
        outs.append(dec(tokens[:, t])[:, None])
    assert len(cache) == tokens.shape[1]
    return torch.cat(outs, dim=1), dec


@torch.no_grad()
def test_cuda_graphs_flag_is_ignored_off_cuda():
    """``Decoder(cuda_graphs=True)`` replays CUDA graphs only for a compiled step on a CUDA cache;
    on a CPU cache it is the plain step, with the same logits and nothing marked static."""
    model = tiny_model("rnope-swa")
    tokens = torch.randint(0, TINY["vocab_size"], (2, 2 * W + 4))
    logits = []
    for graphs in (False, True):
        cache = model.new_cache(2, tokens.shape[1])
        model(tokens[:, : W + 1], cache=cache)
        dec = Decoder(model, cache, cuda_graphs=graphs)
        assert dec.graphs is False and dec._fn is decode_step
        assert not hasattr(cache.layers[0].k, "_dynamo_static_input_type")
        logits.append(torch.stack([dec(tokens[:, t]) for t in range(W + 1, tokens.shape[1])]))
    torch.testing.assert_close(logits[1], logits[0], rtol=0, atol=0)


@pytest.mark.parametrize("preset", CORE_PRESETS + ["debug", "llama4-irope", "rnope-swa-ssmax", "rnope-swa-temp", "smollm3"])
@pytest.mark.parametrize("prompt_len", [1, W - 1, W, W + 1, 3 * W + 5])
@torch.no_grad()
def test_static_decoder_equals_full_forward(preset, prompt_len):
    model = tiny_model(preset)
    tokens = torch.randint(0, TINY["vocab_size"], (2, prompt_len + 2 * W + 3))
    full = model(tokens)
    inc, _ = _decode_all(model, tokens, prompt_len)
    assert (full - inc).abs().max().item() <= 1e-4


@pytest.mark.parametrize("preset", ["rnope-swa", "rope", "llama4-irope"])
@torch.no_grad()
def test_static_decoder_left_padding_equals_unpadded_rows(preset):
    model = tiny_model(preset)
    lens = [3 * W + 5, W - 1, W + 1]
    rows, tokens, mask = left_padded_rows(lens, 2 * W)
    T = tokens.shape[1]
    inc, _ = _decode_all(model, tokens, max(lens), mask)
    for i, r in enumerate(rows):
        assert (inc[i, T - len(r) :] - model(r[None])[0]).abs().max().item() <= 1e-4


@torch.no_grad()
def test_decoder_and_model_decode_leave_the_same_cache():
    model = tiny_model("rnope-swa")
    tokens = torch.randint(0, TINY["vocab_size"], (2, 3 * W))
    caches = [model.new_cache(2, 3 * W) for _ in range(2)]
    for c in caches:
        model(tokens[:, :W], cache=c)
    dec = Decoder(model, caches[0])
    for t in range(W, 3 * W):
        a = dec(tokens[:, t])
        b = model(tokens[:, t : t + 1], cache=caches[1])[:, -1]
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    for la, lb in zip(caches[0].layers, caches[1].layers):
        assert torch.equal(la.time, lb.time)
        torch.testing.assert_close(la.k, lb.k)


@torch.no_grad()
def test_decoder_errors():
    model = tiny_model("rnope-swa")
    cache = model.new_cache(1, 4)
    with pytest.raises(ValueError, match="prefilled"):
        Decoder(model, cache)(torch.tensor([1]))
    model(torch.tensor([[1, 2, 3, 4]]), cache=cache)
    with pytest.raises(ValueError, match="cache full"):
        Decoder(model, cache)(torch.tensor([1]))


@pytest.mark.slow
@pytest.mark.skipif(not compile_available(), reason="torch.compile needs a C++ compiler")
@torch.no_grad()
def test_compiled_decoder_equals_eager_and_full_forward():
    model = tiny_model("rnope-swa")
    tokens = torch.randint(0, TINY["vocab_size"], (2, 3 * W + 5 + 2 * W))
    full = model(tokens)
    inc, dec = _decode_all(model, tokens, 3 * W + 5, compile=True)
    assert dec.compiled  # compiled, not silently fallen back
    assert (full - inc).abs().max().item() <= 1e-4
    # a second cache of the same shape reuses the graph (no recompile needed for correctness either)
    inc2, _ = _decode_all(model, tokens, 3 * W + 5, compile=True)
    assert (full - inc2).abs().max().item() <= 1e-4
    # generate(compile=True) == generate() (greedy)
    prompts = [tokens[0, :10].tolist(), tokens[1, :3].tolist()]
    assert generate(model, prompts, 12, compile=True) == generate(model, prompts, 12)


@pytest.mark.slow
@pytest.mark.skipif(not compile_available(), reason="torch.compile needs a C++ compiler")
@torch.no_grad()
def test_compiled_decoder_keeps_one_graph_whatever_the_token_layout():
    """A column view of a prompt (seq[:, i]) and a fresh argmax are the same step: without one layout
    the switch recompiled in the middle of decoding (seen on an H100: 0.9 s in a 3.7 ms step)."""
    from torch._dynamo.utils import counters

    model = tiny_model("rnope-swa")
    seq = torch.randint(0, TINY["vocab_size"], (2, 40))
    cache = model.new_cache(2, 48)
    model(seq[:, :20], cache=cache)
    dec = Decoder(model, cache, compile=True)
    logits = dec(seq[:, 20])  # strided column view
    graphs = counters["stats"]["unique_graphs"]
    for tok in (logits.argmax(-1), seq[:, 21].clone(), seq[:, 22], torch.tensor([3, 4]), seq[0, 23:25]):
        logits = dec(tok)
    assert dec.compiled and counters["stats"]["unique_graphs"] == graphs


def test_decode_step_is_the_reference_of_the_decoder():
    """The eager step function is what the Decoder compiles: calling it directly decodes too."""
    model = tiny_model("rnope-swa")
    tokens = torch.randint(0, TINY["vocab_size"], (1, W + 3))
    with torch.no_grad():
        full = model(tokens)
        cache = model.new_cache(1, W + 3)
        model(tokens[:, : W + 2], cache=cache)
        logits = decode_step(model, tokens[:, W + 2 :], torch.tensor([W + 2]), None, cache.layers)
    torch.testing.assert_close(logits, full[:, -1], atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------------ decode layouts
def _assert_fp32_close(got, ref, tol=1e-5):
    """Within ``tol`` of the largest |ref| (at least 1): the same sums in another order. The tiny
    test models' inflated weights give logits ~10 and hidden states ~40, where one fp32 ulp is
    1e-6..4e-6 and a different summation order moves a logit by a few of them."""
    scale = max(1.0, ref.abs().max().item())
    err = (got - ref).abs().max().item()
    assert err <= tol * scale, f"max |diff| {err:.3g} > {tol:g} x {scale:.3g}"


@pytest.mark.parametrize("shape", [(1, 1, 32), (2, 1, 48), (3, 5, 16)])
def test_matvec_linear_equals_linear(shape):
    x = torch.randn(*shape)
    w = torch.randn(24, shape[-1])
    torch.testing.assert_close(matvec_linear(x, w), torch.nn.functional.linear(x, w), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("Tq", [1, 3])
@pytest.mark.parametrize("H,Hkv", [(4, 2), (4, 4), (4, 1)])
@pytest.mark.parametrize("padded", [False, True])
def test_matvec_attention_equals_decode_kernel(Tq, H, Hkv, padded):
    B, S, D = 2, 13, 8
    q, k, v = torch.randn(B, H, Tq, D), torch.randn(B, Hkv, S, D), torch.randn(B, Hkv, S, D)
    spec = LayerSpec(span="sliding", rope=True, window=6)
    k_time = torch.arange(S) - 2  # two empty slots (time -1 and -2 < 0)
    start = torch.tensor([0, 9]) if padded else None
    allowed = visibility(torch.arange(S - 2 - Tq, S - 2), k_time, spec, start)
    torch.testing.assert_close(matvec_attention(q, k, v, allowed), sdpa.decode(q, k, v, allowed), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("padded", [False, True])
def test_matvec_attention_long_cache_bmm_branch_equals_decode_kernel(padded):
    """Past MATVEC_PV_BMM_KEYS cached keys p·V is a bmm: the same attention as the reference kernel."""
    from rnope.kernels.matvec import MATVEC_PV_BMM_KEYS

    B, H, Hkv, D, S = 2, 4, 2, 8, MATVEC_PV_BMM_KEYS + 37
    q, k, v = torch.randn(B, H, 1, D), torch.randn(B, Hkv, S, D), torch.randn(B, Hkv, S, D)
    spec = LayerSpec(span="full", rope=False)
    k_time = torch.arange(S) - 5  # five empty slots
    start = torch.tensor([0, 100]) if padded else None
    allowed = visibility(torch.tensor([S - 6]), k_time, spec, start)
    torch.testing.assert_close(matvec_attention(q, k, v, allowed), sdpa.decode(q, k, v, allowed), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("preset", CORE_PRESETS + ["llama4-irope", "rnope-swa-ssmax", "smollm3"])
@pytest.mark.parametrize("matvec", [False, True])
@torch.no_grad()
def test_decode_weight_layouts_equal_the_modules(preset, matvec):
    """decode_step through the decode copy (fused q/k/v and gate/up modules: eager row-major ``x @ wᵀ``
    copies, or the matvec reductions of the compiled B=1 path, run eagerly here) == decode_step
    through the model's own modules; the model itself is left untouched."""
    model = tiny_model(preset)
    B = 1 if matvec else 2
    tokens = torch.randint(0, TINY["vocab_size"], (B, 2 * W + 3))
    names = sorted(dict(model.named_modules()))
    dm = fuse(model, "matvec" if matvec else "rowmajor")
    assert dm is not None and dm is not model
    assert sorted(dict(model.named_modules())) == names and model.layers[0].mlp.gate_up_proj is None
    assert dm.layers[0].mlp.gate_up_proj is not None and (dm.layers[0].self_attn.qkv_proj is not None) == matvec
    assert dm.embed_tokens.weight is model.embed_tokens.weight  # parameters are shared, not copied
    caches = [model.new_cache(B, tokens.shape[1]) for _ in range(2)]
    for c in caches:
        model(tokens[:, : W + 1], cache=c)
    for t in range(W + 1, tokens.shape[1]):
        time = torch.tensor([t])
        ref = decode_step(model, tokens[:, t : t + 1], time, None, caches[0].layers)
        got = decode_step(dm, tokens[:, t : t + 1], time, None, caches[1].layers)
        _assert_fp32_close(got, ref)
    for la, lb in zip(caches[0].layers, caches[1].layers):
        _assert_fp32_close(lb.k, la.k)
        _assert_fp32_close(lb.v, la.v)


@pytest.mark.parametrize("preset", ["rnope-swa", "rope"])
@torch.no_grad()
def test_decode_weight_layouts_at_the_default_init_within_1e_5(preset):
    """At the library's own init (the bench model's scale) the matvec layouts agree to 1e-5 absolute."""
    torch.manual_seed(0)
    model = Transformer(ModelConfig.from_preset(preset, **{**TINY, "d_model": 64, "d_ff": 192})).eval()
    tokens = torch.randint(0, TINY["vocab_size"], (1, 3 * W))
    dm = fuse(model, "matvec")
    caches = [model.new_cache(1, tokens.shape[1]) for _ in range(2)]
    for c in caches:
        model(tokens[:, :W], cache=c)
    for t in range(W, tokens.shape[1]):
        time = torch.tensor([t])
        ref = decode_step(model, tokens[:, t : t + 1], time, None, caches[0].layers)
        got = decode_step(dm, tokens[:, t : t + 1], time, None, caches[1].layers)
        assert (got - ref).abs().max().item() <= 1e-5


def test_decode_copy_is_skipped_over_the_size_cap(monkeypatch):
    import rnope.decode as decode

    model = tiny_model("rnope-swa")
    monkeypatch.setattr(decode, "DECODE_WEIGHTS_MAX_BYTES", 1)
    assert fuse(model, "rowmajor") is None and fuse(model, "matvec") is None
    tokens = torch.randint(0, TINY["vocab_size"], (1, W + 4))
    full = model(tokens)
    inc, _ = _decode_all(model, tokens, W)
    assert (full - inc).abs().max().item() <= 1e-4


@pytest.mark.slow
@pytest.mark.skipif(not compile_available(), reason="torch.compile needs a C++ compiler")
@pytest.mark.parametrize("preset", ["rnope-swa", "smollm3"])
@torch.no_grad()
def test_compiled_matvec_decoder_equals_eager_decoder(preset):
    """The compiled B=1 CPU step (matvec projections and attention, C++ wrapper): logits within
    1e-5 of the eager Decoder at every step, and the same greedy tokens from generate."""
    model = tiny_model(preset)
    tokens = torch.randint(0, TINY["vocab_size"], (1, 3 * W + 5 + 2 * W))
    eager, _ = _decode_all(model, tokens, 3 * W + 5)
    comp, dec = _decode_all(model, tokens, 3 * W + 5, compile=True)
    assert dec.compiled and dec.matvec  # compiled, not silently fallen back, on the matvec path
    _assert_fp32_close(comp, eager)
    prompt = [tokens[0, :11].tolist()]
    assert generate(model, prompt, 2 * W, compile=True) == generate(model, prompt, 2 * W)


# ------------------------------------------------------------------------------------ narrow decode weights
#: the stated tolerance of float16 decode weights: logits within 5e-3 of the fp32 step's largest logit
F16_TOL = 5e-3


def _narrow_vs_fp32(model, dm, tokens, P):
    caches = [model.new_cache(1, tokens.shape[1]) for _ in range(2)]
    for c in caches:
        model(tokens[:, :P], cache=c)
    worst = 0.0
    for t in range(P, tokens.shape[1]):
        time = torch.tensor([t])
        ref = decode_step(model, tokens[:, t : t + 1], time, None, caches[0].layers)
        got = decode_step(dm, tokens[:, t : t + 1], time, None, caches[1].layers)
        worst = max(worst, ((got - ref).abs().max() / ref.abs().max()).item())
    return worst


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@torch.no_grad()
def test_narrow_decode_weights_are_stored_narrow_and_stay_within_tolerance(dtype):
    """fuse(..., weight_dtype): every matrix of the decode copy is stored in the narrow dtype (the
    model keeps fp32), and the step's logits stay within the stated tolerance of the fp32 step
    (float16 5e-3 of the largest logit; bfloat16, with 8 mantissa bits, 4x that)."""
    torch.manual_seed(0)
    model = Transformer(ModelConfig.from_preset("rnope-swa", **{**TINY, "d_model": 64, "d_ff": 192})).eval()
    dm = fuse(model, "matvec", dtype)
    mats = [m.weight for m in dm.modules() if type(m).__name__ == "FusedLinear"]
    assert len(mats) == 4 * model.config.n_layer + 1 and all(w.dtype == dtype for w in mats)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    tokens = torch.randint(0, TINY["vocab_size"], (1, 3 * W))
    err = _narrow_vs_fp32(model, dm, tokens, W)
    assert 0 < err <= (F16_TOL if dtype == torch.float16 else 4 * F16_TOL), err


def test_decode_weights_bad_values_and_where_they_apply():
    model = tiny_model("rnope-swa")
    cache = model.new_cache(2, 8)
    model(torch.randint(0, TINY["vocab_size"], (2, 4)), cache=cache)
    with pytest.raises(ValueError, match=r"^decode weights must be one of float32, float16, bfloat16, got 'int4'$"):
        Decoder(model, cache, weights="int4")
    with pytest.raises(ValueError, match=r"^decode weights must be one of float32, float16, bfloat16, got 'fp8'$"):
        generate(model, [[1, 2, 3]], 2, decode_weights="fp8")
    with pytest.raises(ValueError, match=r"^decode weights in torch.float16 need the matvec layout, got 'rowmajor'$"):
        fuse(model, "rowmajor", torch.float16)
    assert Decoder(model, cache, weights="float16").weights == "float32"  # eager, a batch: the model's weights


@pytest.mark.skipif(not compile_available(), reason="torch.compile needs a C++ compiler")
@torch.no_grad()
def test_compiled_float16_decode_weights_within_tolerance_of_fp32():
    """The real path: the compiled one-row CPU step reading float16 weights, against the eager fp32 step."""
    torch.manual_seed(0)
    model = Transformer(ModelConfig.from_preset("rnope-swa", **{**TINY, "d_model": 64, "d_ff": 192})).eval()
    tokens = torch.randint(0, TINY["vocab_size"], (1, 2 * W + 3))
    outs = {}
    for key, kw in (("fp32", {}), ("f16", {"compile": True, "weights": "float16"})):
        cache = model.new_cache(1, tokens.shape[1])
        model(tokens[:, : W + 1], cache=cache)
        dec = Decoder(model, cache, **kw)
        outs[key] = torch.stack([dec(tokens[:, t]) for t in range(W + 1, tokens.shape[1])])
        if key == "f16":
            assert dec.compiled and dec.weights == "float16"
    err = ((outs["f16"] - outs["fp32"]).abs().max() / outs["fp32"].abs().max()).item()
    assert 0 < err <= F16_TOL, err
