import json

import pytest
import torch

from rnope import ModelConfig, Transformer
from rnope.config import PRESETS, NopeOptions, RopeOptions


def test_rnope_swa_pattern_is_local_local_local_global():
    cfg = ModelConfig.from_preset("rnope-swa", n_layer=8, window=64)
    kinds = [(s.rope, s.span, s.window) for s in cfg.layers]
    assert kinds == [(True, "sliding", 64)] * 3 + [(False, "full", None)] + [(True, "sliding", 64)] * 3 + [(False, "full", None)]
    # HF cohere2 convention: layer i is full iff (i+1) % 4 == 0
    assert [s.is_global for s in cfg.layers] == [(i + 1) % 4 == 0 for i in range(8)]
    assert all(not s.qk_norm for s in cfg.layers) and cfg.rope.theta == 10_000
    assert cfg.n_kv_head < cfg.n_head  # GQA


@pytest.mark.parametrize(
    "preset,expect",
    [
        ("rope", (True, "full", False)),
        ("nope", (False, "full", False)),
        ("qknorm", (True, "full", True)),
        ("swa", (True, "sliding", False)),
    ],
)
def test_uniform_presets(preset, expect):
    cfg = ModelConfig.from_preset(preset, n_layer=5)
    assert {(s.rope, s.span, s.qk_norm) for s in cfg.layers} == {expect}


def test_rnope_is_three_rope_full_one_nope_full():
    cfg = ModelConfig.from_preset("rnope", n_layer=4)
    assert [(s.rope, s.span) for s in cfg.layers] == [(True, "full")] * 3 + [(False, "full")]
    assert ModelConfig.from_preset("rnope", rope={"theta": 2e6}).layers[0].rope_options.theta == 2e6


def test_global_layer_never_inherits_window():
    cfg = ModelConfig.from_preset("rnope-swa", window=16)
    g = [s for s in cfg.layers if s.is_global]
    assert g and all(s.window is None and not s.rope for s in g)


def test_command_r7b_parameter_count_on_meta():
    cfg = ModelConfig.from_preset("command-r7b")
    with torch.device("meta"):
        model = Transformer(cfg)
    n = sum(p.numel() for p in model.parameters())
    assert n == cfg.num_params() == 8_028_033_024  # ≈ 8.03 B, published for Command R7B
    assert (cfg.n_layer, cfg.d_model, cfg.n_head, cfg.n_kv_head, cfg.d_ff, cfg.vocab_size) == (32, 4096, 32, 8, 14336, 256000)
    assert (cfg.window, cfg.rope.theta, cfg.logit_scale, cfg.tie_embeddings) == (4096, 50000.0, 0.25, True)


def test_num_params_formula_matches_module_for_every_preset():
    for name in PRESETS:
        if name == "command-r7b":
            continue
        cfg = ModelConfig.from_preset(name)
        assert Transformer(cfg).num_params() == cfg.num_params(), name


@pytest.mark.parametrize(
    "overrides,message",
    [
        (dict(n_head=3), "n_head=3 does not divide d_model=128"),
        (dict(n_kv_head=3), "n_kv_head=3 does not divide n_head=4"),
        (dict(window=0), "window must be >= 1, got 0"),
        (dict(n_layer=0), "n_layer must be >= 1, got 0"),
        (dict(pattern="SSXN"), "pattern 'SSXN': unknown letter 'X' (known: S, R, Q, C, N, W)"),
        (dict(vocab_size=2.5), "vocab_size must be an integer, got 2.5"),
        (dict(rope={"theta": -1.0}), "rope_theta must be a positive number, got -1.0"),
        (dict(rope={"scaling": "xpos"}), "rope_scaling must be one of none, linear, ntk, yarn, resonance, fope, got 'xpos'"),
        (dict(rope={"factor": 0.5}), "rope_factor must be >= 1, got 0.5"),
        (dict(rope={"fraction": 0.0}), "rope_fraction must be in (0, 1], got 0.0"),
        (dict(rope={"original_len": -1}), "rope_original_len must be an integer >= 0, got -1"),
        (dict(nope={"temperature": "hot"}), "nope_temperature must be one of none, llama4, log, ssmax, got 'hot'"),
        (dict(nope={"floor": 0}), "attn_temp_floor must be an integer >= 1, got 0"),
        (dict(nope={"scale": -0.1}), "attn_temp_scale must be a number >= 0, got -0.1"),
        (dict(rope={"factr": 4}), "unknown model config key 'rope.factr' (known: rope.factor, rope.fope_sigma, rope.fraction, "
                                  "rope.original_len, rope.qk_l2norm, rope.scaling, rope.theta)"),
        (dict(rope=4), "rope must be a mapping of RopeOptions fields, got int"),
        (dict(d_model=132, n_head=44, n_kv_head=4), "head_dim=3 (d_model/n_head) must be even for RoPE"),
        (dict(foo=1), "unknown model config key 'foo'"),
    ],
)
def test_validation_names_field_and_value(overrides, message):
    with pytest.raises(ValueError) as e:
        ModelConfig.from_preset("rnope-swa", **overrides)
    assert str(e.value).startswith(message)


def test_unknown_preset():
    with pytest.raises(ValueError, match=r"^unknown preset 'rnope_swa' \(known: command-r7b, "):
        ModelConfig.from_preset("rnope_swa")


def test_frozen_and_json_round_trip():
    cfg = ModelConfig.from_preset("rnope-swa", window=32, max_seq_len=512)
    with pytest.raises(Exception):
        cfg.window = 3  # type: ignore[misc]
    again = ModelConfig.from_dict(json.loads(cfg.to_json()))
    assert again == cfg and again.layers == cfg.layers


def test_kv_positions_formula():
    cfg = ModelConfig.from_preset("rnope-swa", n_layer=8, window=100)
    for L in (1, 50, 100, 101, 4096):
        assert cfg.kv_positions(L) == 2 * L + 6 * min(100, L)


def test_options_are_nested_and_layers_carry_their_kind():
    cfg = ModelConfig.from_preset("llama4-irope", max_seq_len=512)
    assert cfg.rope == RopeOptions(qk_l2norm=True) and cfg.nope == NopeOptions(temperature="llama4")
    rope_layer, nope_layer = cfg.layers[0], cfg.layers[3]
    # a RoPE layer's options are the model's with original_len resolved to max_seq_len (0 = max_seq_len)
    assert rope_layer.rope_options == RopeOptions(qk_l2norm=True, original_len=512) and rope_layer.nope_options is None
    assert nope_layer.nope_options is cfg.nope and nope_layer.rope_options is None
    assert ModelConfig.from_preset("rope-yarn", rope={"original_len": 64}).layers[0].rope_options.original_len == 64
    with pytest.raises(AttributeError):
        cfg.rope.theta = 1.0  # type: ignore[misc]


def test_nested_to_dict_from_dict_round_trip():
    cfg = ModelConfig.from_preset("rope-yarn", rope={"original_len": 64, "theta": 5e5}, nope={"temperature": "log", "floor": 256})
    d = cfg.to_dict()
    assert d["rope"] == {"theta": 5e5, "scaling": "yarn", "factor": 4.0, "original_len": 64, "fope_sigma": 0.1,
                         "fraction": 1.0, "qk_l2norm": False}
    assert d["nope"] == {"temperature": "log", "scale": 0.1, "floor": 256}
    assert not any(k.startswith(("rope_theta", "rope_scaling", "nope_temperature", "attn_temp")) for k in d)
    again = ModelConfig.from_dict(json.loads(json.dumps(d)))
    assert again == cfg and hash(again) == hash(cfg) and again.layers == cfg.layers


def test_old_flat_names_are_accepted():
    # an old checkpoint's config.json: the options as flat fields
    old = {"vocab_size": 259, "n_layer": 4, "d_model": 128, "n_head": 4, "n_kv_head": 2, "d_ff": 384, "max_seq_len": 2048,
           "pattern": "SSSN", "window": 128, "chunk_size": 256, "rope_theta": 10000.0, "logit_scale": 1.0, "norm_eps": 1e-5,
           "tie_embeddings": True, "init_std": 0.02, "block": "parallel", "norm": "layernorm", "rope_layout": "interleaved",
           "qkv_bias": False, "rope_scaling": "yarn", "rope_factor": 4.0, "rope_original_len": 64, "rope_fope_sigma": 0.1,
           "rope_fraction": 1.0, "rope_qk_l2norm": False, "nope_temperature": "llama4", "attn_temp_scale": 0.2,
           "attn_temp_floor": 16}
    cfg = ModelConfig.from_dict(old)
    assert cfg.rope == RopeOptions(scaling="yarn", factor=4.0, original_len=64)
    assert cfg.nope == NopeOptions(temperature="llama4", scale=0.2, floor=16)
    assert cfg == ModelConfig.from_preset("rnope-swa", rope={"scaling": "yarn", "factor": 4.0, "original_len": 64},
                                          nope={"temperature": "llama4", "scale": 0.2, "floor": 16})
    # flat keyword overrides of from_preset and replace merge into the nested options
    flat = ModelConfig.from_preset("rope-yarn", rope_factor=8.0, attn_temp_floor=4)
    assert (flat.rope.scaling, flat.rope.factor, flat.nope.floor) == ("yarn", 8.0, 4)
    assert flat.replace(rope_theta=2e6).rope == RopeOptions(theta=2e6, scaling="yarn", factor=8.0)
    # a flat name and its nested twin may both be given when they agree
    assert ModelConfig.from_preset("rope", rope_factor=2.0, rope={"factor": 2.0}).rope.factor == 2.0


def test_override_paths_merge_option_by_option():
    cfg = ModelConfig.from_preset("rope-yarn")
    assert cfg.replace(rope={"factor": 2.0}).rope == RopeOptions(scaling="yarn", factor=2.0)  # a mapping merges
    assert cfg.replace(rope=RopeOptions(factor=2.0)).rope == RopeOptions(factor=2.0)  # an object replaces the group
    assert ModelConfig(rope={"theta": 5e5}).rope == RopeOptions(theta=5e5)  # the constructor takes a mapping too


@pytest.mark.parametrize(
    "overrides,message",
    [
        (dict(rope_factor=2.0, rope={"factor": 4.0}),
         "rope_factor=2.0 and rope.factor=4.0 name the same option with different values; give one of them"),
        (dict(nope_temperature="log", nope=NopeOptions()),
         "nope_temperature='log' and nope.temperature='none' name the same option with different values; give one of them"),
    ],
)
def test_flat_and_nested_conflict(overrides, message):
    with pytest.raises(ValueError) as e:
        ModelConfig.from_preset("rope", **overrides)
    assert str(e.value) == message
    with pytest.raises(ValueError) as e:
        ModelConfig.from_dict({**ModelConfig().to_dict(), **overrides})
    assert str(e.value) == message


def test_cli_model_overrides_parse_nested_and_flat_options():
    from rnope.cli import model_overrides

    got = model_overrides(["--model.rope.factor", "4", "--model.nope.temperature=log", "--model.rope.qk_l2norm", "true",
                           "--model.nope.floor", "256", "--model.rope_theta", "5e5", "--model.window", "64"])
    assert got == {"rope": {"factor": 4.0, "qk_l2norm": True}, "nope": {"temperature": "log", "floor": 256},
                   "rope_theta": 500000.0, "window": 64}
    assert type(got["rope"]["factor"]) is float and type(got["nope"]["floor"]) is int
    cfg = ModelConfig.from_preset("rope-yarn", **got)
    assert cfg.rope == RopeOptions(theta=5e5, scaling="yarn", factor=4.0, qk_l2norm=True)
    assert cfg.nope == NopeOptions(temperature="log", floor=256)
    assert model_overrides(["--model.rope_factor", "4"]) == {"rope_factor": 4.0}  # the flat spelling of older scripts


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--model.rope.factr", "4"], "unknown model config key 'rope.factr' (known: rope.factor, rope.fope_sigma, "
                                      "rope.fraction, rope.original_len, rope.qk_l2norm, rope.scaling, rope.theta)"),
        (["--model.nope.temp", "log"], "unknown model config key 'nope.temp' (known: nope.floor, nope.scale, nope.temperature)"),
        (["--model.rope.factor", "big"], "--model.rope.factor: 'big' is not a valid float"),
        (["--model.rope", "4"], "--model.rope takes an option: --model.rope.NAME VALUE (known: rope.factor, rope.fope_sigma, "
                                "rope.fraction, rope.original_len, rope.qk_l2norm, rope.scaling, rope.theta)"),
    ],
)
def test_cli_model_overrides_refuse_unknown_nested_fields(argv, message):
    from rnope.cli import model_overrides

    with pytest.raises(ValueError) as e:
        model_overrides(argv)
    assert str(e.value) == message


def _info(capsys, *argv) -> dict:
    from rnope.cli import main

    assert main(["info", *argv]) == 0
    return json.loads(capsys.readouterr().out.split("\nlayers:")[0])


def test_cli_info_takes_nested_and_flat_options(capsys):
    from rnope.cli import main

    nested = _info(capsys, "--preset", "rope-yarn", "--model.rope.factor", "8", "--model.rope.original_len", "512")
    assert nested["rope"] == {**ModelConfig().to_dict()["rope"], "scaling": "yarn", "factor": 8.0, "original_len": 512}
    assert _info(capsys, "--preset", "rope-yarn", "--model.rope_factor", "8", "--model.rope_original_len", "512") == nested
    assert main(["info", "--preset", "rope", "--model.rope_factor", "2", "--model.rope.factor", "4"]) == 2
    assert capsys.readouterr().err.strip() == ("rnope: error: rope_factor=2.0 and rope.factor=4.0 name the same option "
                                               "with different values; give one of them")
    assert main(["info", "--preset", "rope", "--model.nope.floor", "x"]) == 2
    assert capsys.readouterr().err.strip() == "rnope: error: --model.nope.floor: 'x' is not a valid int"
