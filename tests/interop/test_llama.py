"""Hugging Face Llama family: import of llama / mistral / qwen2 / qwen3 / smollm3, export to smollm3,
parity with transformers (logits, greedy tokens, the cached decode paths) and refusals by name."""

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
from rnope.decode import Decoder, fuse  # noqa: E402
from rnope.interop import export, import_hf, load_hf  # noqa: E402
from rnope.tokenizer import Tokenizer  # noqa: E402

from ..conftest import sharp_random_model  # noqa: E402
from .hfcheck import hf_greedy, hf_model, leftovers, max_logit_delta, prompt_ids  # noqa: E402

W = 8  # every sliding window here; prompts are longer than 3 windows
VOCAB = 300
TOL = 1e-4
GREEDY = 32
HF_SHAPE = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=4, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=256, pad_token_id=0, bos_token_id=None, eos_token_id=None)
SLIDE, FULL = "sliding_attention", "full_attention"

# family id -> (config class name, extra config keys, the rnope pattern and window it must import as)
FAMILIES = {
    "llama": ("LlamaConfig", dict(rope_parameters={"rope_type": "default", "rope_theta": 5000.0}), "R", None),
    "llama-tied-yarn": ("LlamaConfig", dict(tie_word_embeddings=True, rope_parameters={
        "rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "original_max_position_embeddings": 64}), "R", None),
    "mistral": ("MistralConfig", dict(sliding_window=W), "S", W),
    "qwen2": ("Qwen2Config", dict(use_sliding_window=True, sliding_window=W, max_window_layers=2), "RRSS", W),
    "qwen3": ("Qwen3Config", dict(head_dim=16, rope_parameters={"rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0}), "Q", None),
    "smollm3": ("SmolLM3Config", dict(no_rope_layers=[1, 1, 0, 0], use_sliding_window=True, sliding_window=W,
                                      layer_types=[SLIDE, FULL, SLIDE, FULL]), "SRWN", W),
    "smollm3-default": ("SmolLM3Config", dict(), "RRRN", None),  # NoPE every 4th layer, no sliding (SmolLM3-3B's layout)
}
MEASURED: dict[str, float] = {}  # printed with -s


def sharpen(model: torch.nn.Module, seed: int = 0) -> None:
    """Weights large enough that attention is sharp (std 0.3, biases too), embeddings std 0.5
    (tied heads stay at |logits| ~ 20), norm weights 1 ± 0.2."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
            else:
                p.copy_((0.5 if "embed" in name else 0.3) * torch.randn(p.shape, generator=g))


def build_hf(family: str, d, **changes):
    cls, extra, _, _ = FAMILIES[family]
    cfg = getattr(transformers, cls)(**{**HF_SHAPE, **extra, **changes})
    hf = transformers.AutoModelForCausalLM.from_config(cfg)
    sharpen(hf)
    hf.save_pretrained(d)
    return d


prompt_ids = partial(prompt_ids, vocab=VOCAB)
hf_greedy = partial(hf_greedy, n=GREEDY)


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("llama-family")
    return {f: build_hf(f, root / f) for f in FAMILIES}


# ---------------------------------------------------------------------------------------------
# import -> parity
@pytest.mark.parametrize("family", FAMILIES)
@torch.no_grad()
def test_import_maps_the_config(hf_dirs, family):
    model, tok = load_hf(hf_dirs[family], log=None)
    c, meta = model.config, json.loads((hf_dirs[family] / "config.json").read_text())
    _, _, pattern, window = FAMILIES[family]
    assert tok is None
    assert (c.block, c.norm, c.rope_layout, c.logit_scale) == ("sequential", "rmsnorm", "half", 1.0)
    assert (c.pattern, c.n_layer, c.d_model, c.n_head, c.n_kv_head, c.d_ff, c.vocab_size) == (pattern, 4, 64, 4, 2, 96, VOCAB)
    assert c.tie_embeddings == meta["tie_word_embeddings"] and c.norm_eps == meta["rms_norm_eps"]
    assert c.rope.theta == meta["rope_parameters"]["rope_theta"] and c.max_seq_len == 256
    assert c.qkv_bias == (family == "qwen2")
    if window is not None:
        assert c.window == window
    rope = meta["rope_parameters"]
    assert (c.rope.scaling, c.rope.factor) == ({"default": "none"}.get(rope["rope_type"], rope["rope_type"]), rope.get("factor", 1.0))


@pytest.mark.parametrize("family", FAMILIES)
@torch.no_grad()
def test_import_logits_match_transformers(hf_dirs, family):
    model, _ = load_hf(hf_dirs[family], log=None)
    x = prompt_ids(4 * W + 3, batch=2)  # > 4 windows
    ours = model(x)
    worst = max_logit_delta(hf_dirs[family], x, ours)
    MEASURED[f"import {family}"] = worst
    print(f"\nimport {family}: max |Δ logits| vs transformers (eager, sdpa) = {worst:.2e}")
    assert worst <= TOL


@pytest.mark.parametrize("family", FAMILIES)
def test_import_greedy_tokens_match_transformers(hf_dirs, family):
    model, _ = load_hf(hf_dirs[family], log=None)
    prompt = prompt_ids(3 * W + 2, seed=2)[0].tolist()
    ours = generate(model, [prompt], GREEDY)[0]  # prefill + rnope.decode.Decoder over the hybrid cache
    theirs = hf_greedy(hf_model(hf_dirs[family], "sdpa"), prompt)  # transformers' own cache
    assert len(theirs) == GREEDY and theirs == ours


@pytest.mark.parametrize("family", ["mistral", "qwen2", "qwen3", "smollm3"])
@torch.no_grad()
def test_cached_decode_paths_match_transformers(hf_dirs, family):
    """Every decode route rnope has, one token at a time past several windows, against
    transformers' logits of the whole sequence: ``model(token, cache=...)``, the Decoder ``generate``
    uses, and the concatenated q/k/v layout of the compiled one-row step (run eagerly here)."""
    model, _ = load_hf(hf_dirs[family], log=None)
    seq = prompt_ids(5 * W)
    P, T = W + 3, seq.shape[1]
    want = hf_model(hf_dirs[family])(seq).logits[0, P - 1:]
    routes = {}
    cache = model.new_cache(1, T)
    rows = [model(seq[:, :P], cache=cache)[0, -1]]
    rows += [model(seq[:, t:t + 1], cache=cache)[0, -1] for t in range(P, T)]
    routes["module"] = torch.stack(rows)
    for matvec in (False, True):
        cache = model.new_cache(1, T)
        rows = [model(seq[:, :P], cache=cache)[0, -1]]
        dec = Decoder(model, cache)
        dec.matvec, dec.step_model = matvec, fuse(model, "matvec" if matvec else "rowmajor")
        rows += [dec(seq[:, t])[0] for t in range(P, T)]
        routes["matvec" if matvec else "decoder"] = torch.stack(rows)
    for name, got in routes.items():
        delta = (got - want).abs().max().item()
        MEASURED[f"decode {family} {name}"] = delta
        print(f"\ndecode {family} ({name}): max |Δ logits| vs transformers = {delta:.2e}")
        assert delta <= TOL, f"{name}: {delta:.2e}"


def test_qwen3_shared_qk_norm_becomes_per_head(hf_dirs):
    from safetensors import safe_open

    model, _ = load_hf(hf_dirs["qwen3"], log=None)
    with safe_open(str(hf_dirs["qwen3"] / "model.safetensors"), "pt") as f:
        q = f.get_tensor("model.layers.1.self_attn.q_norm.weight")
        k = f.get_tensor("model.layers.1.self_attn.k_norm.weight")
    assert q.shape == (16,) and not torch.equal(q, torch.ones(16))
    attn = model.layers[1].self_attn
    assert attn.q_norm.weight.shape == (4, 16) and attn.k_norm.weight.shape == (2, 16)
    assert torch.equal(attn.q_norm.weight, q.expand(4, 16)) and torch.equal(attn.k_norm.weight, k.expand(2, 16))


def test_import_writes_a_checkpoint_and_info_reads_the_directory(hf_dirs, tmp_path, capsys):
    d = hf_dirs["qwen2"]
    assert main(["import", str(d), "--out", str(tmp_path / "ck")]) == 0
    assert "pattern RRSS, 4 layers, without tokenizer" in capsys.readouterr().out
    ck, _ = rnope.load(tmp_path / "ck")
    direct, _ = load_hf(d, log=None)
    assert ck.config == direct.config
    a, b = ck.state_dict(), direct.state_dict()
    assert "layers.0.self_attn.q_proj.bias" in a and all(torch.equal(a[k], b[k]) for k in a)
    # rnope info reads the HF directory as the checkpoint imported from it (layers, parameters incl. biases, cache)
    assert main(["info", "--ckpt", str(tmp_path / "ck"), "--length", "1024"]) == 0
    ours = capsys.readouterr().out.splitlines()
    assert main(["info", "--ckpt", str(d), "--length", "1024"]) == 0
    theirs = capsys.readouterr().out.splitlines()
    keep = ("layers:", "parameters:", "kv cache")
    tail = [ln for ln in ours if ln.startswith(keep)]
    assert len(tail) == 3 and tail == [ln for ln in theirs if ln.startswith(keep)]
    assert f"{ck.num_params():,}" in next(ln for ln in tail if ln.startswith("parameters:"))


# ---------------------------------------------------------------------------------------------
# export to smollm3 -> parity
EXPORT_SHAPE = dict(vocab_size=VOCAB, n_layer=4, d_model=64, n_head=4, n_kv_head=2, d_ff=128, max_seq_len=256, window=W)
EXPORTS = {  # id -> (pattern, overrides)
    "smollm3-RRRN": ("RRRN", {}),
    "rnope-swa-SSSN": ("SSSN", {}),
    "mixed-SRWN-untied": ("SRWN", {"tie_embeddings": False}),
    "nope-sliding-W": ("WWWN", {}),
    "swa-yarn": ("S", {"rope": {"scaling": "yarn", "factor": 4.0, "original_len": 64}}),
}


def llama_block_model(pattern: str, seed: int = 0, **overrides) -> Transformer:
    model = sharp_random_model("smollm3", EXPORT_SHAPE, seed, pattern=pattern, **overrides)
    with torch.no_grad():
        model.embed_tokens.weight.mul_(0.5)
    return model


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("smollm3")
    out = {}
    for name, (pattern, overrides) in EXPORTS.items():
        model = llama_block_model(pattern, **overrides)
        out[name] = (model, export(model, root / name, log=None))
    return out


@pytest.mark.parametrize("name", EXPORTS)
@torch.no_grad()
def test_export_smollm3_logits_match_transformers(exported, name):
    model, d = exported[name]
    x = prompt_ids(4 * W + 3, batch=2)
    ours = model(x)
    worst = max_logit_delta(d, x, ours, "SmolLM3ForCausalLM")
    MEASURED[f"export {name}"] = worst
    print(f"\nexport {name}: max |Δ logits| vs transformers smollm3 (eager, sdpa) = {worst:.2e}")
    assert worst <= TOL


@pytest.mark.parametrize("name", EXPORTS)
def test_export_smollm3_greedy_tokens_match_transformers(exported, name):
    model, d = exported[name]
    prompt = prompt_ids(3 * W + 2, seed=2)[0].tolist()
    ours = generate(model, [prompt], GREEDY)[0]
    theirs = hf_greedy(hf_model(d, "sdpa"), prompt)
    assert len(theirs) == GREEDY and theirs == ours


def test_export_smollm3_config(exported):
    meta = json.loads((exported["mixed-SRWN-untied"][1] / "config.json").read_text())
    assert (meta["model_type"], meta["architectures"]) == ("smollm3", ["SmolLM3ForCausalLM"])
    assert meta["no_rope_layers"] == [1, 1, 0, 0]
    assert meta["layer_types"] == [SLIDE, FULL, SLIDE, FULL]
    assert meta["use_sliding_window"] is True and meta["sliding_window"] == W
    assert meta["tie_word_embeddings"] is False and meta["head_dim"] == 16 and meta["rms_norm_eps"] == 1e-5
    assert (meta["bos_token_id"], meta["eos_token_id"], meta["pad_token_id"]) == (None, None, None)
    meta = json.loads((exported["smollm3-RRRN"][1] / "config.json").read_text())
    assert meta["no_rope_layers"] == [1, 1, 1, 0] and meta["layer_types"] == [FULL] * 4
    assert meta["use_sliding_window"] is False and meta["sliding_window"] is None
    assert meta["rope_parameters"] == {"rope_type": "default", "rope_theta": 5e6}
    cfg = transformers.AutoConfig.from_pretrained(exported["swa-yarn"][1])
    assert cfg.rope_parameters["rope_type"] == "yarn" and cfg.rope_parameters["factor"] == 4.0
    from safetensors import safe_open

    model, d = exported["smollm3-RRRN"]
    with safe_open(str(d / "model.safetensors"), "pt") as f:
        assert set(f.keys()) == {"model." + k for k in model.state_dict()}
        assert "model.layers.3.post_attention_layernorm.weight" in set(f.keys())


@pytest.mark.parametrize("name", EXPORTS)
def test_smollm3_round_trip_is_exact(exported, tmp_path, name):
    model, d = exported[name]
    import_hf(d, tmp_path / "ck", log=None)
    again, _ = rnope.load(tmp_path / "ck")
    assert again.config == model.config
    a, b = model.state_dict(), again.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # without the "rnope" section the HF keys alone give the same model (pattern spelled by its period)
    shutil.copytree(d, tmp_path / "bare")
    meta = json.loads((tmp_path / "bare" / "config.json").read_text())
    del meta["rnope"]
    (tmp_path / "bare" / "config.json").write_text(json.dumps(meta))
    bare, _ = load_hf(tmp_path / "bare", log=None)
    assert bare.config.layers == model.config.layers


def test_cli_export_picks_smollm3(tmp_path, capsys):
    rnope.save(tmp_path / "ck", llama_block_model("RRRN"), Tokenizer.byte_level())
    assert main(["export", "--ckpt", str(tmp_path / "ck"), "--out", str(tmp_path / "hf")]) == 0
    assert "model_type smollm3, 4 layers, pattern RRRN" in capsys.readouterr().out
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert tok("héllo").input_ids == Tokenizer.byte_level().encode("héllo")


# ---------------------------------------------------------------------------------------------
# refusals: export
_EXPORT_REFUSED = [
    ("RRCN", {}, "layer 2 is chunked (C), which smollm3 cannot express"),
    ("Q", {}, "layer 0 uses QK-norm (Q), which smollm3 cannot express"),
    ("RRRN", {"logit_scale": 0.5}, "logit_scale=0.5, which smollm3 cannot express (its logits are not scaled)"),
    ("RRRN", {"norm": "layernorm"}, "norm='layernorm', which smollm3 cannot express (it uses RMSNorm)"),
    ("RRRN", {"rope_layout": "interleaved"}, "rope_layout='interleaved', which smollm3 cannot express (it rotates halves (x[i], x[i+D/2]))"),
    ("RRRN", {"qkv_bias": True}, "qkv_bias=True (q/k/v biases), which smollm3 cannot express (its attention_bias also biases o_proj)"),
    ("RRRN", {"rope": {"scaling": "ntk", "factor": 2.0}}, "layer 0 uses RoPE scaling 'ntk', which transformers' rope_parameters cannot express (exportable: none, linear, yarn)"),
    ("RRRN", {"rope": {"fraction": 0.5}}, "layer 0 uses partial RoPE (rope_fraction=0.5), which smollm3 cannot express"),
    ("RRRN", {"nope": {"temperature": "llama4"}}, "layer 3 scales NoPE queries by temperature 'llama4', which smollm3 cannot express"),
]


@pytest.mark.parametrize("pattern,overrides,message", _EXPORT_REFUSED, ids=[m.split(",")[0] for _, _, m in _EXPORT_REFUSED])
def test_export_smollm3_refuses_by_name(tmp_path, pattern, overrides, message):
    model = llama_block_model(pattern, **overrides)
    with pytest.raises(ValueError, match="^" + re.escape("cannot export to smollm3: " + message) + "$"):
        export(model, tmp_path / "hf", log=None)
    assert not (tmp_path / "hf").exists() and not leftovers(tmp_path, "hf")


def test_cli_export_refusal_is_one_line(tmp_path, capsys):
    rnope.save(tmp_path / "ck", llama_block_model("RRCN"))
    assert main(["export", "--ckpt", str(tmp_path / "ck"), "--out", str(tmp_path / "hf")]) == 2
    assert capsys.readouterr().err == "rnope: error: cannot export to smollm3: layer 2 is chunked (C), which smollm3 cannot express\n"
    assert not (tmp_path / "hf").exists() and not leftovers(tmp_path, "hf")


# ---------------------------------------------------------------------------------------------
# refusals: import
def _edit(d, **changes):
    meta = json.loads((d / "config.json").read_text())
    for k, v in changes.items():
        if v is None:
            meta.pop(k, None)
        else:
            meta[k] = v
    (d / "config.json").write_text(json.dumps(meta))


SUPPORTED = "cohere, cohere2, llama, mistral, qwen2, qwen3, smollm3"
LLAMA3 = {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 64}
_IMPORT_REFUSED = [
    ("llama", dict(model_type="gpt2"), f"unsupported model_type 'gpt2' in {{cfg}} (supported: {SUPPORTED})"),
    ("llama", dict(auto_map={"AutoModelForCausalLM": "m.M"}), "{cfg}: 'auto_map' asks for remote code (trust_remote_code), which rnope never runs"),
    ("llama", dict(rope_parameters=LLAMA3), "{cfg}: 'rope_parameters' type 'llama3' changes the math and rnope does not implement it (only default, linear, yarn)"),
    ("mistral", dict(rope_scaling={"rope_type": "dynamic", "factor": 2.0}), "{cfg}: 'rope_scaling' type 'dynamic' changes the math and rnope does not implement it (only default, linear, yarn)"),
    ("llama", dict(attention_bias=True), "{cfg}: 'attention_bias': true puts biases on q/k/v and o_proj; rnope implements q/k/v biases only (as qwen2)"),
    ("smollm3", dict(mlp_bias=True), "{cfg}: 'mlp_bias': true changes the math and rnope's MLP has no biases"),
    ("llama", dict(head_dim=32), "{cfg}: head_dim 32 != hidden_size/num_attention_heads = 16; rnope requires head_dim = d_model/n_head"),
    ("qwen3", dict(head_dim=None), "{cfg}: head_dim 128 (qwen3's default) != hidden_size/num_attention_heads = 16"),
    ("qwen2", dict(hidden_act="gelu"), "{cfg}: hidden_act 'gelu' is not supported (rnope's MLP is SwiGLU: 'silu')"),
    ("llama", dict(rope_parameters={"rope_type": "default", "rope_theta": 1e4, "partial_rotary_factor": 0.5}), "{cfg}: partial_rotary_factor 0.5 is not supported (rnope rotates the whole head)"),
    ("qwen3", dict(use_sliding_window=True, sliding_window=W, layer_types=[FULL, FULL, SLIDE, SLIDE]), "{cfg}: layer 2 is a sliding-window layer with qwen3's QK-norm, which rnope cannot express (its QK-norm layers 'Q' use full attention)"),
    ("qwen2", dict(use_sliding_window=False), "{cfg}: use_sliding_window is false but layer_types has sliding layers"),
    ("smollm3", dict(sliding_window=None), "{cfg}: sliding_window must be a positive integer for sliding layers, got None"),
    ("smollm3", dict(no_rope_layers=[1, 1, 0]), "{cfg}: no_rope_layers has 3 entries, num_hidden_layers is 4"),
    ("smollm3", dict(layer_types=[SLIDE, "chunked_attention", SLIDE, FULL]), "{cfg}: layer_types[1] is 'chunked_attention' (supported: sliding_attention, full_attention)"),
    ("mistral", dict(layer_types=[SLIDE, FULL, SLIDE, FULL]), "{cfg}: layer_types[1] is 'full_attention', but mistral ignores layer_types and makes every layer 'sliding_attention' (sliding_window 8)"),
    ("qwen2", dict(quantization_config={"quant_method": "gptq"}), "{cfg}: 'quantization_config' (quantized weights) is not supported"),
]


@pytest.mark.parametrize("family,changes,message", _IMPORT_REFUSED, ids=[f"{f}-{next(iter(c))}" for f, c, _ in _IMPORT_REFUSED])
def test_import_refuses_by_name(hf_dirs, tmp_path, family, changes, message):
    d = tmp_path / "hf"
    shutil.copytree(hf_dirs[family], d)
    _edit(d, **changes)
    msg = message.format(cfg=d / "config.json")
    with pytest.raises(CheckpointError, match="^" + re.escape(msg)):
        rnope.load(d)


def test_cli_import_refusal_is_one_line(hf_dirs, tmp_path, capsys):
    d = tmp_path / "hf"
    shutil.copytree(hf_dirs["llama"], d)
    _edit(d, rope_parameters=LLAMA3)
    assert main(["import", str(d), "--out", str(tmp_path / "ck")]) == 2
    assert capsys.readouterr().err == (
        f"rnope: error: {d / 'config.json'}: 'rope_parameters' type 'llama3' changes the math and rnope does not "
        "implement it (only default, linear, yarn)\n"
    )
    assert not (tmp_path / "ck").exists() and not leftovers(tmp_path, "ck")


def test_imported_qwen_models_refuse_export_by_name(hf_dirs, tmp_path):
    for family, message in (("qwen2", "qkv_bias=True (q/k/v biases)"), ("qwen3", "layer 0 uses QK-norm (Q)")):
        with pytest.raises(ValueError, match="^" + re.escape("cannot export to smollm3: " + message)):
            export(hf_dirs[family], tmp_path / family, log=None)


def test_transformers_config_defaults_apply_when_keys_are_missing(hf_dirs, tmp_path):
    """A hand-written config.json without the optional keys reads them as transformers would."""
    d = tmp_path / "hf"
    shutil.copytree(hf_dirs["smollm3-default"], d)
    _edit(d, no_rope_layers=None, layer_types=None, use_sliding_window=None, sliding_window=None,
          rope_parameters=None, head_dim=None, tie_word_embeddings=None)
    meta = json.loads((d / "config.json").read_text())
    assert "no_rope_layers" not in meta and "rope_parameters" not in meta
    c = load_hf(d, log=None)[0].config
    # smollm3's defaults: NoPE every 4th layer, no sliding, theta 2e6, tied embeddings
    assert (c.pattern, c.rope.theta, c.tie_embeddings) == ("RRRN", 2e6, True)
    _edit(d, num_key_value_heads=None)  # smollm3's default is 4 KV heads; the tensors hold 2
    with pytest.raises(CheckpointError, match=re.escape(f"{d / 'config.json'}: num_key_value_heads is 4 but model.safetensors holds 2")):
        load_hf(d, log=None)
