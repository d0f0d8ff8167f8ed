import json

import pytest
import torch

from rnope import ModelConfig, Transformer
from rnope.config import PRESETS


def test_rnope_swa_pattern_is_local_local_local_global():
    cfg = ModelConfig.from_preset("rnope-swa", n_layer=8, window=64)
    kinds = [(s.rope, s.span, s.window) for s in cfg.layers]
    assert kinds == [(True, "sliding", 64)] * 3 + [(False, "full", None)] + [(True, "sliding", 64)] * 3 + [(False, "full", None)]
    # HF cohere2 convention: layer i is full iff (i+1) % 4 == 0
    assert [s.is_global for s in cfg.layers] == [(i + 1) % 4 == 0 for i in range(8)]
    assert all(not s.qk_norm for s in cfg.layers) and cfg.rope_theta == 10_000
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
    assert ModelConfig.from_preset("rnope", rope_theta=2e6).layers[0].rope_theta == 2e6


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
    assert (cfg.window, cfg.rope_theta, cfg.logit_scale, cfg.tie_embeddings) == (4096, 50000.0, 0.25, True)


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
        (dict(rope_theta=-1.0), "rope_theta must be a positive number, got -1.0"),
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
