"""The model side of every text evaluation: the :class:`Predictor` protocol, :class:`ModelPredictor`
over an rnope model, and loading checkpoints as predictors.

A :class:`Predictor` is what every text evaluation talks to::

    name: str                      # the model's name in tables and file names
    train_seq_len: int             # the training context length (marked in figures)
    info: dict                     # written to the JSON (path, model config, ...)
    encode(text) -> list[int]      # the model's own tokenizer (length fitting)
    complete(prompts, max_new_tokens) -> list[str]       # greedy continuations
    nll(contexts, continuations) -> list[(nll, greedy)]  # summed NLL of each continuation

:class:`ModelPredictor` implements it over an rnope :class:`~rnope.model.Transformer` with the
library's one inference path (:mod:`rnope.inference`); test doubles (an oracle that reads the
needle out of the prompt, a random guesser) implement the same protocol and go through the very
same prompt building, batching, scoring and reporting.

Memory: prompts are left-padded into batches of similar length and run through the hybrid cache
in chunks (:func:`rnope.inference.forward_chunks`), so only a chunk's ``chunk x vocab`` logits and
``chunk x context`` attention scores exist at once -- 8k-16k contexts fit on a CPU or one GPU.
Unpadded inputs whose logits fit the budget run in one pass on the fast (flash / sliding) kernels.

Training length (``train_seq_len``) of a checkpoint, first match wins:

1. ``train_seq_len`` at the top level of the checkpoint's ``config.json`` (an explicit extra:
   ``rnope.save(dir, model, tok, extra={"train_seq_len": 4096})``);
2. the training run recorded in ``config.json`` (``run`` + ``stage`` extras written by ``rnope
   train``): the longest ``seq_len`` of the stages up to and including the checkpoint's stage;
3. the same from the run directory's ``run.json``;
4. the model config's ``max_seq_len``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch

from ..inference import generate, score_tokens
from ..runtime import pick_device, pick_dtype
from .args import model_names

__all__ = ["ModelPredictor", "Predictor", "detect_train_seq_len", "load_predictor", "load_predictors"]


@runtime_checkable
class Predictor(Protocol):
    """What the text evaluations need from a model (see module doc)."""

    name: str
    train_seq_len: int
    info: dict

    def encode(self, text: str) -> list[int]: ...

    def complete(self, prompts: Sequence[str], max_new_tokens: int) -> list[str]: ...

    def nll(self, contexts: Sequence[str], continuations: Sequence[str]) -> list[tuple[float, bool]]: ...


def _run_seq_len(run: dict, stage: Any) -> int | None:
    stages = run.get("stages") or []
    if isinstance(stages, list) and stages:
        names = [s.get("name") if isinstance(s, dict) else None for s in stages]
        upto = stages[: names.index(stage) + 1] if stage in names else stages
        lens = [s["seq_len"] for s in upto if isinstance(s, dict) and isinstance(s.get("seq_len"), int)]
        return max(lens) if lens else None
    v = run.get("seq_len")
    return v if isinstance(v, int) and v > 0 else None


def detect_train_seq_len(ckpt_dir: str | Path, max_seq_len: int) -> tuple[int, str]:
    """``(train_seq_len, where it came from)`` for a resolved checkpoint directory (module doc)."""
    d = Path(ckpt_dir)
    try:
        meta = json.loads((d / "config.json").read_text())
    except (OSError, ValueError):
        meta = {}
    if isinstance(meta, dict):
        v = meta.get("train_seq_len")
        if isinstance(v, int) and not isinstance(v, bool) and v > 0:
            return v, "config.json train_seq_len"
        if isinstance(meta.get("run"), dict):
            v = _run_seq_len(meta["run"], meta.get("stage"))
            if v:
                return v, "config.json run stages"
    for run_json in (d / "run.json", d.parent.parent / "run.json"):
        try:
            info = json.loads(run_json.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(info, dict) and isinstance(info.get("run"), dict):
            v = _run_seq_len(info["run"], None)
            if v:
                return v, "run.json"
    return int(max_seq_len), "model max_seq_len"


def load_predictor(
    path: str,
    name: str | None = None,
    *,
    device: str | torch.device = "auto",
    dtype: str | torch.dtype = "auto",
    batch_size: int = 8,
    need_tokenizer: bool = True,
    nope_scale: str | None = None,
    save_fit: bool = False,
    fit_kw: dict | None = None,
) -> "ModelPredictor":
    """A :class:`ModelPredictor` for a checkpoint / run / Hugging Face directory.

    ``nope_scale``: ``none | llama4 | log | log:C | fitted`` applied to the loaded model's NoPE
    layers (None: as saved); ``save_fit`` / ``fit_kw``: see :func:`rnope.nope_scale.apply`. What
    was applied is recorded in ``info["nope_scale"]``."""
    from ..checkpoint import load, resolve

    dev = device if isinstance(device, torch.device) else pick_device(device)
    dt = dtype if isinstance(dtype, torch.dtype) else pick_dtype(dtype, dev)
    d = resolve(path)
    if need_tokenizer and not (d / "tokenizer.json").exists():
        raise ValueError(f"checkpoint '{path}' has no tokenizer.json: text evaluations need the model's tokenizer")
    model, tok = load(path, device=dev, dtype=dt)
    if need_tokenizer and tok is None:
        raise ValueError(f"checkpoint '{path}' has no tokenizer.json: text evaluations need the model's tokenizer")
    L, src = detect_train_seq_len(d, model.config.max_seq_len)
    scale = None
    if nope_scale is not None:
        from ..nope_scale import apply

        scale = apply(model, nope_scale, ckpt=d, tokenizer=tok, train_seq_len=L, save=save_fit, fit_kw=fit_kw)
    name = name or model_names([path])[0]
    info = {
        "path": str(Path(path).resolve()),
        "checkpoint": str(d.resolve()),
        "config": model.config.to_dict(),
        "parameters": model.num_params(),
        "train_seq_len": L,
        "train_seq_len_source": src,
        "tokenizer_vocab_size": None if tok is None else tok.vocab_size,
        "device": str(dev),
        "dtype": str(dt).replace("torch.", ""),
    }
    if scale is not None:
        info["nope_scale"] = scale
    return ModelPredictor(model, tok, name=name, train_seq_len=L, info=info, batch_size=batch_size)


def load_predictors(
    ckpts: Sequence[str],
    names: Sequence[str] | None = None,
    *,
    device: str = "auto",
    dtype: str = "auto",
    batch_size: int = 8,
    need_tokenizer: bool = True,
    nope_scale: str | None = None,
    save_fit: bool = False,
    fit_kw: dict | None = None,
) -> list["ModelPredictor"]:
    """Load every checkpoint (errors name the checkpoint; nothing is written -- except, with
    ``save_fit``, each checkpoint's fitted NoPE scale, once every checkpoint passed its checks)."""
    if not ckpts:
        raise ValueError("give at least one --ckpt")
    dev = pick_device(device)
    dt = pick_dtype(dtype, dev)
    labels = model_names(ckpts, names)
    if nope_scale is not None:  # every checkpoint can take the scale, before any model loads
        from ..nope_scale import check_checkpoint, parse_mode

        mode = parse_mode(nope_scale)[0]
        for c in ckpts:
            check_checkpoint(c, mode)
            if save_fit:
                from ..checkpoint import resolve
                from ..nope_scale import check_writable

                check_writable(resolve(c))
    return [
        load_predictor(c, n, device=dev, dtype=dt, batch_size=batch_size, need_tokenizer=need_tokenizer,
                       nope_scale=nope_scale, save_fit=save_fit, fit_kw=fit_kw)
        for c, n in zip(ckpts, labels)
    ]


# ----------------------------------------------------------------------------------------- predictor
class ModelPredictor:
    """:class:`Predictor` over an rnope model and its tokenizer (module doc).

    ``tokenizer`` may be None (token-space evaluations) or have fewer tokens than the model's
    ``vocab_size`` (a padded embedding); one with more raises ``ValueError`` naming both sizes
    (:func:`rnope.tokenizer.check_vocab_fits`)."""

    def __init__(
        self,
        model,
        tokenizer,
        *,
        name: str = "model",
        train_seq_len: int | None = None,
        info: dict | None = None,
        batch_size: int = 8,
        max_length: int | None = None,
        chunk_size: int | None = None,
    ):
        from ..tokenizer import check_vocab_fits

        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        # a tokenizer larger than the embedding is another model's (rule: rnope.tokenizer.check_vocab_fits)
        check_vocab_fits(tokenizer, model.config.vocab_size, f"model {name!r}")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.name = name
        self.train_seq_len = int(train_seq_len or model.config.max_seq_len)
        self.info = info if info is not None else {"config": model.config.to_dict(), "train_seq_len": self.train_seq_len}
        self.batch_size = batch_size
        self.max_length = max_length  # truncate nll inputs to this many tokens (lm_eval convention)
        self.chunk_size = chunk_size

    @property
    def config(self):
        return self.model.config

    def _tok(self):
        if self.tokenizer is None:
            raise ValueError(f"model {self.name!r} has no tokenizer: text evaluations need one")
        return self.tokenizer

    def encode(self, text: str) -> list[int]:
        return self._tok().encode(text)

    def _batches(self, lengths: Sequence[int]) -> Iterator[list[int]]:
        order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
        for s in range(0, len(order), self.batch_size):
            yield order[s : s + self.batch_size]

    def complete_ids(self, prompts: Sequence[Sequence[int]], max_new_tokens: int) -> list[list[int]]:
        """Greedy continuation ids (eos dropped) for token prompts, batched by similar length."""
        tok = self.tokenizer
        eos = tok.eos_id if tok is not None else None
        pad = tok.pad_id if tok is not None else 0
        outs: list[list[int]] = [[] for _ in prompts]
        if max_new_tokens < 1:
            return outs
        for idx in self._batches([len(p) for p in prompts]):
            res = generate(self.model, [prompts[i] for i in idx], max_new_tokens,
                           stop_ids=() if eos is None else (eos,), pad_id=pad, chunk_size=self.chunk_size)
            for i, o in zip(idx, res):
                outs[i] = [t for t in o if t != eos]
        return outs

    def complete(self, prompts: Sequence[str], max_new_tokens: int) -> list[str]:
        tok = self._tok()
        ids = tok.encode_batch(list(prompts))
        for i, p in enumerate(ids):
            if not p:
                ids[i] = [tok.bos_id]
        return [tok.decode(o) for o in self.complete_ids(ids, max_new_tokens)]

    def split_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """Token ids of (context, continuation) as scored: the continuation's tokens are those of
        ``encode(context + continuation)`` past the context's (so merges across the boundary are
        handled); an empty context becomes ``[bos]``."""
        tok = self._tok()
        whole = tok.encode(context + continuation)
        ctx = tok.encode(context) if context else []
        if whole[: len(ctx)] == ctx:
            cont = whole[len(ctx) :]
        else:
            cont = tok.encode(continuation)
        return (ctx or [tok.bos_id]), cont

    def nll_ids(self, pairs: Sequence[tuple[Sequence[int], Sequence[int]]]) -> list[tuple[float, bool]]:
        """Summed NLL (nats) of each continuation given its context, and whether greedy decoding
        reproduces it. Inputs longer than ``max_length`` keep their last ``max_length`` tokens."""
        tok = self.tokenizer
        pad = tok.pad_id if tok is not None else 0
        rows, ns, res = [], [], [None] * len(pairs)
        for i, (ctx, cont) in enumerate(pairs):
            seq = list(ctx) + list(cont)
            if self.max_length and len(seq) > self.max_length + 1:
                seq = seq[-(self.max_length + 1) :]
            rows.append(seq)
            ns.append(min(len(cont), len(seq) - 1))
        todo = [i for i in range(len(pairs)) if ns[i] > 0]
        for i in range(len(pairs)):
            if ns[i] <= 0:
                res[i] = (0.0, True)
        for idx in self._batches([len(rows[i]) for i in todo]):
            idx = [todo[j] for j in idx]
            out = score_tokens(self.model, [rows[i] for i in idx], [ns[i] for i in idx], pad_id=pad,
                               chunk_size=self.chunk_size)
            for i, (lp, gr) in zip(idx, out):
                res[i] = (-math.fsum(lp), all(gr))
        return res  # type: ignore[return-value]

    def nll(self, contexts: Sequence[str], continuations: Sequence[str]) -> list[tuple[float, bool]]:
        if len(contexts) != len(continuations):
            raise ValueError("contexts and continuations differ in length")
        return self.nll_ids([self.split_pair(c, x) for c, x in zip(contexts, continuations)])

    def token_logprobs(self, rows: Sequence[Sequence[int]], n_score: int | Sequence[int]) -> list[tuple[list[float], list[bool]]]:
        """Per-token log-probs and greedy flags of the last ``n_score`` tokens of each row
        (no truncation), batched ``batch_size`` rows at a time."""
        ns = [n_score] * len(rows) if isinstance(n_score, int) else list(n_score)
        pad = self.tokenizer.pad_id if self.tokenizer is not None else 0
        res: list[Any] = [None] * len(rows)
        for idx in self._batches([len(r) for r in rows]):
            out = score_tokens(self.model, [rows[i] for i in idx], [ns[i] for i in idx], pad_id=pad,
                               chunk_size=self.chunk_size)
            for i, o in zip(idx, out):
                res[i] = o
        return res
