"""Inference-time scaling of NoPE-layer queries, on any checkpoint, without retraining (docs/nope_scale.md).

A NoPE layer's query at absolute position ``p`` (the row's own position: left padding does not
count) is multiplied by a factor ``β(p)`` before attention, so every attention logit of that query
is multiplied by ``β(p)``. RoPE layers are never touched. The modes:

==========  ==================================================  =================================
mode        β(p)                                                config (``nope.temperature``)
==========  ==================================================  =================================
``none``    1                                                   ``"none"``
``llama4``  1 + s·ln(floor((p+1)/F) + 1), s = 0.1, F = 8192      ``"llama4"``, s = nope.scale,
            (Llama 4's ``attn_temperature_tuning``)              F = nope.floor
``log``     1 + c·ln(max(1, (p+1)/L_train)), c = 0.1            ``"log"``, c = nope.scale,
                                                                L_train = nope.floor
``fitted``  ``log`` with c fitted on held-out text              as ``log``
==========  ==================================================  =================================

``log`` is DroPE's softmax scaling ``β = 1 + c·ln(L_test / L_train)`` applied per position (with
``L_test`` = p+1, and β = 1 inside the training length), so a query's scale depends on its own
position only: the cached decode and the full forward compute the same logits. ``L_train`` is the
checkpoint's training length (:func:`rnope.evals.predictor.detect_train_seq_len`). The default
``c = 0.1`` is the coefficient Llama 4 uses for the same kind of query scaling and YaRN's
``0.1·ln(s) + 1`` attention factor; ``fitted`` replaces it by the c that minimises the held-out NLL
of the tokens between 2x and 4x the training length (:func:`fit`).

The scale is a config change only (no weight changes): :func:`set_nope_scale` switches a loaded
model, :func:`load` loads a checkpoint with a mode, and a fitted c is stored in the checkpoint's
``config.json`` under the top-level key ``"nope_scale"`` (:func:`save_fit`), where ``fitted``
finds it the next time instead of fitting again.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from .config import ModelConfig, NopeOptions

__all__ = [
    "DEFAULT_C",
    "FIT_KEY",
    "MODES",
    "apply",
    "beta",
    "check_config",
    "check_checkpoint",
    "check_writable",
    "fit",
    "load",
    "log_temperature",
    "minimize",
    "parse_mode",
    "save_fit",
    "scaled_config",
    "set_nope_scale",
    "stored_fit",
]

MODES = ("none", "llama4", "log", "fitted")
DEFAULT_C = 0.1  # log's c when none is given (Llama 4's attn_scale; YaRN's 0.1·ln s)
LLAMA4_SCALE, LLAMA4_FLOOR = 0.1, 8192  # Llama 4's attn_scale and floor_scale
FIT_KEY = "nope_scale"  # top-level key of a checkpoint's config.json holding a fitted c
FIT_SPAN = (2, 4)  # fit on the tokens between 2x and 4x the training length
FIT_RANGE = (0.0, 1.0)  # c searched in [0, 1]: a grid, then golden-section around its best point
FIT_GRID, FIT_ITERS = 11, 10

Log = Callable[[str], None]


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------ formulas
def log_temperature(positions: torch.Tensor, c: float, train_len: int) -> torch.Tensor:
    """``β = 1 + c·ln(max(1, (p+1)/train_len))`` (fp32) — exactly 1 for ``p < train_len``."""
    return 1.0 + c * torch.log(((positions.to(torch.float32) + 1.0) / train_len).clamp(min=1.0))


def beta(mode: str, positions: torch.Tensor, c: float | None = None, length: int | None = None) -> torch.Tensor:
    """β(p) of ``mode`` ("none", "llama4", "log") at ``positions``, in fp32 — what the model applies.

    ``c``: the coefficient (default 0.1 for both); ``length``: Llama 4's floor (default 8192) or
    log's training length (required)."""
    if mode == "none":
        return torch.ones(positions.shape, dtype=torch.float32, device=positions.device)
    if mode == "llama4":
        from .rope import llama4_temperature

        return llama4_temperature(positions, LLAMA4_SCALE if c is None else c, length or LLAMA4_FLOOR)
    if mode == "log":
        if length is None:
            raise ValueError("beta('log'): the training length is required")
        return log_temperature(positions, DEFAULT_C if c is None else c, length)
    raise ValueError(f"beta: mode must be none, llama4 or log, got {mode!r}")


# ------------------------------------------------------------------------------------------ checks
def parse_mode(value: str | None, flag: str = "--nope-scale") -> tuple[str | None, float | None]:
    """``(mode, c)`` from ``none | llama4 | log | log:C | fitted`` (None -> ``(None, None)``: leave
    the model as saved). A bad value raises one-line ``ValueError`` naming ``flag``."""
    if value is None:
        return None, None
    if not isinstance(value, str):
        raise ValueError(f"{flag} must be none, llama4, log, log:C or fitted, got {value!r}")
    if value in MODES:
        return value, None
    name, sep, num = value.partition(":")
    if name == "log" and sep:
        try:
            c = float(num)
        except ValueError:
            c = float("nan")
        if not (math.isfinite(c) and c >= 0):
            raise ValueError(f"{flag} {value}: c must be a finite number >= 0, got {num!r}")
        return "log", c
    raise ValueError(f"{flag} must be none, llama4, log, log:C or fitted, got {value!r}")


def check_config(config: ModelConfig, mode: str | None, flag: str = "--nope-scale", where: str | os.PathLike | None = None) -> None:
    """Raise ``ValueError`` (one line) when ``mode`` cannot apply to ``config``: a mode other than
    none on a model without NoPE layer, or any mode on a model whose NoPE layers learned a
    Scalable-Softmax scale (``nope.temperature "ssmax"``: its scale is part of the weights)."""
    if mode is None:
        return
    what = "the model" if where is None else f"the model '{os.fspath(where)}'"
    nope = [s for s in config.layers if not s.rope]
    if mode != "none" and not nope:
        raise ValueError(f"{flag} {mode}: {what} has no NoPE layer (pattern {config.pattern})")
    if any(s.nope_options.temperature == "ssmax" for s in nope):
        raise ValueError(f"{flag} {mode}: {what} scales its NoPE queries by a learned Scalable-Softmax "
                         f"(nope.temperature 'ssmax'), which {flag} cannot replace")


def check_checkpoint(path: str | os.PathLike, mode: str | None, flag: str = "--nope-scale") -> None:
    """:func:`check_config` on a checkpoint, run or Hugging Face directory, reading no weights."""
    if mode is None:
        return
    from .checkpoint import CONFIG_FILE, read_config, read_meta, resolve

    d = resolve(path)
    meta = read_meta(d) if (d / CONFIG_FILE).exists() else {}
    if isinstance(meta, dict) and "model_type" in meta and "model" not in meta:
        from .interop.hf import read_checked_config

        config = read_checked_config(d)
    else:
        config, _ = read_config(d)
    check_config(config, mode, flag, path)


# ------------------------------------------------------------------------------------------ applying
def scaled_config(config: ModelConfig, mode: str, c: float | None = None, *, train_seq_len: int | None = None,
                  floor: int | None = None) -> ModelConfig:
    """``config`` with the NoPE query scale of ``mode`` ("none", "llama4", "log"); other fields kept.

    llama4: ``c`` / ``floor`` default to the config's own ``nope.scale`` / ``nope.floor`` when it already is llama4,
    else to Llama 4's 0.1 / 8192. log: ``c`` defaults to :data:`DEFAULT_C`, ``train_seq_len`` to
    ``config.max_seq_len``."""
    if mode == "none":
        return config.replace(nope={"temperature": "none"})
    if mode == "llama4":
        same = config.nope.temperature == "llama4"
        scale = c if c is not None else (config.nope.scale if same else LLAMA4_SCALE)
        fl = floor if floor is not None else (config.nope.floor if same else LLAMA4_FLOOR)
        return config.replace(nope=NopeOptions(temperature="llama4", scale=float(scale), floor=int(fl)))
    if mode == "log":
        L = config.max_seq_len if train_seq_len is None else train_seq_len
        if isinstance(L, bool) or not isinstance(L, int) or L < 1:
            raise ValueError(f"train_seq_len must be an integer >= 1, got {L!r}")
        return config.replace(nope=NopeOptions(temperature="log", scale=float(DEFAULT_C if c is None else c), floor=L))
    raise ValueError(f"nope_scale mode must be none, llama4 or log, got {mode!r}")


def _set_config(model, config: ModelConfig) -> None:
    model.config = config
    for block, spec in zip(model.layers, config.layers):
        if not spec.rope:  # RoPE layers' specs carry no NoPE option: they are left as they are
            block.self_attn.spec = spec


def set_nope_scale(model, mode: str, c: float | None = None, *, train_seq_len: int | None = None,
                   floor: int | None = None) -> ModelConfig:
    """Switch ``model``'s NoPE-layer query scale to ``mode`` in place and return its new config.

    ``mode``: "none" (β = 1), "llama4" (``c`` = Llama 4's scale, default 0.1; ``floor`` default
    8192) or "log" (``c`` default 0.1; ``train_seq_len`` = L_train, default the config's
    ``max_seq_len`` — pass the checkpoint's training length). "fitted" needs held-out text or a
    checkpoint: :func:`load` / :func:`apply` (or :func:`fit`, then "log" with its c). Only the
    config changes; the weights are shared. Raises ``ValueError`` for a model without NoPE layer
    (any mode but none) or with learned Scalable-Softmax NoPE layers.
    """
    if mode == "fitted":
        raise ValueError("nope_scale fitted: use rnope.nope_scale.load(path, nope_scale='fitted') or "
                         "rnope.nope_scale.fit(...) and then set_nope_scale(model, 'log', c)")
    if mode not in ("none", "llama4", "log"):
        raise ValueError(f"nope_scale must be none, llama4, log or fitted, got {mode!r}")
    if c is not None and (isinstance(c, bool) or not isinstance(c, (int, float)) or not (math.isfinite(c) and c >= 0)):
        raise ValueError(f"nope_scale {mode}: c must be a finite number >= 0, got {c!r}")
    check_config(model.config, mode, "nope_scale")
    new = scaled_config(model.config, mode, c, train_seq_len=train_seq_len, floor=floor)
    _set_config(model, new)
    return new


def describe(info: dict) -> str:
    """One line for a log: the mode, its constants and (fitted) where c came from."""
    mode = info["mode"]
    if mode == "none":
        return "nope-scale none: NoPE queries unscaled"
    if mode == "llama4":
        return (f"nope-scale llama4: beta = 1 + {info['c']:g}*ln(floor((p+1)/{info['floor']}) + 1) "
                f"on NoPE layers")
    src = f" ({info['source']})" if info.get("source") else ""
    return (f"nope-scale {mode}: beta = 1 + {info['c']:.4g}*ln(max(1, (p+1)/{info['train_seq_len']})) "
            f"on NoPE layers{src}")


def apply(
    model,
    nope_scale: str | None,
    *,
    ckpt: str | os.PathLike | None = None,
    tokenizer=None,
    train_seq_len: int | None = None,
    save: bool = False,
    fit_kw: dict | None = None,
    flag: str = "--nope-scale",
    log: Log | None = _stderr,
) -> dict | None:
    """Apply a ``--nope-scale`` value (``none | llama4 | log | log:C | fitted``, or None = leave the
    model as saved) to a loaded ``model``; return what was applied as a dict (None for None).

    ``ckpt``: the checkpoint directory ``model`` came from: its training length is the default
    ``train_seq_len``, and ``fitted`` reads the c stored in its ``config.json`` — or, when none is
    stored (or ``save``), fits one on held-out text with ``tokenizer`` (:func:`fit`, options
    ``fit_kw``) and, with ``save``, stores it there (:func:`save_fit`). ``log`` prints one line.
    """
    mode, c = parse_mode(nope_scale, flag)
    if mode is None:
        return None
    if save and mode != "fitted":
        raise ValueError(f"saving a fit needs {flag} fitted, got {flag} {nope_scale}")
    check_config(model.config, mode, flag, ckpt)
    d = None
    if ckpt is not None:
        from .checkpoint import resolve

        d = resolve(ckpt)
        if train_seq_len is None:
            from .evals.predictor import detect_train_seq_len

            train_seq_len = detect_train_seq_len(d, model.config.max_seq_len)[0]
    L = train_seq_len or model.config.max_seq_len
    info: dict[str, Any] = {"mode": mode}
    if mode in ("none", "llama4"):
        cfg = set_nope_scale(model, mode)
        if mode == "llama4":
            info.update(c=cfg.nope.scale, floor=cfg.nope.floor)
    elif mode == "log":
        set_nope_scale(model, "log", c, train_seq_len=L)
        info.update(c=DEFAULT_C if c is None else c, train_seq_len=L, source="given" if c is not None else "default c")
    else:
        stored = None if (save or d is None) else stored_fit(d)
        if stored is not None:
            info.update(c=stored["c"], train_seq_len=stored["train_seq_len"], source=f"stored in {d / 'config.json'}")
        else:
            if save:
                check_writable(d, flag)
            if tokenizer is None:
                where = "the model" if ckpt is None else f"'{os.fspath(ckpt)}'"
                raise ValueError(f"{flag} fitted: {where} stores no fitted c (config.json '{FIT_KEY}') and has no "
                                 "tokenizer to fit one on held-out text")
            if log is not None:
                name = "the model" if d is None else str(d)
                log(f"nope-scale fitted: fitting c on held-out text for {name} (stored in its config.json after)"
                    if save else f"nope-scale fitted: {name} stores no fitted c; fitting one on held-out text "
                    "(not stored)")
            result = fit(model, tokenizer, L, log=log, **(fit_kw or {}))
            info.update(c=result["c"], train_seq_len=L, source="fitted now", fit=result)
            if save:
                path = save_fit(d, result)
                info["source"] = f"fitted now, stored in {path}"
        set_nope_scale(model, "log", info["c"], train_seq_len=info["train_seq_len"])
    if log is not None:
        log(describe(info))
    return info


def load(path: str | os.PathLike, nope_scale: str | None = None, *, device: str | torch.device = "cpu",
         dtype: torch.dtype | None = None, save: bool = False, fit_kw: dict | None = None, log: Log | None = None):
    """``(model, tokenizer)`` as :func:`rnope.load`, with the NoPE query scale ``nope_scale``
    (``none | llama4 | log | log:C | fitted``; None = as saved) applied — see :func:`apply`."""
    from .checkpoint import load as load_checkpoint

    check_checkpoint(path, parse_mode(nope_scale, "nope_scale")[0], "nope_scale")
    model, tok = load_checkpoint(path, device=device, dtype=dtype)
    apply(model, nope_scale, ckpt=path, tokenizer=tok, save=save, fit_kw=fit_kw, flag="nope_scale", log=log)
    return model, tok


# ------------------------------------------------------------------------------------------ fitting
def minimize(f: Callable[[float], float], lo: float, hi: float, *, grid: int = FIT_GRID, iters: int = FIT_ITERS):
    """Minimise ``f`` on [lo, hi]: ``grid`` evenly spaced points, then ``iters`` golden-section
    evaluations (at least two when ``iters`` > 0) inside the two grid cells around the best point. Returns ``(x, f(x), [(x, f(x)), ...])`` where
    ``x`` is the argmin over every evaluated point (the first one on ties)."""
    if not lo < hi:
        raise ValueError(f"minimize: need lo < hi, got [{lo}, {hi}]")
    if grid < 2 or iters < 0:
        raise ValueError(f"minimize: need grid >= 2 and iters >= 0, got grid={grid}, iters={iters}")
    seen: dict[float, float] = {}

    def ev(x: float) -> float:
        if x not in seen:
            seen[x] = float(f(x))
        return seen[x]

    xs = [lo + (hi - lo) * i / (grid - 1) for i in range(grid)]
    xs[-1] = hi
    fs = [ev(x) for x in xs]
    i = min(range(grid), key=lambda j: (fs[j], j))
    a, b = xs[max(i - 1, 0)], xs[min(i + 1, grid - 1)]
    g = (math.sqrt(5) - 1) / 2
    x1, x2 = b - g * (b - a), a + g * (b - a)
    f1, f2 = (ev(x1), ev(x2)) if iters else (0.0, 0.0)
    for _ in range(max(0, iters - 2)):
        if f1 <= f2:
            b, x2, f2 = x2, x1, f1
            x1 = b - g * (b - a)
            f1 = ev(x1)
        else:
            a, x1, f1 = x1, x2, f2
            x2 = a + g * (b - a)
            f2 = ev(x2)
    order = list(seen.items())
    best = min(range(len(order)), key=lambda j: (order[j][1], j))
    return order[best][0], order[best][1], order


def _nll(model, rows: Sequence[Sequence[int]], n_score: int, batch_size: int) -> float:
    from .inference import score_tokens

    total, n = 0.0, 0
    for b in range(0, len(rows), batch_size):
        batch = rows[b : b + batch_size]
        for lp, _ in score_tokens(model, batch, [n_score] * len(batch)):
            total -= math.fsum(lp)
            n += len(lp)
    return total / n


def fit(
    model,
    tokenizer,
    train_seq_len: int,
    *,
    data: str = "builtin",
    val_fraction: float = 0.02,
    docs: Sequence[str] | None = None,
    streams: int = 4,
    seed: int = 0,
    span: tuple[int, int] = FIT_SPAN,
    c_range: tuple[float, float] = FIT_RANGE,
    grid: int = FIT_GRID,
    iters: int = FIT_ITERS,
    batch_size: int = 4,
    log: Log | None = None,
) -> dict:
    """Fit log's c on held-out text: the c in ``c_range`` minimising the mean NLL of the tokens
    ``span[0]·L .. span[1]·L - 1`` of up to ``streams`` held-out streams of ``span[1]·L`` tokens
    (L = ``train_seq_len``), each token scored with all of its preceding context.

    Held-out text: the validation split of ``data`` (as ``rnope eval ppl``:
    :func:`rnope.evals.ppl.heldout_documents`), or ``docs``; streams are made as the ppl evaluation
    makes them (:func:`rnope.evals.ppl.make_streams`, seed ``seed``). The search is :func:`minimize`.
    The model's config is restored afterwards. Returns a JSON-ready dict: ``c``, ``nll``, ``nll_c0``
    (the unscaled model's NLL on the same tokens), ``evaluated`` [[c, nll], ...] and the settings.
    """
    from .evals.ppl import heldout_documents, make_streams

    check_config(model.config, "fitted", "nope_scale")
    lo_mult, hi_mult = span
    if not (isinstance(lo_mult, int) and isinstance(hi_mult, int) and 0 <= lo_mult < hi_mult):
        raise ValueError(f"fit span must be two integers 0 <= a < b, got {span!r}")
    L = int(train_seq_len)
    if streams < 1 or batch_size < 1:
        raise ValueError(f"fit needs streams >= 1 and batch_size >= 1, got {streams}, {batch_size}")
    texts = list(docs) if docs is not None else heldout_documents(data, val_fraction)
    length = hi_mult * L
    n_score = min((hi_mult - lo_mult) * L, length - 1)
    rows = make_streams(texts, tokenizer.encode, tokenizer.eos_id, length, streams, seed, what="the model")
    original = model.config
    training = model.training
    model.eval()

    def objective(c: float) -> float:
        set_nope_scale(model, "log", c, train_seq_len=L)
        v = _nll(model, rows, n_score, batch_size)
        if log is not None:
            log(f"  c = {c:.4f}: NLL {v:.5f}")
        return v

    try:
        c, nll, evaluated = minimize(objective, float(c_range[0]), float(c_range[1]), grid=grid, iters=iters)
    finally:
        _set_config(model, original)
        model.train(training)
    c0 = dict(evaluated).get(0.0)
    return {
        "mode": "log",
        "c": c,
        "train_seq_len": L,
        "nll": nll,
        "nll_c0": c0,
        "scored_tokens": [length - n_score, length],
        "stream_tokens": length,
        "streams": len(rows),
        "data": "<documents given>" if docs is not None else data,
        "val_fraction": None if docs is not None else val_fraction,
        "seed": seed,
        "search": {"range": [float(c_range[0]), float(c_range[1])], "grid": grid, "iters": iters},
        "evaluated": [[x, v] for x, v in evaluated],
    }


# ------------------------------------------------------------------------------------------ storing
def _config_file(d: Path) -> Path:
    from .checkpoint import CONFIG_FILE

    return Path(d) / CONFIG_FILE


def stored_fit(ckpt_dir: str | os.PathLike) -> dict | None:
    """The fit stored in a checkpoint's ``config.json`` (``{"c", "train_seq_len", ...}``), or None.
    A malformed entry raises ``ValueError`` naming the file."""
    from .checkpoint import read_meta

    meta = read_meta(ckpt_dir)
    if not isinstance(meta, dict) or FIT_KEY not in meta:
        return None
    v = meta[FIT_KEY]
    cfile = _config_file(Path(ckpt_dir))
    ok = isinstance(v, dict)
    c, L = (v.get("c"), v.get("train_seq_len")) if ok else (None, None)
    ok = ok and isinstance(c, (int, float)) and not isinstance(c, bool) and math.isfinite(c) and c >= 0
    ok = ok and isinstance(L, int) and not isinstance(L, bool) and L >= 1
    if not ok:
        raise ValueError(f"{cfile}: '{FIT_KEY}' must be an object with a number c >= 0 and an integer "
                         f"train_seq_len >= 1, got {json.dumps(v)[:80]}")
    return v


def check_writable(d: Path | None, flag: str = "--nope-scale") -> None:
    """Raise ``ValueError`` unless a fit can be stored in ``d``: an rnope checkpoint directory."""
    from .checkpoint import read_meta

    if d is None:
        raise ValueError(f"{flag} fitted: storing a fit needs the model's checkpoint directory")
    meta = read_meta(d)
    if not isinstance(meta, dict) or "model" not in meta:
        raise ValueError(f"{flag} fitted: '{d}' is not an rnope checkpoint (a Hugging Face directory is read-only); "
                         f"the fitted c cannot be stored there (use {flag} log:C)")


def save_fit(ckpt_dir: str | os.PathLike, result: dict) -> Path:
    """Store a :func:`fit` result in the checkpoint's ``config.json`` (top-level ``"nope_scale"``,
    written atomically; the weights and their checksums are untouched). Returns the file."""
    from .checkpoint import read_meta
    from .outputs import atomic_write_text

    d = Path(ckpt_dir)
    check_writable(d, "nope_scale")
    meta = read_meta(d)
    keep = ("mode", "c", "train_seq_len", "nll", "nll_c0", "scored_tokens", "stream_tokens", "streams", "data",
            "val_fraction", "seed", "search")
    meta[FIT_KEY] = {k: result[k] for k in keep if k in result}
    cfile = _config_file(d)
    atomic_write_text(cfile, json.dumps(meta, indent=2, sort_keys=True))
    return cfile
