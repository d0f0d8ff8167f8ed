"""``rnope export``: write a checkpoint as a Hugging Face ``cohere`` / ``cohere2`` directory."""

from __future__ import annotations

import argparse

NAME = "export"
HELP = "export a checkpoint to a Hugging Face cohere/cohere2 directory (transformers, vLLM, llama.cpp)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ckpt", required=True, help="checkpoint, run, or Hugging Face directory")
    p.add_argument("--out", required=True, help="new Hugging Face directory (must not exist or be empty)")


def run(args) -> int:
    from ..interop.hf import check_out_dir, export
    from ..outlock import OutLock
    from pathlib import Path

    out = Path(args.out)
    # one writer per output: the lock beside it, before the checks (a live export is named, not "not empty")
    lock = OutLock(out) if out.parent.is_dir() else None
    try:
        check_out_dir(out)  # refuse before loading the model
        out = export(args.ckpt, args.out)
    finally:
        if lock is not None:
            lock.release()
    import json

    meta = json.loads((out / "config.json").read_text())
    pattern = meta["rnope"]["model"]["pattern"]
    print(f"exported {args.ckpt} -> {out} (model_type {meta['model_type']}, {meta['num_hidden_layers']} layers, pattern {pattern})")
    return 0
