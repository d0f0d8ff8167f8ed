"""Export rnope models to a GGUF file that llama.cpp runs as its ``cohere2`` architecture.

:func:`export_gguf` writes one ``.gguf`` file (weights, hyper-parameters, per-layer attention layout
and the tokenizer) straight from the rnope model -- no Hugging Face directory and no
``convert_hf_to_gguf.py`` in between. It is built on the ``gguf`` package (``pip install
'rnope[gguf]'``), written to a temporary file beside the destination and linked into place at the
end; an existing output is refused.

What llama.cpp's ``cohere2`` computes, and how rnope maps onto it:

* the Cohere parallel block ``x + attn(ln(x)) + mlp(ln(x))`` with a bias-free LayerNorm, SwiGLU,
  GQA, attention scale ``1/sqrt(head_dim)``, the output layer tied to ``token_embd.weight`` (there is
  no ``output.weight``: untied heads are refused) and logits times ``logit_scale``;
* RoPE on sliding layers only, on adjacent pairs (2i, 2i+1) -- rnope's ``interleaved`` layout, so
  q/k weights are written as they are; a sliding query at t sees keys t-W < s <= t, like rnope's
  ``S``; global layers get no RoPE (rnope's ``N``). Full RoPE layers (``R``) become sliding layers
  whose window is ``max_seq_len``, as in the Hugging Face export.
* the sliding/global layout lives in ``cohere2.attention.sliding_window_pattern``; llama.cpp builds
  read that key in two ways, and :func:`gguf_layout` writes what both readings agree on wherever one
  value can.

Refused by name (``ValueError``, one line): everything the Hugging Face export refuses (chunked
``C`` and NoPE-sliding ``W`` layers, partial RoPE, NoPE temperatures, Llama-style blocks...), QK-norm
(``Q``), RoPE scaling, untied output heads, models with no sliding layer (llama.cpp's ``cohere2``
needs one), layouts that are not periodic, and tokenizers llama.cpp's ``gpt2`` BPE with the
``gpt-2`` pre-tokenizer would not reproduce.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import ModelConfig
from ..model import Transformer
from .hf import cohere_param_names
from .hf_config import _PREFIX as _HF_PREFIX
from .hf_config import hf_layout

ARCH = "cohere2"
PREFIX = "cannot export to GGUF: "
DTYPES = ("f32", "f16")
FILE_TYPE = {"f32": 0, "f16": 1}  # llama.cpp's LLAMA_FTYPE_ALL_F32 / LLAMA_FTYPE_MOSTLY_F16
TOKEN_NORMAL, TOKEN_CONTROL, TOKEN_UNUSED = 1, 3, 5  # llama.cpp's token types
class GGUFUnavailable(ImportError, ValueError):
    """The ``gguf`` package is not installed (a ``ValueError`` too, so the CLI prints one line)."""


def _require_gguf():
    try:
        import gguf
    except ImportError:
        raise GGUFUnavailable("GGUF export needs the 'gguf' package: pip install 'rnope[gguf]' (or pip install gguf)") from None
    return gguf


# ---------------------------------------------------------------------------------------------
# tensor names
_LAYER_NAMES = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}


def gguf_name(name: str) -> str:
    """rnope state-dict name -> llama.cpp's tensor name (``layers.3.mlp.up_proj.weight`` -> ``blk.3.ffn_up.weight``)."""
    if name == "embed_tokens.weight":
        return "token_embd.weight"
    if name == "norm.weight":
        return "output_norm.weight"
    parts = name.split(".", 2)
    if len(parts) == 3 and parts[0] == "layers" and parts[1].isdigit() and parts[2] in _LAYER_NAMES:
        return f"blk.{parts[1]}.{_LAYER_NAMES[parts[2]]}"
    raise ValueError(f"{PREFIX}parameter '{name}' has no llama.cpp {ARCH} counterpart")


# ---------------------------------------------------------------------------------------------
# layout
def _period(sliding: list[bool]) -> int | None:
    """Smallest p with: layer i is global iff i % p == p - 1 (llama.cpp's ``set_swa_pattern``)."""
    n = len(sliding)
    for p in range(1, n + 2):
        if all(s == (i % p < p - 1) for i, s in enumerate(sliding)):
            return p
    return None


def gguf_layout(config: ModelConfig) -> tuple[list[bool], int, list[bool] | int]:
    """``(sliding per layer, window, pattern value)`` for llama.cpp's ``cohere2``; ``ValueError`` naming
    what it cannot run.

    The pattern value is what :func:`export_gguf` writes as ``cohere2.attention.sliding_window_pattern``.
    llama.cpp's ``cohere2`` defaults to "three sliding, one global" (layer i global iff i % 4 == 3).
    Current builds read the key as one period p (layer i global iff i % p == p - 1) and ignore an
    array; other builds read one bool per layer (and repeat a single number over the layers). The
    value is chosen so both readings agree wherever one value can:

    * the default layout -> the per-layer bool array (a period reader ignores it and keeps 4);
    * every layer sliding -> the period ``n_layer + 1`` (repeated over the layers it is non-zero:
      sliding everywhere, too);
    * any other periodic layout -> its period p (exact where the key is read as a period; a build
      that reads only per-layer arrays would make every layer sliding);
    * a layout with no period, or no sliding layer at all -> refused.
    """
    try:
        model_type, types, window = hf_layout(config)
    except ValueError as e:
        raise ValueError(PREFIX + str(e).removeprefix(_HF_PREFIX)) from None
    layers = config.layers
    if model_type == "cohere":
        if any(s.qk_norm for s in layers):
            raise ValueError(f"{PREFIX}layer 0 uses QK-norm, which llama.cpp's {ARCH} does not have")
        # every layer is full RoPE: sliding layers whose window (max_seq_len) masks nothing
        types, window = ["sliding_attention"] * config.n_layer, config.max_seq_len
    assert types is not None and window is not None
    for i, s in enumerate(layers):
        if s.rope and s.rope_options.scaling != "none":
            raise ValueError(
                f"{PREFIX}layer {i} uses RoPE scaling {s.rope_options.scaling!r}; the GGUF export writes unscaled RoPE only"
            )
    if not config.tie_embeddings:
        raise ValueError(
            f"{PREFIX}the output head 'lm_head.weight' is untied; llama.cpp's {ARCH} has no output.weight and "
            "reuses token_embd.weight (export a model with tie_embeddings=True)"
        )
    sliding = [t == "sliding_attention" for t in types]
    if not any(sliding):
        raise ValueError(
            f"{PREFIX}every layer is a global NoPE layer (pattern {config.pattern!r}); llama.cpp's {ARCH} needs at "
            "least one sliding-window RoPE layer (its interleaved sliding-window cache asserts one)"
        )
    n = config.n_layer
    if all(s == (i % 4 != 3) for i, s in enumerate(sliding)):
        return sliding, window, sliding
    p = _period(sliding)
    if p is None:
        letters = "".join("S" if s else "N" for s in sliding)
        raise ValueError(
            f"{PREFIX}the sliding/global layout {letters} is not periodic; llama.cpp's {ARCH} reads one period p "
            "(layer i is global iff i % p == p - 1)"
        )
    return sliding, window, n + 1 if all(sliding) else p


# ---------------------------------------------------------------------------------------------
# tokenizer
def _byte_chars() -> list[str]:
    from ..tokenizer import _byte_to_unicode

    b2u = _byte_to_unicode()
    return [b2u[b] for b in range(256)]


def gguf_vocab(tokenizer, vocab_size: int) -> tuple[list[str], list[int], list[str]]:
    """``(tokens, token types, merges)`` for llama.cpp's ``gpt2`` BPE with the ``gpt-2`` pre-tokenizer.

    Accepts exactly what rnope builds (:meth:`Tokenizer.byte_level`, :meth:`Tokenizer.train_bpe`):
    byte-level BPE, GPT-2's split regex, no normalizer, no prefix space, only the ``<pad>``,
    ``<bos>``, ``<eos>`` added tokens. The byte-level tokenizer has no merges: its list is written
    empty (llama.cpp needs the key, not entries). Ids past the tokenizer up to ``vocab_size`` (a
    padded embedding) become unused tokens.
    """
    from ..tokenizer import SPECIAL_TOKENS, check_vocab_fits

    check_vocab_fits(tokenizer, vocab_size, PREFIX.removesuffix(": "))
    spec = json.loads(tokenizer.to_json())
    model = spec.get("model") or {}
    what = "the tokenizer"
    if model.get("type") != "BPE":
        raise ValueError(f"{PREFIX}{what} is a {model.get('type')!r} model; llama.cpp's gpt2 vocabulary needs byte-level BPE")
    if spec.get("normalizer") is not None:
        kind = (spec["normalizer"] or {}).get("type")
        raise ValueError(f"{PREFIX}{what} has a {kind} normalizer, which llama.cpp's gpt-2 pre-tokenizer does not apply")
    pre = spec.get("pre_tokenizer") or {}
    if pre.get("type") != "ByteLevel" or pre.get("add_prefix_space") or not pre.get("use_regex", True):
        raise ValueError(
            f"{PREFIX}{what}'s pre-tokenizer is {json.dumps(pre, sort_keys=True)}; llama.cpp's 'gpt-2' pre-tokenizer "
            "reproduces only ByteLevel(add_prefix_space=False, use_regex=True)"
        )
    if (spec.get("decoder") or {}).get("type") != "ByteLevel":
        raise ValueError(f"{PREFIX}{what}'s decoder is not ByteLevel")
    post = spec.get("post_processor")
    if post is not None and post.get("type") != "ByteLevel":
        raise ValueError(f"{PREFIX}{what} has a {post.get('type')} post-processor, which llama.cpp would not apply")
    for key, ok in (("dropout", None), ("continuing_subword_prefix", None), ("end_of_word_suffix", None)):
        if model.get(key) not in (ok, ""):
            raise ValueError(f"{PREFIX}{what}'s BPE sets {key}={model[key]!r}, which llama.cpp does not implement")
    for key in ("byte_fallback", "ignore_merges"):
        if model.get(key):
            raise ValueError(f"{PREFIX}{what}'s BPE sets {key}=true, which llama.cpp's gpt-2 vocabulary does not do")
    for tid, tok in tokenizer.hf.get_added_tokens_decoder().items():
        if tok.content not in SPECIAL_TOKENS or not tok.special:
            raise ValueError(f"{PREFIX}{what} adds token {tok.content!r} (id {tid}); only {', '.join(SPECIAL_TOKENS)} are exported")
    vocab = tokenizer.hf.get_vocab(with_added_tokens=True)
    n = tokenizer.vocab_size
    by_id: dict[int, str] = {}
    for tok, tid in vocab.items():
        if not 0 <= tid < n or tid in by_id:
            raise ValueError(f"{PREFIX}{what}'s ids are not 0..{n - 1} (token {tok!r} has id {tid})")
        by_id[tid] = tok
    missing = [c for c in _byte_chars() if c not in vocab]
    if missing:
        raise ValueError(f"{PREFIX}{what} lacks {len(missing)} of the 256 byte tokens (e.g. {missing[0]!r}); llama.cpp falls back to them")
    merges = []
    for m in model.get("merges") or []:
        a, b = (m.split(" ", 1) if isinstance(m, str) else m)
        if " " in a or " " in b or not a or not b:
            raise ValueError(f"{PREFIX}{what} has merge {m!r}, which GGUF's 'left right' merge strings cannot hold")
        merges.append(f"{a} {b}")
    specials = {tokenizer.pad_id, tokenizer.bos_id, tokenizer.eos_id}
    tokens = [by_id[i] for i in range(n)]
    types = [TOKEN_CONTROL if i in specials else TOKEN_NORMAL for i in range(n)]
    taken = set(tokens)
    for i in range(n, vocab_size):
        name = f"<unused{i}>"
        while name in taken:
            name = "_" + name
        tokens.append(name)
        types.append(TOKEN_UNUSED)
    return tokens, types, merges


# ---------------------------------------------------------------------------------------------
# output file
def check_out_file(out: Path) -> None:
    if out.is_symlink() or out.exists():
        raise ValueError(f"output '{out}' exists (the GGUF export never overwrites)")
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"output '{out}': '{parent}' is not a directory")
            break


def _writer_class(gguf):
    class Writer(gguf.GGUFWriter):
        """GGUFWriter that can also write an empty typed array (a byte-level tokenizer's merges)."""

        def _pack_val(self, val, vtype, add_vtype, sub_type=None):
            if vtype == gguf.GGUFValueType.ARRAY and sub_type is not None and len(val) == 0:
                out = bytearray(self._pack("I", vtype) if add_vtype else b"")
                return bytes(out + self._pack("I", sub_type) + self._pack("Q", 0))
            return super()._pack_val(val, vtype, add_vtype, sub_type=sub_type)

    return Writer


def _array(tensor: torch.Tensor, dtype: str, name: str) -> np.ndarray:
    t = tensor.detach().to("cpu", torch.float32)
    if not torch.isfinite(t).all():
        raise ValueError(f"{PREFIX}tensor '{name}' holds NaN or infinite values")
    if dtype == "f16" and t.dim() >= 2:  # norms stay f32, as llama.cpp's own converter writes them
        big = t.abs().max().item()
        if big > float(np.finfo(np.float16).max):
            raise ValueError(f"{PREFIX}tensor '{name}' has |w| up to {big:.4g}, beyond float16's range (use f32)")
        return t.to(torch.float16).numpy()
    return t.numpy()


def export_gguf(
    ckpt_or_model,
    out_path: str | os.PathLike,
    tokenizer=None,
    *,
    dtype: str = "f32",
    name: str | None = None,
) -> Path:
    """Write ``ckpt_or_model`` (a :class:`Transformer`, or any directory ``rnope.load`` accepts) as a
    GGUF file for llama.cpp's ``cohere2`` at ``out_path``; returns ``out_path``.

    ``tokenizer`` defaults to the checkpoint's; one is required (llama.cpp reads the vocabulary from
    the file). ``dtype``: ``"f32"`` or ``"f16"`` for the matrices (norm weights stay f32). Raises
    ``ValueError`` for a model or tokenizer llama.cpp's ``cohere2`` cannot run (the message names
    the blocking feature) or an ``out_path`` that exists.
    """
    gguf = _require_gguf()
    from .. import __version__

    out = Path(out_path)
    check_out_file(out)
    if dtype not in DTYPES:
        raise ValueError(f"{PREFIX}dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if isinstance(ckpt_or_model, Transformer):
        model = ckpt_or_model
    else:
        from ..checkpoint import load

        model, tok = load(ckpt_or_model)
        tokenizer = tokenizer if tokenizer is not None else tok
        name = name or Path(ckpt_or_model).name
    config: ModelConfig = model.config
    sliding, window, pattern = gguf_layout(config)  # refuses before any work
    own = model.state_dict()
    extra = sorted(set(own) - cohere_param_names(config))
    if extra:
        raise ValueError(f"{PREFIX}parameter '{extra[0]}' has no llama.cpp {ARCH} counterpart")
    if tokenizer is None:
        raise ValueError(f"{PREFIX}no tokenizer: llama.cpp reads the vocabulary from the GGUF file (pass one, or export a checkpoint that has one)")
    tokens, types, merges = gguf_vocab(tokenizer, config.vocab_size)
    arrays = [(gguf_name(k), _array(v, dtype, k)) for k, v in own.items()]

    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.tmp-", dir=out.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it 0600
        w = _writer_class(gguf)(str(tmp), ARCH)
        V = gguf.GGUFValueType
        a = ARCH
        w.add_name(name or "rnope")
        w.add_uint32("general.file_type", FILE_TYPE[dtype])
        w.add_uint32(f"{a}.vocab_size", config.vocab_size)
        w.add_uint32(f"{a}.context_length", config.max_seq_len)
        w.add_uint32(f"{a}.embedding_length", config.d_model)
        w.add_uint32(f"{a}.feed_forward_length", config.d_ff)
        w.add_uint32(f"{a}.block_count", config.n_layer)
        w.add_uint32(f"{a}.attention.head_count", config.n_head)
        w.add_uint32(f"{a}.attention.head_count_kv", config.n_kv_head)
        w.add_uint32(f"{a}.attention.key_length", config.head_dim)
        w.add_uint32(f"{a}.attention.value_length", config.head_dim)
        w.add_float32(f"{a}.attention.layer_norm_epsilon", float(config.norm_eps))
        w.add_uint32(f"{a}.attention.sliding_window", window)
        if isinstance(pattern, list):
            w.add_key_value(f"{a}.attention.sliding_window_pattern", pattern, V.ARRAY, sub_type=V.BOOL)
        else:
            w.add_uint32(f"{a}.attention.sliding_window_pattern", pattern)
        w.add_float32(f"{a}.rope.freq_base", float(config.rope.theta))
        w.add_uint32(f"{a}.rope.dimension_count", config.head_dim)
        w.add_string(f"{a}.rope.scaling.type", "none")
        w.add_float32(f"{a}.logit_scale", float(config.logit_scale))
        w.add_string("tokenizer.ggml.model", "gpt2")
        w.add_string("tokenizer.ggml.pre", "gpt-2")
        w.add_key_value("tokenizer.ggml.tokens", tokens, V.ARRAY, sub_type=V.STRING)
        w.add_key_value("tokenizer.ggml.token_type", types, V.ARRAY, sub_type=V.INT32)
        w.add_key_value("tokenizer.ggml.merges", merges, V.ARRAY, sub_type=V.STRING)
        w.add_uint32("tokenizer.ggml.bos_token_id", tokenizer.bos_id)
        w.add_uint32("tokenizer.ggml.eos_token_id", tokenizer.eos_id)
        w.add_uint32("tokenizer.ggml.padding_token_id", tokenizer.pad_id)
        w.add_bool("tokenizer.ggml.add_bos_token", False)
        w.add_bool("tokenizer.ggml.add_eos_token", False)
        w.add_bool("tokenizer.ggml.add_space_prefix", False)
        w.add_string("rnope.version", __version__)
        w.add_string("rnope.model", json.dumps(config.to_dict(), sort_keys=True))
        for tname, arr in arrays:
            w.add_tensor(tname, arr)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, out)  # never replaces a file that appeared meanwhile
        except FileExistsError:
            raise ValueError(f"output '{out}' exists (the GGUF export never overwrites)") from None
        except OSError:  # no hard links on this filesystem
            check_out_file(out)
            os.rename(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
    return out


def read_layout(path: str | os.PathLike) -> dict[str, Any]:
    """A few facts of an exported GGUF file (architecture, layers, sliding layout) for messages and tests."""
    gguf = _require_gguf()
    r = gguf.GGUFReader(str(path))

    def val(key: str):
        f = r.fields.get(key)
        return None if f is None else f.contents()

    n = int(val(f"{ARCH}.block_count"))
    pat = val(f"{ARCH}.attention.sliding_window_pattern")
    if isinstance(pat, list):
        sliding = [bool(x) for x in pat]
    else:
        p = 4 if pat is None else int(pat)
        sliding = [p == 0 or i % p < p - 1 for i in range(n)]
    return {
        "architecture": val("general.architecture"),
        "n_layer": n,
        "sliding": sliding,
        "window": int(val(f"{ARCH}.attention.sliding_window")),
        "file_type": int(val("general.file_type")),
        "n_tokens": len(val("tokenizer.ggml.tokens")),
    }
