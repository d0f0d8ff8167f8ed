"""``rnope analyze``: attention analysis of NIAH probes (segment mass, entropy, position profile).

Writes ``OUT/analysis.json``, ``OUT/analysis.md`` and PNG figures (see :mod:`rnope.analysis`).
Everything is validated -- arguments, checkpoints, tokenizers and every probe length -- before the
first forward pass, and nothing is written unless the whole analysis succeeds.
"""

from __future__ import annotations

import argparse
import sys

NAME = "analyze"
HELP = "attention analysis on NIAH probes: mass by segment, entropy, attention by position (analysis.json/.md + figures)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ckpt", action="append", required=True, metavar="DIR",
                   help="checkpoint, run or Hugging Face directory (repeat for several models)")
    p.add_argument("--names", nargs="+", default=None, metavar="NAME",
                   help="comma-separated model names, one per --ckpt (default: directory names)")
    p.add_argument("--lengths", required=True, help="probe lengths in tokens, e.g. 1024,4096 or 4k")
    p.add_argument("--samples", type=int, default=4, help="probes per length (default 4)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--seed", type=int, default=0, help="probe seed; sample i uses seed + i (default 0)")
    p.add_argument("--haystack", choices=("noise", "essay"), default="noise", help="passkey filler (default noise)")
    p.add_argument("--essay", default=None, metavar="FILE", help="UTF-8 prose file for --haystack essay")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:N")
    p.add_argument("--dtype", default="float32",
                   help="float32 (default: attention weights are what is measured, so no bf16 rounding unless "
                        "asked), bfloat16, float16, or auto (bf16 on cuda, fp32 on cpu); scores and softmax are "
                        "always fp32")
    p.add_argument("--chunk-mb", type=int, default=64, help="working memory per chunk of attention rows (MiB)")
    p.add_argument("--no-figures", action="store_true", help="skip the PNG figures")
    from .eval import NOPE_SCALE_HELP

    p.add_argument("--nope-scale", default=None, metavar="MODE", help=NOPE_SCALE_HELP)


def _names(args) -> list[str]:
    from pathlib import Path

    if args.names is None:
        names = []
        for c in args.ckpt:
            p = Path(c).resolve()
            names.append(p.name if p.name not in ("", "checkpoints") else str(p))
        if len(set(names)) != len(names):  # same directory names: fall back to the paths given
            names = list(args.ckpt)
    else:
        names = [n.strip() for part in args.names for n in part.split(",") if n.strip()]
        if len(names) != len(args.ckpt):
            raise ValueError(f"--names: {len(names)} name(s) for {len(args.ckpt)} --ckpt")
    if len(set(names)) != len(names):
        raise ValueError(f"--names: duplicate model names {names}")
    return names


def _tokenizer(tok, vocab_size: int, where: str):
    from ..tokenizer import Tokenizer

    if tok is not None:
        return tok
    byte = Tokenizer.byte_level()
    if vocab_size == byte.vocab_size:
        return byte
    raise ValueError(f"checkpoint '{where}' has no tokenizer.json (and its vocab_size {vocab_size} is not byte-level)")


def _precheck(path: str):
    """Cheap checks before any weights load: the directory resolves; an rnope checkpoint has a valid
    config, its weights file and a usable tokenizer. Returns the rnope tokenizer, or None (HF dir)."""
    import json

    from ..checkpoint import CONFIG_FILE, TOKENIZER_FILE, WEIGHTS_FILE, CheckpointError, read_config, resolve

    d = resolve(path)
    try:
        meta = json.loads((d / CONFIG_FILE).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{d / CONFIG_FILE}: cannot read JSON ({e.__class__.__name__}: {e})") from None
    if isinstance(meta, dict) and "model_type" in meta and "model" not in meta:
        return None  # Hugging Face directory: validated by loading it
    cfg, _ = read_config(d)
    if not (d / WEIGHTS_FILE).is_file():
        raise CheckpointError(f"{d / WEIGHTS_FILE} is missing")
    tok = None
    if (d / TOKENIZER_FILE).exists():
        from ..tokenizer import Tokenizer

        tok = Tokenizer.load(d / TOKENIZER_FILE)
        if tok.vocab_size > cfg.vocab_size:
            raise CheckpointError(f"{d / TOKENIZER_FILE}: tokenizer has {tok.vocab_size} tokens but the model's vocab_size is {cfg.vocab_size}")
    return _tokenizer(tok, cfg.vocab_size, path)


def run(args) -> int:
    from pathlib import Path

    import torch

    from ..analysis.report import build_probes, versions, write_report
    from ..outputs import check_out_dir

    # ---- arguments
    from ..evals.args import parse_lengths

    lengths = parse_lengths(args.lengths)
    if args.samples < 1:
        raise ValueError(f"--samples must be >= 1, got {args.samples}")
    if args.chunk_mb < 1:
        raise ValueError(f"--chunk-mb must be >= 1, got {args.chunk_mb}")
    names = _names(args)
    from ..nope_scale import apply, check_checkpoint, parse_mode

    nope_mode = parse_mode(args.nope_scale)[0]
    out = check_out_dir(args.out, new=False)  # analysis.json, analysis.md and figures are added to it
    essay = None
    if args.haystack == "essay":
        if not args.essay:
            raise ValueError("--haystack essay needs --essay FILE")
        try:
            essay = [Path(args.essay).read_text(encoding="utf-8")]
        except FileNotFoundError:
            raise ValueError(f"--essay file '{args.essay}' does not exist") from None
        except (OSError, UnicodeDecodeError) as e:
            raise ValueError(f"--essay file '{args.essay}' cannot be read ({e.__class__.__name__})") from None
    elif args.essay:
        raise ValueError("--essay is only used with --haystack essay")
    from ..runtime import pick_device, pick_dtype

    device = pick_device(args.device)
    dtype = pick_dtype(args.dtype, device)
    probe_kw = dict(haystack=args.haystack, essay=essay)

    # ---- checkpoints, tokenizers and probes, before any forward pass
    pre = [_precheck(c) for c in args.ckpt]
    for c in args.ckpt:
        check_checkpoint(c, nope_mode)
    probes = [None if tok is None else build_probes(tok, lengths, args.samples, args.seed, **probe_kw) for tok in pre]

    # ---- analysis, one model in memory at a time
    from ..analysis.report import analyze
    from ..checkpoint import load

    results = []
    scales = {}
    for ckpt, name, tok, pr in zip(args.ckpt, names, pre, probes):
        model, loaded_tok = load(ckpt, device=device, dtype=None if dtype == torch.float32 else dtype)
        tok = tok or _tokenizer(loaded_tok, model.config.vocab_size, ckpt)
        if nope_mode is not None:
            scales[name] = apply(model, args.nope_scale, ckpt=ckpt, tokenizer=tok)
        if pr is None:
            pr = build_probes(tok, lengths, args.samples, args.seed, **probe_kw)
        results += analyze(
            model, tok, lengths, args.samples, args.seed, name=name, probes=pr,
            chunk_bytes=args.chunk_mb * 2**20, progress=lambda m: print(m, file=sys.stderr, flush=True), **probe_kw,
        )
        del model
    doc = {"results": results, "seed": args.seed, "samples": args.samples, "lengths": lengths,
           "checkpoints": dict(zip(names, args.ckpt)), "versions": versions()}
    if scales:
        doc["nope_scale"] = scales
    paths = write_report(out, doc, figures=not args.no_figures)
    for p in paths:
        print(p)
    return 0
