"""``rnope info``: a preset's or checkpoint's resolved config, layer pattern, parameters and KV bytes."""

from __future__ import annotations

import argparse
import json

NAME = "info"
HELP = "print a preset's or checkpoint's config, expanded layer pattern, parameter count and KV-cache size"


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--preset", help="preset name (see rnope.PRESETS)")
    g.add_argument("--ckpt", help="checkpoint, run or Hugging Face directory")
    p.add_argument("--length", type=int, default=None, help="cached tokens for the KV size (default: max_seq_len)")
    from ..cli import MODEL_OVERRIDES_HELP

    p.epilog = MODEL_OVERRIDES_HELP
    p.set_defaults(_accepts_extra=True)


def run(args) -> int:
    from ..cli import model_overrides
    from ..config import ModelConfig

    overrides = model_overrides(args._extra)
    if args.preset:
        cfg = ModelConfig.from_preset(args.preset, **overrides)
    else:
        from ..checkpoint import CONFIG_FILE, WEIGHTS_FILE, read_config, read_meta, resolve
        from ..weights_header import check_config

        d = resolve(args.ckpt)
        meta = read_meta(d)
        if isinstance(meta, dict) and "model_type" in meta and "model" not in meta:  # a Hugging Face directory
            from ..interop.hf import read_checked_config

            cfg = read_checked_config(d)
        else:
            cfg, _ = read_config(d)
            check_config(cfg, d / CONFIG_FILE, [d / WEIGHTS_FILE])  # report what the weights hold, not an unchecked claim
        if overrides:
            raise ValueError("--model.* overrides apply to --preset only")
    L = cfg.max_seq_len if args.length is None else args.length
    if L < 1:
        raise ValueError(f"--length must be >= 1, got {L}")
    full = cfg.n_layer * L
    kv = cfg.kv_positions(L)
    print(json.dumps(cfg.to_dict(), indent=2, sort_keys=True))
    print("layers:", " ".join(("rope" if s.rope else "nope") + "/" + (s.span if s.span == "full" else f"{s.span}({s.window or s.chunk})") + ("+qknorm" if s.qk_norm else "") for s in cfg.layers))
    print(f"parameters: {cfg.num_params():,}")
    print(f"kv cache at {L} tokens: {kv * cfg.n_kv_head * cfg.head_dim * 2 * 4:,} bytes/row fp32 = {kv / full:.4f} of full attention")
    return 0
