"""Positional-scheme relatives: RoPE extension formulas, Llama-4 iRoPE, NoPE temperature, SmolLM3 block."""

import math

import pytest
import torch

from rnope import ModelConfig
from rnope.rope import inv_frequencies, llama4_temperature, rope_tables

from .conftest import TINY, tiny_model
from .test_model import _incremental

NEW_PRESETS = [
    "rope-abf", "rope-pi", "rope-ntk", "rope-yarn", "rope-resonance", "rope-fope", "p-rope",
    "llama4-irope", "rnope-swa-temp", "rnope-swa-ssmax", "smollm3",
]
D = 16


def _spec(**rope):
    """The RoPE options of a layer of the ``rope`` preset with these ``RopeOptions`` fields."""
    return ModelConfig.from_preset("rope", d_model=4 * D, n_head=4, n_kv_head=2, max_seq_len=512, rope=rope).layers[0].rope_options


def test_pi_divides_frequencies():
    inv, factor, mix = rope_tables(_spec(scaling="linear", factor=4.0), D)
    torch.testing.assert_close(inv, inv_frequencies(D, 10_000.0) / 4)
    assert factor == 1.0 and mix is None


def test_ntk_raises_base():
    inv, _, _ = rope_tables(_spec(scaling="ntk", factor=4.0), D)
    torch.testing.assert_close(inv, inv_frequencies(D, 10_000.0 * 4 ** (D / (D - 2))))


def test_yarn_extremes_and_attention_factor():
    inv, factor, _ = rope_tables(_spec(scaling="yarn", factor=8.0), D)
    base = inv_frequencies(D, 10_000.0)
    assert math.isclose(factor, 0.1 * math.log(8) + 1)
    torch.testing.assert_close(inv[0], base[0])  # highest frequency: extrapolated (kept)
    torch.testing.assert_close(inv[-1], base[-1] / 8)  # lowest frequency: interpolated


def test_resonance_rounds_wavelengths_below_original_length():
    inv, _, _ = rope_tables(_spec(scaling="resonance"), D)
    wl = 2 * math.pi / inv
    base_wl = 2 * math.pi / inv_frequencies(D, 10_000.0)
    short = base_wl < 512
    torch.testing.assert_close(wl[short], base_wl[short].round(), atol=1e-3, rtol=0)
    torch.testing.assert_close(wl[~short], base_wl[~short])


def test_fope_clips_long_periods_and_mixes():
    spec = _spec(scaling="fope")
    inv, _, mix = rope_tables(spec, D)
    base = inv_frequencies(D, 10_000.0)
    long = 2 * math.pi / base > 512
    assert (inv[long] == 0).all() and torch.equal(inv[~long], base[~long])
    assert torch.equal(torch.diagonal(mix), torch.ones(D // 2)) and mix.shape == (D // 2, D // 2)


def test_partial_rope_zeroes_lowest_frequencies():
    inv, _, _ = rope_tables(_spec(fraction=0.75), D)
    base = inv_frequencies(D, 10_000.0)
    assert torch.equal(inv[:6], base[:6]) and (inv[6:] == 0).all()


transformers = pytest.importorskip("transformers")


def _hf_inv_freq(rope_type, **params):
    from transformers import CohereConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    cfg = CohereConfig(hidden_size=4 * D, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                       rope_parameters={"rope_type": rope_type, "rope_theta": 10_000.0, **params})
    return ROPE_INIT_FUNCTIONS[rope_type](cfg, "cpu", **({"seq_len": params.pop("_seq_len")} if "_seq_len" in params else {}))


def test_matches_transformers_linear_and_yarn():
    inv_hf, f_hf = _hf_inv_freq("linear", factor=4.0)
    inv, f, _ = rope_tables(_spec(scaling="linear", factor=4.0), D)
    torch.testing.assert_close(inv, inv_hf.float())
    inv_hf, f_hf = _hf_inv_freq("yarn", factor=4.0, original_max_position_embeddings=512)
    inv, f, _ = rope_tables(_spec(scaling="yarn", factor=4.0), D)
    torch.testing.assert_close(inv, inv_hf.float())
    assert math.isclose(f, f_hf, rel_tol=1e-6)


def test_ntk_matches_transformers_dynamic_at_its_length():
    from transformers import CohereConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    # HF dynamic NTK at seq_len: base·((factor·seq_len/orig) − (factor − 1))^(d/(d−2)); at seq_len = 2·orig
    # with factor 4 the effective scale is 4·2 − 3 = 5
    cfg = CohereConfig(hidden_size=4 * D, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                       rope_parameters={"rope_type": "dynamic", "rope_theta": 10_000.0, "factor": 4.0})
    inv_hf, _ = ROPE_INIT_FUNCTIONS["dynamic"](cfg, "cpu", seq_len=1024)
    inv, _, _ = rope_tables(_spec(scaling="ntk", factor=5.0), D)
    torch.testing.assert_close(inv, inv_hf.float())


def test_llama4_temperature_formula():
    pos = torch.tensor([0, 8190, 8191, 100000])
    expect = [1.0, 1.0, 1 + 0.1 * math.log(2), 1 + 0.1 * math.log(math.floor(100001 / 8192) + 1)]
    torch.testing.assert_close(llama4_temperature(pos), torch.tensor(expect))


def test_llama4_preset_layers():
    cfg = ModelConfig.from_preset("llama4-irope")
    assert [(s.rope, s.span) for s in cfg.layers] == [(True, "chunked")] * 3 + [(False, "full")]
    assert all(s.rope_options.qk_l2norm and s.nope_options is None for s in cfg.layers[:3])
    assert cfg.layers[3].nope_options.temperature == "llama4" and cfg.layers[3].rope_options is None


@torch.no_grad()
def test_temperature_touches_only_nope_layers():
    base = tiny_model("rnope-swa", nope={"floor": 4})
    temp = tiny_model("rnope-swa", nope={"temperature": "llama4", "floor": 4})
    temp.load_state_dict(base.state_dict())
    x = torch.randint(0, TINY["vocab_size"], (1, 20))
    seen = {}

    def obs(name):
        return lambda i, spec, q, k, *a: seen.setdefault(name, {}).__setitem__(i, q.clone())

    base(x, observer=obs("base"))
    temp(x, observer=obs("temp"))
    for i in (0, 1, 2):  # RoPE layers: identical queries
        torch.testing.assert_close(seen["base"][i], seen["temp"][i])
    q0, q1 = seen["base"][3], seen["temp"][3]
    torch.testing.assert_close(q1[:, :, :3], q0[:, :, :3])  # positions 0..2: scale exactly 1
    scale = llama4_temperature(torch.arange(20), 0.1, 4)
    torch.testing.assert_close(q1, q0 * scale[None, None, :, None])


@pytest.mark.parametrize("preset", NEW_PRESETS)
@pytest.mark.parametrize("prompt_len", [TINY["window"] - 1, 3 * TINY["window"] + 5])
@torch.no_grad()
def test_cached_decode_equals_full_forward_new_presets(preset, prompt_len):
    extra = {"rope": {"original_len": 16}} if preset in ("rope-fope", "rope-resonance", "rope-yarn") else {}
    model = tiny_model(preset, nope={"floor": 8}, **extra)
    tokens = torch.randint(0, TINY["vocab_size"], (2, prompt_len + 2 * TINY["window"] + 3))
    assert (model(tokens) - _incremental(model, tokens, prompt_len)).abs().max().item() <= 1e-4


def test_smollm3_block_is_sequential_rmsnorm_half():
    model = tiny_model("smollm3")
    assert hasattr(model.layers[0], "post_attention_layernorm")
    assert type(model.norm).__name__ == "RMSNorm" and model.layers[0].self_attn.layout == "half"
    assert [s.rope for s in model.config.layers] == [True, True, True, False]
    assert model.num_params() == model.config.num_params()


def test_ssmax_has_learnable_scale_per_head():
    model = tiny_model("rnope-swa-ssmax")
    names = [n for n, _ in model.named_parameters() if "ssmax" in n]
    assert names == ["layers.3.self_attn.ssmax_scale"]
    assert model.num_params() == model.config.num_params()


@pytest.mark.parametrize("preset", ["rope-pi", "rope-yarn"])
@torch.no_grad()
def test_rope_extensions_export_to_transformers_with_parity(preset, tmp_path):
    from transformers import AutoModelForCausalLM

    from rnope.interop import export, import_hf

    model = tiny_model(preset, rope={"original_len": 16}, max_seq_len=64)
    export(model, tmp_path / "hf")
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    x = torch.randint(0, TINY["vocab_size"], (1, 60))
    assert (hf(x).logits - model(x)).abs().max().item() <= 1e-4
    back = import_hf(tmp_path / "hf", tmp_path / "back")
    from rnope import load

    again, _ = load(back)
    assert again.config == model.config


@pytest.mark.parametrize("preset,feature", [("rope-ntk", "RoPE scaling 'ntk'"), ("rope-fope", "RoPE scaling 'fope'"),
                                            ("p-rope", "partial RoPE"), ("llama4-irope", "chunked attention"),
                                            ("rnope-swa-temp", "temperature 'llama4'")])
def test_inexpressible_relatives_refused_by_name(preset, feature, tmp_path):
    from rnope.interop import export

    with pytest.raises(ValueError, match="^cannot export to Hugging Face: .*" + feature):
        export(tiny_model(preset), tmp_path / "hf")
    assert not (tmp_path / "hf").exists()
