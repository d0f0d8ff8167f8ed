"""``rnope export``: write a checkpoint as a Hugging Face ``cohere`` / ``cohere2`` directory (``smollm3``
for the Llama block), or
(``--format gguf``) as one GGUF file for llama.cpp's ``cohere2``."""

from __future__ import annotations

import argparse

NAME = "export"
HELP = "export a checkpoint to a Hugging Face cohere/cohere2/smollm3 directory (transformers, vLLM) or a GGUF file (llama.cpp)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ckpt", required=True, help="checkpoint, run, or Hugging Face directory")
    p.add_argument("--out", required=True, help="new Hugging Face directory (must not exist or be empty), or new .gguf file")
    p.add_argument("--format", choices=("hf", "gguf"), default="hf", help="hf: Hugging Face directory (default); gguf: one llama.cpp file")
    p.add_argument("--gguf-dtype", choices=("f32", "f16"), default=None, help="GGUF matrix type (default f32; norms stay f32)")


def run(args) -> int:
    from ..interop.hf import export
    from ..outputs import check_new_dir
    from ..outlock import OutLock
    from pathlib import Path

    if args.format == "gguf":
        return _run_gguf(args)
    if args.gguf_dtype is not None:
        raise ValueError("--gguf-dtype needs --format gguf")
    out = Path(args.out)
    # one writer per output: the lock beside it, before the checks (a live export is named, not "not empty")
    lock = OutLock(out) if out.parent.is_dir() else None
    try:
        check_new_dir(out)  # refuse before loading the model
        out = export(args.ckpt, args.out)
    finally:
        if lock is not None:
            lock.release()
    import json

    meta = json.loads((out / "config.json").read_text())
    pattern = meta["rnope"]["model"]["pattern"]
    print(f"exported {args.ckpt} -> {out} (model_type {meta['model_type']}, {meta['num_hidden_layers']} layers, pattern {pattern})")
    return 0


def _run_gguf(args) -> int:
    from pathlib import Path

    from ..interop.gguf import check_out_file, export_gguf, read_layout
    from ..outlock import OutLock

    out = Path(args.out)
    lock = OutLock(out) if out.parent.is_dir() else None
    try:
        check_out_file(out)  # refuse before loading the model
        out = export_gguf(args.ckpt, out, dtype=args.gguf_dtype or "f32")
    finally:
        if lock is not None:
            lock.release()
    info = read_layout(out)
    layout = "".join("S" if s else "G" for s in info["sliding"])
    print(
        f"exported {args.ckpt} -> {out} (GGUF {info['architecture']}, {info['n_layer']} layers, "
        f"sliding/global {layout}, window {info['window']}, {args.gguf_dtype or 'f32'}, {out.stat().st_size} bytes)"
    )
    return 0
