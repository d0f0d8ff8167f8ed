"""Every fast path against its eager reference: decode kernel, static cache writes,
the static / compiled decoder, last-position logits, FlexAttention masks, the GPU check's dry run
and the benchmark's accounting."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rnope import ModelConfig, Transformer, generate
from rnope.config import LayerSpec
from rnope.decode import Decoder, compile_available, decode_step, fuse
from rnope.kernels import attend_fresh, flex, matvec_attention, matvec_linear, reference_attention, sdpa, visibility

from .conftest import CORE_PRESETS, TINY, left_padded_rows, tiny_model

W = TINY["window"]
ROOT = Path(__file__).resolve().parents[1]


def _bench_module():
    import rnope.bench

    return rnope.bench


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


# ------------------------------------------------------------------------------------ last logits
@pytest.mark.parametrize("keep", [1, 3])
def test_logits_to_keep_is_the_tail_of_the_full_logits(keep):
    model = tiny_model("rnope-swa")
    tokens = torch.randint(0, TINY["vocab_size"], (2, 2 * W + 1))
    with torch.no_grad():
        full = model(tokens)
        tail = model(tokens, logits_to_keep=keep)
        cache = model.new_cache(2, 2 * W + 1)
        cached = model(tokens, cache=cache, logits_to_keep=keep)
    assert tail.shape == (2, keep, TINY["vocab_size"])
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="logits_to_keep"):
            model(tokens, logits_to_keep=bad)
    torch.testing.assert_close(tail, full[:, -keep:])
    torch.testing.assert_close(cached, full[:, -keep:], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("preset", ["rnope-swa", "smollm3", "qknorm"])
def test_inference_in_place_block_equals_training_path(preset):
    """Without autograd the block and the MLP accumulate in place; the logits are the same."""
    model = tiny_model(preset, window=40)
    tokens = torch.randint(0, TINY["vocab_size"], (2, 150))
    train_path = model(tokens)
    with torch.no_grad():
        infer_path = model(tokens)
    with torch.inference_mode():
        infer_mode = model(tokens)
    torch.testing.assert_close(infer_path, train_path.detach(), atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(infer_mode, train_path.detach(), atol=2e-5, rtol=1e-5)


def test_backward_through_the_model_is_unchanged_by_the_fast_paths():
    """Training path (fresh attention) gradients equal the reference kernel's."""
    model = tiny_model("rnope-swa")
    tokens = torch.randint(0, TINY["vocab_size"], (2, 3 * W + 5))
    grads = {}
    for impl in ("auto", "reference"):
        model.zero_grad(set_to_none=True)
        model.attn_impl = impl
        model(tokens).square().mean().backward()
        grads[impl] = [p.grad.clone() for p in model.parameters()]
    for a, b in zip(grads["auto"], grads["reference"]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


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


# ------------------------------------------------------------------------------------ GPU check script
def test_gpu_check_skips_cleanly_without_cuda_and_dry_run_passes(tmp_path):
    script = ROOT / "benchmarks" / "gpu_check.py"
    if not torch.cuda.is_available():
        r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout.strip().splitlines()[-1]) == {"skipped": "no CUDA device", "torch": torch.__version__}
    out = tmp_path / "gpu.json"
    r = subprocess.run([sys.executable, str(script), "--dry-run", "--steps", "2", "--profile", "--json", str(out)], capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["ok"] and summary == json.loads(out.read_text())
    kern = summary["kernels"]
    for key in ("flex/sliding/float32", "flex/chunked/float32", "flex/causal/float32", "sdpa_blockwise/sliding/float32"):
        assert kern[key]["ok"] and kern[key]["fwd_maxerr"] < 1e-4, key
    assert summary["model"]["decode_eager"]["maxerr"] < 1e-4
    for v in summary["train"]["variants"].values():
        assert v["loss_finite"] and v["tok_per_s"] > 0 and 0 < v["mfu_vs_measured_mm"] < 1
        assert v["loss_in_graph"] and v["compile_mode"] == "default"
        prof = v["profile"]  # --profile: the kernels' time shares add up, the top list is sorted
        assert abs(sum(prof["share"].values()) - 1) < 1e-6 and set(prof["share"]) <= {"matmul", "attention", "other"}
        tops = [t["ms_per_step"] for t in prof["top"]]
        assert tops and tops == sorted(tops, reverse=True) and prof["share"].get("matmul", 0) > 0


# ------------------------------------------------------------------------------------ benchmark accounting
def test_bench_flops_per_token_counts_visible_keys():
    bench = _bench_module()
    cfg = ModelConfig.from_preset("rnope-swa", vocab_size=10, n_layer=4, d_model=8, n_head=2, n_kv_head=1, d_ff=16, window=2)
    fpt, n = bench.train_flops_per_token(cfg, 4)
    per_layer = 8 * 8 * 2 + 8 * 4 * 2 + 3 * 8 * 16  # q, o; k, v; gate, up, down
    assert n == 4 * per_layer + 10 * 8
    sliding_keys = (1 + 2 + 2 + 2) / 4  # min(t+1, W) for t = 0..3
    full_keys = (4 + 1) / 2
    assert fpt == pytest.approx(6 * n + 12 * 8 * (3 * sliding_keys + full_keys))


def test_bench_kv_part_and_targets_table(tmp_path):
    bench = _bench_module()
    res = bench.run(out=str(tmp_path / "b.json"), parts=("kv",), hf=False, compile=False, lengths=[128, 512, 2048])
    kv = res["kv_cache"]["rnope-swa"]
    for L, row in kv.items():
        assert row["theory"] == pytest.approx(0.25 + 0.75 * 128 / int(L))
        assert abs(row["rel_error"]) < 1e-9  # the cache holds exactly n_global·L + n_sliding·W positions
    assert all(r["fraction"] == 1.0 for r in res["kv_cache"]["rope"].values())
    (row,) = [t for t in res["targets"] if t["target"].startswith("KV bytes")]
    assert row["met"]
    assert json.loads((tmp_path / "b.json").read_text())["kv_cache"]["rnope-swa"]["512"]["bytes"] == kv["512"]["bytes"]
    assert "KV cache" in bench.markdown(res)


def test_bench_cli_rejects_bad_arguments(tmp_path, capsys):
    from rnope.cli import main

    assert main(["bench", "--out", str(tmp_path / "b"), "--only", "nonsense"]) == 2
    assert "unknown part" in capsys.readouterr().err
    (tmp_path / "f").write_text("x")
    assert main(["bench", "--out", str(tmp_path / "f")]) == 2  # --out is a directory, as everywhere
    assert capsys.readouterr().err.strip() == f"rnope: error: --out '{tmp_path / 'f'}' exists and is not a directory"
    assert main(["bench", "--out", str(tmp_path / "b"), "--threads", "0"]) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]  # nothing written


def test_bench_llamacpp_part_is_skipped_cleanly_without_llama_bench(tmp_path, monkeypatch, capsys):
    from rnope.bench_llamacpp import bench_llamacpp, find_llama_bench, markdown
    from rnope.cli import main

    monkeypatch.delenv("RNOPE_LLAMA_BENCH", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))  # no llama-bench anywhere
    assert find_llama_bench(str(tmp_path / "nope")) is None
    res = bench_llamacpp()
    assert res == {"skipped": "llama-bench not found (--llama-bench PATH, RNOPE_LLAMA_BENCH, or PATH)"}
    assert markdown(res) == "llama.cpp comparison skipped: llama-bench not found (--llama-bench PATH, RNOPE_LLAMA_BENCH, or PATH)"
    fake = tmp_path / "llama-bench"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    assert find_llama_bench() == fake  # found on PATH
    fake.unlink()
    assert main(["bench", "--out", str(tmp_path / "b"), "--only", "llamacpp", "--no-hf", "--no-compile"]) == 0
    doc = json.loads((tmp_path / "b" / "bench.json").read_text())
    assert doc["llamacpp"] == res
    assert "llama.cpp comparison skipped" in capsys.readouterr().out


def test_bench_long_context_part_kv_bytes_are_exactly_the_paper_fraction():
    """Each model in its own process: at a 600-token prompt + 4 new tokens the hybrid cache holds
    exactly 0.25 + 0.75·W/L of rope's bytes (W = 512); the figures it reports are positive."""
    bench = _bench_module()
    res = bench.bench_long(600, new_tokens=4, threads=1)
    assert res["kv_theory"] == pytest.approx(0.25 + 0.75 * 512 / 604) and res["kv_fraction"] == pytest.approx(res["kv_theory"], abs=1e-12)
    for p in ("rnope-swa", "rope"):
        r = res[p]
        assert r["prefill_s"] > 0 and r["decode_tok_s"] > 0 and r["peak_rss_bytes"] >= r["rss_model_bytes"] > 0
        assert r["parameters"] == res["rope"]["parameters"]  # the same shape
    rows = [t for t in bench.targets({"long": res}) if "KV bytes" in t["target"]]
    assert len(rows) == 1 and rows[0]["met"]
