"""Export rnope models to Hugging Face ``cohere`` / ``cohere2`` / ``smollm3`` directories, and import
those and ``llama`` / ``mistral`` / ``qwen2`` / ``qwen3`` directories.

* :func:`export` writes ``config.json``, ``model.safetensors`` (transformers' key names: ``model.``
  prefix, no ``lm_head`` when tied), ``generation_config.json`` and, with a tokenizer,
  ``tokenizer.json`` + ``tokenizer_config.json`` + ``special_tokens_map.json`` — a directory that
  ``AutoModelForCausalLM.from_pretrained`` / ``AutoTokenizer.from_pretrained`` load with no remote
  code. The directory is built next to the destination and renamed into place at the end.
* :func:`load_hf` reads a ``save_pretrained`` directory (single or sharded safetensors) into an rnope
  :class:`~rnope.model.Transformer`; :func:`import_hf` writes it as an rnope checkpoint.
* :func:`register_loaders` registers the ``hf`` format with :func:`rnope.load`'s loader registry
  (:func:`rnope.checkpoint.register_loader`); the registry imports this module on first use, and
  this module imports :mod:`rnope.checkpoint` only inside the functions that write or read one.

The config mapping (which patterns map to which model type) lives in :mod:`.hf_config` and, for
the Llama family, :mod:`.llama`. Tensor names are the same in every family; qwen3's q/k-norm weight
(D,), shared by the heads, is repeated into rnope's per-head (H, D). Never
pickle, ``torch.load`` or remote code: weights are read with safetensors only.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import Any, Callable

import torch

from ..errors import CheckpointError
from ..outputs import atomic_dir as _atomic_dir
from ..outputs import check_new_dir as check_out_dir
from ..config import ModelConfig
from ..model import Transformer
from ..tokenizer import check_vocab_fits
from ..weights_header import HF_FIELDS, check_config
from .hf_config import HFConfigError, from_hf_config, to_hf_config

CONFIG, WEIGHTS, INDEX = "config.json", "model.safetensors", "model.safetensors.index.json"
_SKIP = re.compile(r"(^|\.)rotary_emb\.inv_freq$")  # buffers some old checkpoints saved
Log = Callable[[str], None]


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr)


# ---------------------------------------------------------------------------------------------
# weight names
def hf_key(name: str) -> str:
    """rnope state-dict name -> transformers' name (``model.`` prefix, ``lm_head`` at the top)."""
    return name if name == "lm_head.weight" else "model." + name


def rnope_key(name: str) -> str:
    return name[len("model.") :] if name.startswith("model.") else name


def cohere_param_names(config: ModelConfig) -> set[str]:
    """The rnope parameter names a cohere / cohere2 model has (nothing else may be exported)."""
    names = {"embed_tokens.weight", "norm.weight"} | (set() if config.tie_embeddings else {"lm_head.weight"})
    for i, s in enumerate(config.layers):
        p = f"layers.{i}."
        names |= {p + "input_layernorm.weight"} | {p + f"self_attn.{x}_proj.weight" for x in "qkvo"}
        names |= {p + f"mlp.{x}_proj.weight" for x in ("gate", "up", "down")}
        if s.qk_norm:
            names |= {p + "self_attn.q_norm.weight", p + "self_attn.k_norm.weight"}
    return names


def hf_param_names(config: ModelConfig) -> set[str]:
    """The rnope parameter names the exported model type has: cohere's, plus the second norm of the
    sequential block (smollm3)."""
    names = cohere_param_names(config)
    if config.block == "sequential":
        names |= {f"layers.{i}.post_attention_layernorm.weight" for i in range(config.n_layer)}
    return names


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")


# ---------------------------------------------------------------------------------------------
# export
def _tokenizer_files(d: Path, tokenizer, max_len: int) -> None:
    from ..tokenizer import BOS, EOS, PAD

    tokenizer.save(d / "tokenizer.json")
    specials = {"bos_token": BOS, "eos_token": EOS, "pad_token": PAD}
    _write_json(
        d / "tokenizer_config.json",
        {
            "tokenizer_class": "PreTrainedTokenizerFast",
            **specials,
            "model_max_length": max_len,
            "clean_up_tokenization_spaces": False,
            # rnope encodes a literal "<eos>" in text as plain bytes, never as the special token
            "split_special_tokens": True,
        },
    )
    _write_json(d / "special_tokens_map.json", specials)


def export(ckpt_or_model, out_dir: str | os.PathLike, tokenizer=None, *, log: Log | None = _stderr) -> Path:
    """Write ``ckpt_or_model`` (a :class:`Transformer`, or any directory ``rnope.load`` accepts) as a
    Hugging Face directory at ``out_dir``: ``cohere`` / ``cohere2`` for the parallel block, ``smollm3``
    for the sequential (Llama) block; returns ``out_dir``.

    ``tokenizer`` defaults to the checkpoint's. Raises ``ValueError`` for a model HF cannot express
    (the message names the blocking feature) or an ``out_dir`` that is a file or a non-empty directory.
    """
    from safetensors.torch import save_file

    from .. import __version__

    out = Path(out_dir)
    check_out_dir(out)
    if isinstance(ckpt_or_model, Transformer):
        model = ckpt_or_model
    else:
        from ..checkpoint import load

        model, tok = load(ckpt_or_model)
        tokenizer = tokenizer if tokenizer is not None else tok
    config: ModelConfig = model.config
    to_hf_config(config)  # refuses what HF cannot express, before any work
    own = model.state_dict()
    extra = sorted(set(own) - hf_param_names(config))
    if extra:
        where, family = ("smollm3", "smollm3") if config.block == "sequential" else ("Hugging Face", "cohere/cohere2")
        raise ValueError(f"cannot export to {where}: parameter '{extra[0]}' has no {family} counterpart")
    state = {hf_key(k): v.detach().contiguous().cpu() for k, v in own.items()}
    dtypes = {v.dtype for v in state.values() if v.is_floating_point()}
    dtype = str(next(iter(dtypes))).removeprefix("torch.") if len(dtypes) == 1 else "float32"
    ids: dict[str, int | None] = {"bos_id": None, "eos_id": None, "pad_id": None}
    if tokenizer is not None:
        check_vocab_fits(tokenizer, config.vocab_size)
        ids = {"bos_id": tokenizer.bos_id, "eos_id": tokenizer.eos_id, "pad_id": tokenizer.pad_id}
    hf_config = to_hf_config(config, dtype=dtype, rnope_version=__version__, **ids)

    def build(d: Path) -> None:
        save_file(state, str(d / WEIGHTS), metadata={"format": "pt"})
        _write_json(d / CONFIG, hf_config)
        gen = {"bos_token_id": ids["bos_id"], "eos_token_id": ids["eos_id"], "pad_token_id": ids["pad_id"]}
        _write_json(d / "generation_config.json", {k: v for k, v in gen.items() if v is not None})
        if tokenizer is not None:
            _tokenizer_files(d, tokenizer, config.max_seq_len)

    _atomic_dir(out, build)
    if tokenizer is None and log is not None:
        log(f"rnope: note: no tokenizer: exported '{out}' without tokenizer files")
    return out


# ---------------------------------------------------------------------------------------------
# import
def read_hf_config(hf_dir: str | os.PathLike) -> tuple[ModelConfig, dict]:
    """(ModelConfig, the raw config.json dict) of a Hugging Face directory; refuses by name."""
    cfile = Path(hf_dir) / CONFIG
    if not cfile.is_file():
        raise CheckpointError(f"{cfile} is missing")
    try:
        meta = json.loads(cfile.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{cfile}: cannot read JSON ({e.__class__.__name__}: {e})") from None
    if isinstance(meta, dict) and meta.get("format") == "rnope" and "model" in meta:
        raise CheckpointError(f"'{Path(hf_dir)}' is an rnope checkpoint, not a Hugging Face directory (load it directly, or convert it with 'rnope export')")
    try:
        return from_hf_config(meta, cfile), meta
    except HFConfigError as e:
        raise CheckpointError(str(e)) from None


def _weight_files(d: Path) -> dict[str, Path]:
    """HF tensor name -> the safetensors file holding it (single file or sharded with an index)."""
    from safetensors import SafetensorError, safe_open

    def keys_of(f: Path) -> list[str]:
        try:
            with safe_open(str(f), framework="pt") as h:
                return list(h.keys())
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"{f}: corrupt or truncated safetensors file ({e})") from None

    if (d / INDEX).is_file():
        try:
            wmap = json.loads((d / INDEX).read_text())["weight_map"]
            assert isinstance(wmap, dict)
        except (OSError, ValueError, KeyError, TypeError, AssertionError):
            raise CheckpointError(f"{d / INDEX}: not a safetensors index (no 'weight_map' object)") from None
        shards = sorted(set(wmap.values()))
        for s in shards:
            if not isinstance(s, str) or "/" in s or "\\" in s or s in ("", ".", ".."):
                raise CheckpointError(f"{d / INDEX}: bad shard name {s!r}")
            if not (d / s).is_file():
                raise CheckpointError(f"{d / s} is missing")
        where: dict[str, Path] = {}
        for s in shards:
            have = set(keys_of(d / s))
            for k in (k for k, v in wmap.items() if v == s):
                if k not in have:
                    raise CheckpointError(f"{d / s}: tensor '{k}' listed in {INDEX} is not in the shard")
                where[k] = d / s
        return where
    if (d / WEIGHTS).is_file():
        return {k: d / WEIGHTS for k in keys_of(d / WEIGHTS)}
    if any(d.glob("*.bin")) or any(d.glob("*.pt")) or any(d.glob("*.pth")):
        raise CheckpointError(f"{d} has only pickle weights (.bin/.pt); rnope reads safetensors only (never pickle)")
    raise CheckpointError(f"{d / WEIGHTS} is missing")


@torch.no_grad()
def _load_weights(model: Transformer, d: Path, shared_qk_norm: bool = False) -> torch.dtype | None:
    """Copy the HF tensors into ``model`` strictly; returns the stored float dtype (if uniform).

    ``shared_qk_norm`` (qwen3): q_norm / k_norm are one (D,) weight for every head, repeated into
    rnope's (H, D)."""
    from safetensors import safe_open

    where = _weight_files(d)
    own = model.state_dict()
    tied = model.config.tie_embeddings
    wanted = {hf_key(k): k for k in own}
    for k in where:
        if k in wanted or _SKIP.search(k) or (tied and k == "lm_head.weight"):
            continue
        raise CheckpointError(f"{where[k]}: unexpected tensor '{k}' not in the model config.json describes")
    for hk in wanted:
        if hk not in where:
            raise CheckpointError(f"{d}: missing tensor '{hk}' required by config.json")
    dtypes = set()
    by_file: dict[Path, list[str]] = {}
    for hk in wanted:
        by_file.setdefault(where[hk], []).append(hk)
    for f, names in by_file.items():
        with safe_open(str(f), framework="pt") as h:
            for hk in names:
                t = h.get_tensor(hk)
                dst = own[wanted[hk]]
                if shared_qk_norm and hk.endswith(("q_norm.weight", "k_norm.weight")) and t.dim() == 1 and dst.dim() == 2:
                    t = t.expand(dst.shape[0], -1) if t.shape[0] == dst.shape[1] else t
                if tuple(t.shape) != tuple(dst.shape):
                    raise CheckpointError(
                        f"{f}: tensor '{hk}' has shape {tuple(t.shape)}, config.json implies {tuple(dst.shape)}"
                    )
                if t.is_floating_point():
                    dtypes.add(t.dtype)
                dst.copy_(t)
    return dtypes.pop() if len(dtypes) == 1 else None


def _read_tokenizer(d: Path, vocab_size: int) -> tuple[Any, str | None]:
    """``(tokenizer or None, note or None)`` for ``d/tokenizer.json``, read before any weights.

    A ``tokenizer.json`` with more tokens than ``config.json``'s ``vocab_size`` makes the directory
    inconsistent (its ids would index past the embedding) and is refused, naming both files and
    both numbers -- even one rnope could not use anyway. Fewer tokens is a padded vocabulary and
    fine. A missing or unusable tokenizer (no rnope special tokens, not a tokenizer.json) is a
    note: the model is imported without a tokenizer.
    """
    from tokenizers import Tokenizer as RawTokenizer

    from ..tokenizer import Tokenizer

    f = d / "tokenizer.json"
    if not f.is_file():
        return None, f"rnope: note: {d} has no tokenizer.json: imported without a tokenizer"
    try:
        raw = RawTokenizer.from_file(str(f))
    except Exception:  # tokenizers raises a bare Exception on malformed JSON; Tokenizer.load words it
        raw = None
    if raw is not None:
        n = raw.get_vocab_size(with_added_tokens=True)
        if n > vocab_size:
            raise CheckpointError(
                f"{f} has {n} tokens but {d / CONFIG} has vocab_size {vocab_size} "
                "(a tokenizer may have fewer tokens than vocab_size, never more)"
            )
    try:
        return (Tokenizer.load(f) if raw is None else Tokenizer(raw, source=str(f))), None
    except ValueError as e:
        return None, f"rnope: note: {e}: imported without a tokenizer"


def read_checked_config(hf_dir: str | os.PathLike) -> ModelConfig:
    """The ModelConfig of a Hugging Face directory, checked against its weights' headers (no tensor is read)."""
    d = Path(hf_dir)
    config, _ = read_hf_config(d)
    check_config(config, d / CONFIG, sorted(set(_weight_files(d).values())), prefix="model.", fields=HF_FIELDS)
    return config


def _load(hf_dir, log: Log | None) -> tuple[Transformer, Any, torch.dtype | None, dict]:
    d = Path(hf_dir)
    if not d.is_dir():
        raise CheckpointError(f"Hugging Face directory '{d}' does not exist" if not d.exists() else f"'{d}' is not a directory")
    config, meta = read_hf_config(d)
    tok, note = _read_tokenizer(d, config.vocab_size)  # a disagreeing tokenizer is refused before the weights load
    check_config(config, d / CONFIG, sorted(set(_weight_files(d).values())), prefix="model.", fields=HF_FIELDS)
    model = Transformer(config)
    stored = _load_weights(model, d, shared_qk_norm=meta.get("model_type") == "qwen3")
    if note is not None and log is not None:
        log(note)
    return model, tok, stored, meta


def load_hf(hf_dir: str | os.PathLike, *, device: str | torch.device = "cpu", dtype: torch.dtype | None = None, log: Log | None = _stderr):
    """``(model, tokenizer_or_None)`` from a Hugging Face directory (read-only) of a type
    :data:`.hf_config.SUPPORTED` lists.

    Weights become fp32 unless ``dtype`` is given (as :func:`rnope.load`).
    """
    model, tok, _, _ = _load(hf_dir, log)
    model.to(device=device, dtype=dtype) if dtype else model.to(device=device)
    return model.eval(), tok


def import_hf(hf_dir: str | os.PathLike, out_dir: str | os.PathLike, *, dtype: torch.dtype | None = None, log: Log | None = _stderr) -> Path:
    """Write the HF directory ``hf_dir`` as an rnope checkpoint at ``out_dir`` (atomically).

    Tensors keep their stored dtype unless ``dtype`` is given.
    """
    from ..checkpoint import save

    out = Path(out_dir)
    check_out_dir(out)
    model, tok, stored, meta = _load(hf_dir, log)
    target = dtype or stored
    if target is not None:
        model.to(dtype=target)
    src = {"format": "hf", "model_type": meta.get("model_type"), "path": str(Path(hf_dir).resolve())}
    _atomic_dir(out, lambda d: save(d, model.config, model.state_dict(), tok, extra={"imported_from": src}))
    return out


# ---------------------------------------------------------------------------------------------
# the loader registry's "hf" format
def is_hf_dir(d: str | os.PathLike) -> bool:
    """Whether ``d/config.json`` is a Hugging Face config (a ``model_type``, no rnope ``model``
    section); never raises."""
    try:
        meta = json.loads((Path(d) / CONFIG).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(meta, dict) and "model_type" in meta and "model" not in meta


def register_loaders(register: Callable[..., Any]) -> None:
    """Register the ``hf`` format through ``register(name, detect, load)``
    (:func:`rnope.checkpoint.register_loader`, which calls this hook)."""
    register("hf", is_hf_dir, lambda d, device, dtype: load_hf(d, device=device, dtype=dtype))
