"""GGUF export for llama.cpp's ``cohere2``: metadata, tensors, tokenizer, refusals, and logits of a
reference that follows llama.cpp's ``cohere2`` graph using nothing but the file."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

gguf = pytest.importorskip("gguf")

from rnope import ModelConfig, Transformer  # noqa: E402
from rnope.checkpoint import save_model as save  # noqa: E402
from rnope.cli import main  # noqa: E402
from rnope.interop.gguf import export_gguf, gguf_layout  # noqa: E402
from rnope.tokenizer import Tokenizer  # noqa: E402

from ..conftest import sharp_random_model  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

W = 8
SHAPE = dict(vocab_size=320, n_layer=4, d_model=32, n_head=4, n_kv_head=2, d_ff=64, max_seq_len=256, window=W,
             chunk_size=W, logit_scale=0.5)
A = "cohere2"
PAT = f"{A}.attention.sliding_window_pattern"
TEXTS = [
    "Hello, world!\n  indented\ttab and  two  spaces",
    "ünïcödé — 日本語 🙂 Ωmega",
    "it's 12345 don't we'll 3.14159",
    "a literal <eos> and <bos> stay text",
    "   trailing spaces   \n\n",
    "",
]


def random_model(preset: str = "rnope-swa", seed: int = 0, **overrides) -> Transformer:
    return sharp_random_model(preset, SHAPE, seed, **overrides)


@pytest.fixture(scope="module")
def byte_tok():
    return Tokenizer.byte_level()


@pytest.fixture(scope="module")
def bpe_tok():
    corpus = ["the quick brown fox jumps over the lazy dog, it's 42! ünïcödé\n  indented"] * 30
    return Tokenizer.train_bpe(corpus, 300)


def read(path):
    r = gguf.GGUFReader(str(path))
    meta = {k: f.contents() for k, f in r.fields.items() if not k.startswith("GGUF.")}
    tensors = {t.name: np.array(t.data) for t in r.tensors}
    kinds = {t.name: t.tensor_type.name for t in r.tensors}
    return meta, tensors, kinds


def leftovers(parent, name):
    return [p.name for p in parent.iterdir() if p.name.startswith(f".{name}.tmp")]


# ---------------------------------------------------------------------------------------------
# a reference forward that follows llama.cpp's cohere2 graph and reads only the file
def sliding_as_read(meta, reader: str) -> list[bool]:
    """Which layers llama.cpp treats as sliding. ``period``: the key is read as one period p (an array is
    ignored, p stays 4); ``array``: one bool per layer (a single number is repeated over the layers)."""
    n = meta[f"{A}.block_count"]
    v = meta.get(PAT)
    if reader == "period":
        p = 4 if v is None or isinstance(v, list) else int(v)
        return [p == 0 or i % p < p - 1 for i in range(n)]
    if isinstance(v, list):
        return [bool(x) for x in v]
    return [bool(v)] * n


def reference_logits(path, ids: list[int], reader: str) -> torch.Tensor:
    meta, t, _ = read(path)
    w = {k: torch.from_numpy(v.astype(np.float32)) for k, v in t.items()}
    d, nh, nkv = meta[f"{A}.embedding_length"], meta[f"{A}.attention.head_count"], meta[f"{A}.attention.head_count_kv"]
    eps, n_swa, scale = meta[f"{A}.attention.layer_norm_epsilon"], meta[f"{A}.attention.sliding_window"], meta[f"{A}.logit_scale"]
    base, n_rot = meta[f"{A}.rope.freq_base"], meta[f"{A}.rope.dimension_count"]
    hd, T = d // nh, len(ids)
    pos = torch.arange(T, dtype=torch.float32)
    inv = base ** (-torch.arange(0, n_rot, 2, dtype=torch.float32) / n_rot)
    ang = pos[:, None] * inv[None, :]  # (T, n_rot/2)
    cos, sin = ang.cos()[:, None, :], ang.sin()[:, None, :]

    def rope(x):  # ggml's "normal" RoPE: rotate adjacent pairs (2i, 2i+1)
        x0, x1 = x[..., 0:n_rot:2], x[..., 1:n_rot:2]
        out = x.clone()
        out[..., 0:n_rot:2], out[..., 1:n_rot:2] = x0 * cos - x1 * sin, x0 * sin + x1 * cos
        return out

    s_idx, t_idx = torch.meshgrid(torch.arange(T), torch.arange(T), indexing="xy")
    causal = s_idx <= t_idx
    x = w["token_embd.weight"][ids]
    for il, swa in enumerate(sliding_as_read(meta, reader)):
        p = f"blk.{il}."
        h = F.layer_norm(x, (d,), w[p + "attn_norm.weight"], None, eps)
        q = (h @ w[p + "attn_q.weight"].T).view(T, nh, hd)
        k = (h @ w[p + "attn_k.weight"].T).view(T, nkv, hd)
        v = (h @ w[p + "attn_v.weight"].T).view(T, nkv, hd)
        if swa:
            q, k = rope(q), rope(k)
        mask = causal & ((t_idx - s_idx) < n_swa) if swa else causal
        k, v = k.repeat_interleave(nh // nkv, dim=1), v.repeat_interleave(nh // nkv, dim=1)
        att = torch.einsum("thd,shd->hts", q, k) / math.sqrt(hd)
        att = att.masked_fill(~mask, float("-inf")).softmax(-1)
        o = torch.einsum("hts,shd->thd", att, v).reshape(T, nh * hd) @ w[p + "attn_output.weight"].T
        f = (F.silu(h @ w[p + "ffn_gate.weight"].T) * (h @ w[p + "ffn_up.weight"].T)) @ w[p + "ffn_down.weight"].T
        x = x + o + f
    x = F.layer_norm(x, (d,), w["output_norm.weight"], None, eps)
    return (x @ w["token_embd.weight"].T) * scale


CASES = {  # name: (preset, overrides, readers that must reproduce rnope)
    "rnope-swa": ("rnope-swa", {}, ("period", "array")),
    "rnope-swa-6": ("rnope-swa", {"n_layer": 6}, ("period", "array")),
    "swa": ("swa", {}, ("period", "array")),
    "rnope": ("rnope", {}, ("period", "array")),
    "rope": ("rope", {}, ("period", "array")),
    "SN": ("rnope-swa", {"pattern": "SN"}, ("period",)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_reference_from_file_matches_rnope(tmp_path, byte_tok, case):
    preset, over, readers = CASES[case]
    model = random_model(preset, **over)
    path = export_gguf(model, tmp_path / "m.gguf", byte_tok)
    ids = torch.randint(3, 259, (3 * W,), generator=torch.Generator().manual_seed(1)).tolist()  # past the window
    with torch.no_grad():
        want = model(torch.tensor([ids]))[0]
        for reader in readers:
            got = reference_logits(path, ids, reader)
            assert (got - want).abs().max().item() < 1e-4, (case, reader)


def test_reference_sees_a_wrong_layout(tmp_path, byte_tok):
    """The check above has teeth: reading swa's file as llama.cpp's default layout changes the logits."""
    model = random_model("swa")
    path = export_gguf(model, tmp_path / "m.gguf", byte_tok)
    ids = list(range(3, 3 + 3 * W))
    meta, _, _ = read(path)
    assert meta[PAT] == SHAPE["n_layer"] + 1
    with torch.no_grad():
        want = model(torch.tensor([ids]))[0]
    import rnope.interop.gguf as mod

    default = [i % 4 != 3 for i in range(4)]
    assert sliding_as_read({**meta, PAT: default}, "array") != sliding_as_read(meta, "array")
    path2 = tmp_path / "m2.gguf"
    orig = mod.gguf_layout
    mod.gguf_layout = lambda c: (default, W, default)
    try:
        export_gguf(model, path2, byte_tok)
    finally:
        mod.gguf_layout = orig
    assert (reference_logits(path2, ids, "array") - want).abs().max().item() > 1e-2


# ---------------------------------------------------------------------------------------------
# metadata and tensors
@pytest.mark.parametrize("preset", ["rnope-swa", "swa", "rnope", "rope"])
def test_metadata_and_tensors(tmp_path, byte_tok, preset):
    model = random_model(preset, rope={"theta": 50_000.0}, norm_eps=1e-6)
    c = model.config
    path = export_gguf(model, tmp_path / "m.gguf", byte_tok)
    meta, tensors, kinds = read(path)
    assert meta["general.architecture"] == A
    assert meta["general.file_type"] == 0
    want = {
        "vocab_size": 320, "context_length": 256, "embedding_length": 32, "feed_forward_length": 64, "block_count": 4,
        "attention.head_count": 4, "attention.head_count_kv": 2, "attention.key_length": 8, "attention.value_length": 8,
        "rope.dimension_count": 8, "rope.scaling.type": "none",
    }
    for k, v in want.items():
        assert meta[f"{A}.{k}"] == v, k
    assert meta[f"{A}.rope.freq_base"] == pytest.approx(50_000.0)
    assert meta[f"{A}.attention.layer_norm_epsilon"] == pytest.approx(1e-6)
    assert meta[f"{A}.logit_scale"] == pytest.approx(0.5)
    rope_full = all(not s.rope or s.span == "full" for s in c.layers)
    assert meta[f"{A}.attention.sliding_window"] == (c.max_seq_len if rope_full else W)
    # the sliding layers are exactly rnope's RoPE layers, under either reading of the key
    for reader in ("period", "array"):
        assert sliding_as_read(meta, reader) == [s.rope for s in c.layers]
    own = model.state_dict()
    assert len(tensors) == len(own) == 2 + 8 * c.n_layer
    assert "output.weight" not in tensors
    assert np.array_equal(tensors["token_embd.weight"], own["embed_tokens.weight"].numpy())
    assert np.array_equal(tensors["output_norm.weight"], own["norm.weight"].numpy())
    for i in range(c.n_layer):
        for ours, theirs in [("input_layernorm", "attn_norm"), ("self_attn.q_proj", "attn_q"), ("self_attn.k_proj", "attn_k"),
                             ("self_attn.v_proj", "attn_v"), ("self_attn.o_proj", "attn_output"), ("mlp.gate_proj", "ffn_gate"),
                             ("mlp.up_proj", "ffn_up"), ("mlp.down_proj", "ffn_down")]:
            t = tensors[f"blk.{i}.{theirs}.weight"]
            assert kinds[f"blk.{i}.{theirs}.weight"] == "F32"
            assert np.array_equal(t, own[f"layers.{i}.{ours}.weight"].numpy()), (i, theirs)
    # every name is one llama.cpp's cohere2 knows
    known = {gguf.TENSOR_NAMES[t].format(bid=i) + ".weight" for t in gguf.MODEL_TENSORS[gguf.MODEL_ARCH.COHERE2] for i in range(c.n_layer)}
    assert set(tensors) <= known


def test_f16(tmp_path, byte_tok):
    model = random_model()
    path = export_gguf(model, tmp_path / "m.gguf", byte_tok, dtype="f16")
    meta, tensors, kinds = read(path)
    assert meta["general.file_type"] == 1
    own = model.state_dict()
    assert kinds["blk.0.attn_norm.weight"] == "F32" and kinds["output_norm.weight"] == "F32"
    assert kinds["blk.0.attn_q.weight"] == "F16" and kinds["token_embd.weight"] == "F16"
    assert np.array_equal(tensors["blk.2.ffn_up.weight"], own["layers.2.mlp.up_proj.weight"].half().numpy())
    ids = list(range(3, 3 + 3 * W))
    with torch.no_grad():
        want = model(torch.tensor([ids]))[0]
    assert (reference_logits(path, ids, "array") - want).abs().max().item() < 5e-2


def test_bf16_model_is_written_exactly(tmp_path, byte_tok):
    model = random_model().to(torch.bfloat16)
    _, tensors, kinds = read(export_gguf(model, tmp_path / "m.gguf", byte_tok))
    assert kinds["blk.1.attn_k.weight"] == "F32"
    assert np.array_equal(tensors["blk.1.attn_k.weight"], model.state_dict()["layers.1.self_attn.k_proj.weight"].float().numpy())


@pytest.mark.parametrize("pattern,n_layer,value", [("SSSN", 4, [True, True, True, False]), ("SSSN", 6, [True] * 3 + [False] + [True] * 2),
                                                    ("S", 4, 5), ("SN", 4, 2), ("SSN", 6, 3), ("SSSSSN", 6, 6)])
def test_pattern_encoding(pattern, n_layer, value):
    config = ModelConfig.from_preset("rnope-swa", **{**SHAPE, "pattern": pattern, "n_layer": n_layer})
    sliding, window, pat = gguf_layout(config)
    assert sliding == [s.rope for s in config.layers]
    assert pat == value and window == W


# ---------------------------------------------------------------------------------------------
# tokenizer
def rebuilt(meta):
    """A ``tokenizers`` BPE made only of the file's tokens and merges, split like llama.cpp's 'gpt-2'."""
    from tokenizers import Tokenizer as HF
    from tokenizers import models, pre_tokenizers

    toks, types, merges = meta["tokenizer.ggml.tokens"], meta["tokenizer.ggml.token_type"], meta["tokenizer.ggml.merges"]
    vocab = {t: i for i, t in enumerate(toks) if types[i] != 5}
    hf = HF(models.BPE(vocab=vocab, merges=[tuple(m.split(" ", 1)) for m in merges]))
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    return hf


@pytest.mark.parametrize("which", ["byte", "bpe"])
def test_tokenizer_round_trip(tmp_path, byte_tok, bpe_tok, which):
    tok = byte_tok if which == "byte" else bpe_tok
    path = export_gguf(random_model(), tmp_path / "m.gguf", tok)
    meta, _, _ = read(path)
    assert meta["tokenizer.ggml.model"] == "gpt2" and meta["tokenizer.ggml.pre"] == "gpt-2"
    assert (meta["tokenizer.ggml.bos_token_id"], meta["tokenizer.ggml.eos_token_id"], meta["tokenizer.ggml.padding_token_id"]) == (
        tok.bos_id, tok.eos_id, tok.pad_id)
    assert meta["tokenizer.ggml.add_bos_token"] is False and meta["tokenizer.ggml.add_eos_token"] is False
    assert meta["tokenizer.ggml.add_space_prefix"] is False
    toks, types = meta["tokenizer.ggml.tokens"], meta["tokenizer.ggml.token_type"]
    assert len(toks) == len(types) == SHAPE["vocab_size"]  # padded to the embedding
    assert types[:3] == [3, 3, 3] and toks[:3] == ["<pad>", "<bos>", "<eos>"]
    assert set(types[3 : tok.vocab_size]) == {1} and set(types[tok.vocab_size :]) == {5}
    assert len(set(toks)) == len(toks)
    assert len(meta["tokenizer.ggml.merges"]) == (0 if which == "byte" else tok.vocab_size - 259)
    hf = rebuilt(meta)
    for text in TEXTS:
        assert hf.encode(text).ids == tok.encode(text), text


def test_empty_merges_are_present_and_typed(tmp_path, byte_tok):
    """llama.cpp's gpt2 vocabulary needs the merges key (an array of strings), even with no entries."""
    path = export_gguf(random_model(), tmp_path / "m.gguf", byte_tok)
    raw = path.read_bytes()
    key = b"tokenizer.ggml.merges"
    i = raw.index(key) + len(key)
    assert np.frombuffer(raw[i : i + 8], dtype="<u4").tolist() == [9, 8]  # ARRAY of STRING
    assert np.frombuffer(raw[i + 8 : i + 16], dtype="<u8").tolist() == [0]


def test_cli_round_trip(tmp_path, bpe_tok, capsys):
    ckpt = tmp_path / "ckpt"
    model = random_model()
    save(ckpt, model, bpe_tok)
    out = tmp_path / "out" / "m.gguf"
    (tmp_path / "out").mkdir()
    assert main(["export", "--ckpt", str(ckpt), "--out", str(out), "--format", "gguf", "--gguf-dtype", "f16"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"exported {ckpt} -> {out} (GGUF cohere2, 4 layers, sliding/global SSSG, window 8, f16, ")
    meta, _, _ = read(out)
    assert meta["general.name"] == "ckpt" and meta["general.file_type"] == 1
    assert sorted(p.name for p in out.parent.iterdir()) == ["m.gguf"]
    assert main(["export", "--ckpt", str(ckpt), "--out", str(out), "--format", "gguf"]) != 0
    assert f"output '{out}' exists (the GGUF export never overwrites)" in capsys.readouterr().err
    assert main(["export", "--ckpt", str(ckpt), "--out", str(tmp_path / "hf"), "--gguf-dtype", "f16"]) != 0
    assert "--gguf-dtype needs --format gguf" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# refusals
P = "cannot export to GGUF: "
REFUSALS = {
    "nope": (("nope", {}), P + "every layer is a global NoPE layer (pattern 'N'); llama.cpp's cohere2 needs at least one "
             "sliding-window RoPE layer (its interleaved sliding-window cache asserts one)"),
    "untied": (("rnope-swa", {"tie_embeddings": False}), P + "the output head 'lm_head.weight' is untied; llama.cpp's cohere2 "
               "has no output.weight and reuses token_embd.weight (export a model with tie_embeddings=True)"),
    "chunked": (("llama4-irope", {"rope": {"qk_l2norm": False}, "nope": {"temperature": "none"}}),
                P + "layer 0 uses chunked attention, which cohere/cohere2 cannot express"),
    "qknorm": (("qknorm", {}), P + "layer 0 uses QK-norm, which llama.cpp's cohere2 does not have"),
    "qk-mixed": (("rnope-swa", {"pattern": "QQQN"}), P + "layer 0 uses QK-norm but layer 3 does not; cohere applies QK-norm "
                 "to every layer and cohere2 has none"),
    "scaling": (("rope-pi", {}), P + "layer 0 uses RoPE scaling 'linear'; the GGUF export writes unscaled RoPE only"),
    "not-periodic": (("rnope-swa", {"pattern": "SNNS"}), P + "the sliding/global layout SNNS is not periodic; llama.cpp's "
                     "cohere2 reads one period p (layer i is global iff i % p == p - 1)"),
    "nope-sliding": (("rnope-swa", {"pattern": "WWWN"}), P + "layer 0 is a NoPE sliding-window layer, which cohere/cohere2 "
                     "cannot express (cohere2 applies RoPE to every sliding layer and to no other)"),
    "llama-block": (("smollm3", {}), P + "block='sequential', which cohere/cohere2 cannot express (they use the parallel block "
                    "x + attn(ln(x)) + mlp(ln(x)))"),
    "temperature": (("rnope-swa-temp", {}), P + "layer 3 scales NoPE queries by temperature 'llama4', which cohere/cohere2 "
                    "cannot express"),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_refusals(tmp_path, byte_tok, case):
    (preset, over), msg = REFUSALS[case]
    model = Transformer(ModelConfig.from_preset(preset, **{**SHAPE, **over}))
    with pytest.raises(ValueError) as e:
        export_gguf(model, tmp_path / "m.gguf", byte_tok)
    assert str(e.value) == msg
    assert list(tmp_path.iterdir()) == []


def test_refuses_output_and_tokenizer_problems(tmp_path, byte_tok):
    model = random_model()
    out = tmp_path / "m.gguf"
    out.write_text("x")
    with pytest.raises(ValueError, match=r"^output '.*m.gguf' exists \(the GGUF export never overwrites\)$"):
        export_gguf(model, out, byte_tok)
    with pytest.raises(ValueError, match=r"^cannot export to GGUF: no tokenizer: llama.cpp reads the vocabulary from the GGUF file"):
        export_gguf(model, tmp_path / "a.gguf")
    with pytest.raises(ValueError, match=r"^cannot export to GGUF: dtype must be one of f32, f16, got 'q8'$"):
        export_gguf(model, tmp_path / "a.gguf", byte_tok, dtype="q8")
    from tokenizers import normalizers

    odd = Tokenizer.from_json(byte_tok.to_json())
    odd.hf.normalizer = normalizers.NFC()
    with pytest.raises(ValueError, match=r"^cannot export to GGUF: the tokenizer has a NFC normalizer"):
        export_gguf(model, tmp_path / "a.gguf", odd)
    spaced = Tokenizer.from_json(byte_tok.to_json().replace('"add_prefix_space":false', '"add_prefix_space":true', 1))
    with pytest.raises(ValueError, match=r"^cannot export to GGUF: the tokenizer's pre-tokenizer is .*'gpt-2' pre-tokenizer"):
        export_gguf(model, tmp_path / "a.gguf", spaced)
    big = random_model(vocab_size=64)
    with pytest.raises(ValueError, match=r"^cannot export to GGUF: tokenizer has 259 tokens but the model's vocab_size is 64 "):
        export_gguf(big, tmp_path / "a.gguf", byte_tok)
    with torch.no_grad():
        model.layers[1].mlp.up_proj.weight[0, 0] = 1e6
    with pytest.raises(ValueError, match=r"^cannot export to GGUF: tensor 'layers.1.mlp.up_proj.weight' has \|w\| up to 1e\+06, beyond float16's range \(use f32\)$"):
        export_gguf(model, tmp_path / "a.gguf", byte_tok, dtype="f16")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.gguf"] and out.read_text() == "x"


def test_failed_write_leaves_nothing(tmp_path, byte_tok, monkeypatch):
    def boom(self, *a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", boom)
    with pytest.raises(OSError, match="disk full"):
        export_gguf(random_model(), tmp_path / "m.gguf", byte_tok)
    assert list(tmp_path.iterdir()) == []


def test_digit_pairs_tokenizer_round_trip(tmp_path):
    """A study tokenizer (two-digit number tokens) is still plain GPT-2-split BPE: the file's tokens and
    merges encode numbers exactly as rnope does."""
    corpus = ["the quick brown fox jumps over the lazy dog in 1999, 2000 and 2024.\n"] * 30
    tok = Tokenizer.train_bpe(corpus, 384, digit_pairs=True)
    path = export_gguf(random_model(vocab_size=384), tmp_path / "m.gguf", tok)
    meta, _, _ = read(path)
    hf = rebuilt(meta)
    for text in TEXTS + ["key: 8700466.\n2401972 and 5009442", "AB-1234 x0x 00000"]:
        assert hf.encode(text).ids == tok.encode(text), text
