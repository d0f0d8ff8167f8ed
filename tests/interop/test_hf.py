"""Hugging Face interop: export to cohere / cohere2, import back, parity with transformers."""

from __future__ import annotations

import json
import re
import shutil
from functools import partial

import pytest
import torch

transformers = pytest.importorskip("transformers")

import rnope  # noqa: E402
from rnope import Transformer, generate  # noqa: E402
from rnope.checkpoint import CheckpointError  # noqa: E402
from rnope.cli import main  # noqa: E402
from rnope.interop import export, import_hf, load_hf  # noqa: E402
from rnope.tokenizer import Tokenizer  # noqa: E402

from ..conftest import sharp_random_model  # noqa: E402
from .hfcheck import hf_greedy, hf_model, leftovers, max_logit_delta, prompt_ids  # noqa: E402

W = 8
SHAPE = dict(vocab_size=259, n_layer=4, d_model=64, n_head=4, n_kv_head=2, d_ff=128, max_seq_len=256, window=W, logit_scale=0.5)
PRESETS = ["rope", "qknorm", "nope", "rnope", "rnope-swa"]
TOL = 1e-4
MAX_DELTA: dict[str, float] = {}  # preset -> measured max |Δ| (printed with -s)


def random_model(preset: str, seed: int = 0, **overrides) -> Transformer:
    return sharp_random_model(preset, SHAPE, seed, **overrides)


prompt_ids = partial(prompt_ids, vocab=259)


# ---------------------------------------------------------------------------------------------
# export -> transformers parity
@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    tok = Tokenizer.byte_level()
    out = {}
    for preset in PRESETS:
        model = random_model(preset)
        out[preset] = (model, export(model, root / preset, tok, log=None))
    return out


@pytest.mark.parametrize("preset", PRESETS)
@torch.no_grad()
def test_export_logits_match_transformers(exported, preset):
    model, d = exported[preset]
    meta = json.loads((d / "config.json").read_text())
    assert meta["model_type"] == ("cohere" if preset in ("rope", "qknorm") else "cohere2")
    x = prompt_ids(4 * W + 3, batch=2)  # > 3 windows
    ours = model(x)
    worst = max_logit_delta(d, x, ours, "CohereForCausalLM" if meta["model_type"] == "cohere" else "Cohere2ForCausalLM")
    MAX_DELTA[preset] = worst
    print(f"\n{preset}: max |Δ logits| vs transformers (eager, sdpa) = {worst:.2e}")
    assert worst <= TOL


@pytest.mark.parametrize("preset", PRESETS)
def test_export_greedy_generate_matches_transformers(exported, preset):
    model, d = exported[preset]
    prompt = prompt_ids(3 * W + 2, seed=2)[0].tolist()
    ours = generate(model, [prompt], 64)[0]
    theirs = hf_greedy(hf_model(d, "sdpa"), prompt, 64)
    assert len(theirs) == 64 and theirs == ours


def test_export_files_and_tokenizer(exported):
    from transformers import AutoConfig, AutoTokenizer, GenerationConfig

    model, d = exported["rnope-swa"]
    assert sorted(p.name for p in d.iterdir()) == [
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "special_tokens_map.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    meta = json.loads((d / "config.json").read_text())
    assert meta["layer_types"] == ["sliding_attention"] * 3 + ["full_attention"]
    assert meta["sliding_window"] == W and meta["sliding_window_pattern"] == 4 and meta["rotary_pct"] == 1.0
    assert (meta["bos_token_id"], meta["eos_token_id"], meta["pad_token_id"]) == (1, 2, 0)
    assert "auto_map" not in meta
    cfg = AutoConfig.from_pretrained(d)
    assert cfg.rope_parameters == {"rope_type": "default", "rope_theta": 10000.0}
    assert cfg.logit_scale == 0.5 and cfg.tie_word_embeddings
    gen = GenerationConfig.from_pretrained(d)
    assert (gen.bos_token_id, gen.eos_token_id, gen.pad_token_id) == (1, 2, 0)
    from safetensors import safe_open

    with safe_open(str(d / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
        assert f.metadata() == {"format": "pt"}
    assert "lm_head.weight" not in keys and "model.embed_tokens.weight" in keys
    assert keys == {"model." + k for k in model.state_dict()}

    tok, hft = Tokenizer.byte_level(), AutoTokenizer.from_pretrained(d)
    assert (hft.bos_token, hft.eos_token, hft.pad_token) == ("<bos>", "<eos>", "<pad>")
    assert (hft.bos_token_id, hft.eos_token_id, hft.pad_token_id) == (1, 2, 0)
    for s in ["héllo wörld\n  x", "a literal <eos> stays text", "emoji 👋🏽"]:
        assert hft(s).input_ids == tok.encode(s)
        assert hft.decode(tok.encode(s)) == s


def test_export_qknorm_and_rnope_config(exported):
    meta = json.loads((exported["qknorm"][1] / "config.json").read_text())
    assert meta["use_qk_norm"] is True and "layer_types" not in meta
    from safetensors import safe_open

    with safe_open(str(exported["qknorm"][1] / "model.safetensors"), "pt") as f:
        assert tuple(f.get_slice("model.layers.0.self_attn.q_norm.weight").get_shape()) == (4, 16)
        assert tuple(f.get_slice("model.layers.0.self_attn.k_norm.weight").get_shape()) == (2, 16)
    # RRRN: the RoPE layers become sliding layers whose window covers every position
    meta = json.loads((exported["rnope"][1] / "config.json").read_text())
    assert meta["layer_types"] == ["sliding_attention"] * 3 + ["full_attention"]
    assert meta["sliding_window"] == meta["max_position_embeddings"] == SHAPE["max_seq_len"]


@torch.no_grad()
def test_rope_full_layer_as_sliding_is_exact_at_max_position(tmp_path):
    """RRRN with T == max_seq_len: a window of max_seq_len keys masks nothing anywhere."""
    model = random_model("rnope", max_seq_len=40)
    d = export(model, tmp_path / "hf", log=None)
    x = prompt_ids(40)
    assert (hf_model(d)(x).logits - model(x)).abs().max().item() <= TOL


@torch.no_grad()
def test_untied_embeddings_export(tmp_path):
    model = random_model("rnope-swa", tie_embeddings=False)
    d = export(model, tmp_path / "hf", log=None)
    from safetensors import safe_open

    with safe_open(str(d / "model.safetensors"), "pt") as f:
        assert "lm_head.weight" in set(f.keys())
    x = prompt_ids(30)
    assert (hf_model(d)(x).logits - model(x)).abs().max().item() <= TOL
    again, _ = rnope.load(d)
    assert again.config == model.config and torch.equal(again.lm_head.weight, model.lm_head.weight)


# ---------------------------------------------------------------------------------------------
# the window off-by-one: W keys including the query itself, in both libraries
@torch.no_grad()
def test_sliding_window_boundary_matches_hf(tmp_path):
    model = random_model("swa", n_layer=1)
    d = export(model, tmp_path / "hf", log=None)
    hf = hf_model(d, "eager")
    hf_sdpa = hf_model(d, "sdpa")
    t = 3 * W + 1
    x = prompt_ids(t + 4)

    def perturbed(i):
        y = x.clone()
        y[0, i] = 3 + (int(y[0, i]) - 3 + 100) % 256
        return y

    for fwd in (model, lambda z: hf(z).logits, lambda z: hf_sdpa(z).logits):
        base = fwd(x)[0, t]
        assert torch.equal(fwd(perturbed(t - W))[0, t], base)  # outside the window: no effect at all
        assert (fwd(perturbed(t - W + 1))[0, t] - base).abs().max() > 1e-2  # the oldest key in the window


# ---------------------------------------------------------------------------------------------
# import of transformers-initialised checkpoints
def _randomize_norms(m):
    with torch.no_grad():
        for name, p in m.named_parameters():
            if "norm" in name:
                p.normal_(1.0, 0.2)


@torch.no_grad()
def test_import_transformers_cohere2(tmp_path):
    from transformers import Cohere2Config, Cohere2ForCausalLM

    torch.manual_seed(0)
    cfg = Cohere2Config(
        vocab_size=259, hidden_size=64, intermediate_size=96, num_hidden_layers=6, num_attention_heads=4,
        num_key_value_heads=2, sliding_window=W, max_position_embeddings=128, logit_scale=0.25,
        initializer_range=0.3, pad_token_id=0, bos_token_id=1, eos_token_id=2,
        rope_parameters={"rope_type": "default", "rope_theta": 5000.0},
    )
    hf = Cohere2ForCausalLM(cfg).eval()
    _randomize_norms(hf)
    hf.save_pretrained(tmp_path / "hf")
    Tokenizer.byte_level().save(tmp_path / "hf" / "tokenizer.json")
    model, tok = rnope.load(tmp_path / "hf")
    c = model.config
    assert (c.pattern, c.n_layer, c.window, c.rope.theta, c.logit_scale, c.max_seq_len) == ("SSSN", 6, W, 5000.0, 0.25, 128)
    assert tok is not None and tok.eos_id == 2
    x = prompt_ids(4 * W, batch=2)
    delta = (hf(x).logits - model(x)).abs().max().item()
    print(f"\nimported cohere2: max |Δ logits| = {delta:.2e}")
    assert delta <= TOL
    # import to an rnope checkpoint, then export again: the same HF tensors, bit for bit
    ck = import_hf(tmp_path / "hf", tmp_path / "ck", log=None)
    back = export(ck, tmp_path / "hf2", log=None)
    from safetensors.torch import load_file

    a, b = load_file(str(tmp_path / "hf" / "model.safetensors")), load_file(str(back / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@torch.no_grad()
def test_import_sharded_cohere_qk_norm(tmp_path, capsys):
    from transformers import CohereConfig, CohereForCausalLM

    torch.manual_seed(1)
    cfg = CohereConfig(
        vocab_size=259, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, use_qk_norm=True, max_position_embeddings=128, logit_scale=0.5,
        initializer_range=0.3, rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )
    hf = CohereForCausalLM(cfg).eval()
    _randomize_norms(hf)
    hf.save_pretrained(tmp_path / "hf", max_shard_size="60KB")
    assert (tmp_path / "hf" / "model.safetensors.index.json").exists()
    model, tok = load_hf(tmp_path / "hf")
    assert tok is None and "no tokenizer.json: imported without a tokenizer" in capsys.readouterr().err
    assert model.config.pattern == "Q" and model.config.layers[0].qk_norm
    x = prompt_ids(3 * W, batch=2)
    delta = (hf(x).logits - model(x)).abs().max().item()
    print(f"\nimported cohere+qk_norm (sharded): max |Δ logits| = {delta:.2e}")
    assert delta <= TOL


@pytest.mark.parametrize("preset", PRESETS + ["swa"])
def test_round_trip_export_import_is_exact(tmp_path, preset):
    model = random_model(preset, chunk_size=77, init_std=0.01)
    tok = Tokenizer.byte_level()
    rnope.save(tmp_path / "ck", model, tok)
    export(tmp_path / "ck", tmp_path / "hf", log=None)
    import_hf(tmp_path / "hf", tmp_path / "ck2", log=None)
    again, tok2 = rnope.load(tmp_path / "ck2")
    assert again.config == model.config
    a, b = model.state_dict(), again.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert tok2.to_json() == tok.to_json()


def test_import_reads_an_older_rnope_section_with_flat_option_names(tmp_path):
    from ..test_checkpoint import flat_model_dict

    model = random_model("rnope-swa", chunk_size=77)  # chunk_size lives in the rnope section only
    d = export(model, tmp_path / "hf", log=None)
    meta = json.loads((d / "config.json").read_text())
    assert meta["rnope"]["model"]["rope"]["theta"] == 10_000.0
    meta["rnope"]["model"] = flat_model_dict(meta["rnope"]["model"])
    (d / "config.json").write_text(json.dumps(meta))
    assert load_hf(d, log=None)[0].config == model.config


def test_import_without_rnope_section_derives_the_config(tmp_path):
    model = random_model("rnope-swa", n_layer=6)
    d = export(model, tmp_path / "hf", log=None)
    meta = json.loads((d / "config.json").read_text())
    del meta["rnope"]
    (d / "config.json").write_text(json.dumps(meta))
    again, _ = load_hf(d, log=None)
    assert again.config == model.config  # SSSNSS -> period "SSSN"
    # a sliding window that covers max_position_embeddings is a full RoPE layer: 'R'
    meta["sliding_window"] = meta["max_position_embeddings"]
    (d / "config.json").write_text(json.dumps(meta))
    assert load_hf(d, log=None)[0].config.pattern == "RRRN"


# ---------------------------------------------------------------------------------------------
# refusals
@pytest.mark.parametrize(
    "pattern,message",
    [
        ("SSSC", "layer 3 uses chunked attention, which cohere/cohere2 cannot express"),
        ("WN", "layer 0 is a NoPE sliding-window layer, which cohere/cohere2 cannot express"),
        ("QR", "layer 0 uses QK-norm but layer 1 does not"),
        ("RS", "layer 0 is a full-attention RoPE layer and layer 1 a sliding-window RoPE layer"),
    ],
)
def test_export_refuses_what_hf_cannot_express(tmp_path, pattern, message):
    model = random_model("rope", pattern=pattern)
    with pytest.raises(ValueError, match="^cannot export to Hugging Face: " + message):
        export(model, tmp_path / "hf", log=None)
    assert not (tmp_path / "hf").exists() and not leftovers(tmp_path, "hf")


# features of the core's other architectures / positional relatives that cohere/cohere2 lack
_FEATURES = [
    ("rope-ntk", {}, "layer 0 uses RoPE scaling 'ntk', which transformers' rope_parameters cannot express (exportable: none, linear, yarn)"),
    ("p-rope", {}, "layer 0 uses partial RoPE (rope_fraction=0.75)"),
    ("rnope-swa-temp", {}, "layer 3 scales NoPE queries by temperature 'llama4'"),
    ("rnope-swa-ssmax", {}, "layer 3 scales NoPE queries by temperature 'ssmax'"),
    ("rope", {"norm": "rmsnorm"}, "norm='rmsnorm', which cohere/cohere2 cannot express"),  # sequential blocks export as smollm3
    ("rope", {"qkv_bias": True}, "config field qkv_bias=True has no cohere/cohere2 equivalent"),
    ("rope", {"rope_layout": "half"}, "rope_layout='half', which cohere/cohere2 cannot express"),
    ("llama4-irope", {}, "layer 0 uses chunked attention"),
]


@pytest.mark.parametrize("preset,overrides,message", _FEATURES, ids=[f[0] + str(i) for i, f in enumerate(_FEATURES)])
def test_export_refuses_core_features_cohere_lacks(tmp_path, preset, overrides, message):
    if preset not in rnope.PRESETS:
        pytest.skip(f"preset {preset} not in this build")
    try:
        model = random_model(preset, **overrides)
    except (TypeError, ValueError) as e:  # the field is not part of this build's ModelConfig
        pytest.skip(str(e))
    with pytest.raises(ValueError, match="^cannot export to Hugging Face: " + re.escape(message)):
        export(model, tmp_path / "hf", log=None)
    assert not (tmp_path / "hf").exists()


@pytest.fixture()
def hf_dir(tmp_path):
    return export(random_model("rnope-swa"), tmp_path / "hf", log=None)


def _edit(d, **changes):
    meta = json.loads((d / "config.json").read_text())
    for k, v in changes.items():
        if v is None:
            meta.pop(k, None)
        else:
            meta[k] = v
    (d / "config.json").write_text(json.dumps(meta))


@pytest.mark.parametrize(
    "changes,message",
    [
        (dict(model_type="gpt2"), "unsupported model_type 'gpt2' in {cfg} (supported: cohere, cohere2, llama, mistral, qwen2, qwen3, smollm3)"),
        (dict(auto_map={"AutoModelForCausalLM": "x.Y"}), "{cfg}: 'auto_map' asks for remote code (trust_remote_code), which rnope never runs"),
        (dict(rope_scaling={"rope_type": "dynamic", "factor": 4.0}), "{cfg}: 'rope_scaling' type 'dynamic' changes the math and rnope does not implement it (only default, linear, yarn)"),
        (dict(rope_parameters={"rope_type": "yarn", "factor": 2.0, "rope_theta": 1e4, "beta_fast": 16}), "{cfg}: 'rope_parameters' yarn beta_fast=16 is not supported (rnope implements beta_fast=32)"),
        (dict(attention_bias=True), "{cfg}: 'attention_bias': true changes the math and rnope does not implement biases"),
        (dict(head_dim=32), "{cfg}: head_dim 32 != hidden_size/num_attention_heads = 16"),
        (dict(rotary_pct=0.5), "{cfg}: rotary_pct 0.5 is not supported (rnope rotates the whole head)"),
        (dict(hidden_act="gelu"), "{cfg}: hidden_act 'gelu' is not supported"),
        (dict(sliding_window_pattern=2), "{cfg}: sliding_window_pattern 2 disagrees with layer_types (layer 1 is 'sliding_attention')"),
        (dict(use_sliding_window=False), "{cfg}: use_sliding_window is false but layer_types has sliding layers"),
        (dict(layer_types=["sliding_attention", "chunked_attention", "sliding_attention", "full_attention"]), "{cfg}: layer_types[1] is 'chunked_attention'"),
    ],
)
def test_import_refuses_by_name(hf_dir, changes, message):
    _edit(hf_dir, **changes)
    msg = message.format(cfg=hf_dir / "config.json")
    with pytest.raises(CheckpointError, match="^" + re.escape(msg)):
        rnope.load(hf_dir)


def test_import_refuses_missing_shard_and_bad_shapes(tmp_path):
    from transformers import Cohere2Config, Cohere2ForCausalLM

    cfg = Cohere2Config(vocab_size=259, hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, sliding_window=W, max_position_embeddings=64)
    Cohere2ForCausalLM(cfg).save_pretrained(tmp_path / "hf", max_shard_size="40KB")
    shards = sorted(p.name for p in (tmp_path / "hf").glob("model-*.safetensors"))
    assert len(shards) >= 2
    ok = tmp_path / "ok"
    shutil.copytree(tmp_path / "hf", ok)
    (tmp_path / "hf" / shards[1]).unlink()
    with pytest.raises(CheckpointError, match=f"^{tmp_path / 'hf' / shards[1]} is missing$"):
        rnope.load(tmp_path / "hf")
    _edit(ok, intermediate_size=48)
    with pytest.raises(CheckpointError, match=r"ok/config.json: intermediate_size is 48 but model-\d+-of-\d+.safetensors holds 64 \(model.layers.0.mlp.gate_proj.weight\)$"):
        rnope.load(ok)


def test_import_tokenizer_without_specials_is_skipped_with_a_note(hf_dir, capsys):
    from tokenizers import Tokenizer as HFT
    from tokenizers import models

    HFT(models.WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]")).save(str(hf_dir / "tokenizer.json"))
    model, tok = load_hf(hf_dir)
    assert tok is None
    assert "lacks special token '<pad>': imported without a tokenizer" in capsys.readouterr().err


def _bigger_tokenizer(hf_dir, n_added=41, specials=True):
    """Overwrite hf_dir/tokenizer.json with one of 259 + n_added tokens (with or without rnope's specials)."""
    from tokenizers import Tokenizer as HFT
    from tokenizers import models

    if specials:
        tok = Tokenizer.byte_level()
        tok.hf.add_tokens([f"<extra_{i}>" for i in range(n_added)])
        tok.save(hf_dir / "tokenizer.json")
    else:
        vocab = {f"w{i}": i for i in range(258 + n_added)} | {"[UNK]": 258 + n_added}
        HFT(models.WordLevel(vocab, unk_token="[UNK]")).save(str(hf_dir / "tokenizer.json"))


@pytest.mark.parametrize("specials", [True, False], ids=["rnope-tokenizer", "foreign-tokenizer"])
def test_import_refuses_tokenizer_larger_than_config_vocab(hf_dir, tmp_path, capsys, specials):
    """tokenizer.json with more tokens than config.json's vocab_size: refused naming both files and
    both numbers, before the weights are read -- also when rnope could not use the tokenizer."""
    _bigger_tokenizer(hf_dir, specials=specials)
    msg = (f"{hf_dir / 'tokenizer.json'} has 300 tokens but {hf_dir / 'config.json'} has vocab_size 259 "
           "(a tokenizer may have fewer tokens than vocab_size, never more)")
    with pytest.raises(CheckpointError, match="^" + re.escape(msg) + "$"):
        rnope.load(hf_dir)
    assert main(["import", str(hf_dir), "--out", str(tmp_path / "ck")]) == 2
    assert capsys.readouterr().err == f"rnope: error: {msg}\n"
    assert not (tmp_path / "ck").exists() and not leftovers(tmp_path, "ck")
    (hf_dir / "model.safetensors").unlink()  # refused before any weights are read
    with pytest.raises(CheckpointError, match="^" + re.escape(msg) + "$"):
        import_hf(hf_dir, tmp_path / "ck")


def test_import_keeps_tokenizer_smaller_than_padded_vocab(tmp_path):
    d = export(random_model("rnope-swa", vocab_size=320), tmp_path / "hf", Tokenizer.byte_level(), log=None)
    model, tok = load_hf(d, log=None)
    assert model.config.vocab_size == 320 and tok is not None and tok.vocab_size == 259


def test_export_is_atomic_and_refuses_existing_output(tmp_path, monkeypatch):
    model = random_model("rnope-swa")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("keep")
    with pytest.raises(ValueError, match="output directory '.*full' exists and is not empty"):
        export(model, tmp_path / "full", log=None)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="output '.*file' exists and is not a directory"):
        export(model, tmp_path / "file", log=None)
    import rnope.interop.hf as hfmod

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(hfmod, "_tokenizer_files", boom)
    with pytest.raises(OSError, match="disk full"):
        export(model, tmp_path / "hf", Tokenizer.byte_level(), log=None)
    assert not (tmp_path / "hf").exists() and not leftovers(tmp_path, "hf")
    (tmp_path / "empty").mkdir()  # an existing empty directory is fine
    monkeypatch.undo()
    assert (export(model, tmp_path / "empty", log=None) / "config.json").exists()


# ---------------------------------------------------------------------------------------------
# CLI
def test_cli_export_import_round_trip(tmp_path, capsys):
    model = random_model("rnope-swa")
    rnope.save(tmp_path / "ck", model, Tokenizer.byte_level())
    assert main(["export", "--ckpt", str(tmp_path / "ck"), "--out", str(tmp_path / "hf")]) == 0
    assert main(["import", str(tmp_path / "hf"), "--out", str(tmp_path / "ck2")]) == 0
    out = capsys.readouterr().out
    assert "model_type cohere2" in out and "pattern SSSN" in out
    again, tok = rnope.load(tmp_path / "ck2")
    assert again.config == model.config and tok is not None
    assert main(["generate", "--ckpt", str(tmp_path / "hf"), "--prompt", "hi", "--max-new-tokens", "4"]) == 0


def test_cli_errors_are_one_line_and_leave_nothing(tmp_path, capsys):
    rnope.save(tmp_path / "ck", random_model("rope", pattern="SSSC"))
    assert main(["export", "--ckpt", str(tmp_path / "ck"), "--out", str(tmp_path / "hf")]) == 2
    err = capsys.readouterr().err
    assert err == "rnope: error: cannot export to Hugging Face: layer 3 uses chunked attention, which cohere/cohere2 cannot express\n"
    assert not (tmp_path / "hf").exists() and not leftovers(tmp_path, "hf")

    d = export(random_model("rnope-swa"), tmp_path / "good", log=None)
    _edit(d, model_type="gpt2")
    assert main(["import", str(d), "--out", str(tmp_path / "ck2")]) == 2
    err = capsys.readouterr().err
    assert err == (f"rnope: error: unsupported model_type 'gpt2' in {d / 'config.json'} "
                   "(supported: cohere, cohere2, llama, mistral, qwen2, qwen3, smollm3)\n")
    assert not (tmp_path / "ck2").exists() and not leftovers(tmp_path, "ck2")

    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "f").write_text("x")
    assert main(["import", str(d), "--out", str(tmp_path / "taken")]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    assert [p.name for p in (tmp_path / "taken").iterdir()] == ["f"]


@torch.no_grad()
def test_import_keeps_bf16_and_load_hf_casts(tmp_path):
    model = random_model("rnope-swa").to(torch.bfloat16)
    d = export(model, tmp_path / "hf", log=None)
    assert json.loads((d / "config.json").read_text())["dtype"] == "bfloat16"
    ck = import_hf(d, tmp_path / "ck", log=None)
    from safetensors.torch import load_file

    stored = load_file(str(ck / "model.safetensors"))
    assert all(v.dtype == torch.bfloat16 for v in stored.values())
    assert all(torch.equal(stored[k], v) for k, v in model.state_dict().items())
    fp32, _ = load_hf(d, log=None)
    assert fp32.embed_tokens.weight.dtype == torch.float32
    assert torch.equal(fp32.embed_tokens.weight, model.embed_tokens.weight.float())
    bf16, _ = load_hf(d, dtype=torch.bfloat16, log=None)
    assert bf16.embed_tokens.weight.dtype == torch.bfloat16


@pytest.mark.parametrize("preset", ["rnope-swa", "rope"])
def test_info_reads_a_hugging_face_directory_like_the_checkpoint_it_came_from(exported, tmp_path, capsys, preset):
    from rnope.cli import main

    model, d = exported[preset]
    ck = rnope.save(tmp_path / "ck", model)
    assert main(["info", "--ckpt", str(ck), "--length", "1024"]) == 0
    ours = capsys.readouterr().out.splitlines()
    assert main(["info", "--ckpt", str(d), "--length", "1024"]) == 0
    theirs = capsys.readouterr().out.splitlines()
    tail = [ln for ln in ours if ln.startswith(("layers:", "parameters:", "kv cache"))]
    assert len(tail) == 3 and tail == [ln for ln in theirs if ln.startswith(("layers:", "parameters:", "kv cache"))]
