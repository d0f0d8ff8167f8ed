"""``rnope import``: convert a Hugging Face ``cohere`` / ``cohere2`` / Llama-family directory to an rnope checkpoint."""

from __future__ import annotations

import argparse

NAME = "import"
HELP = "import a Hugging Face cohere/cohere2/llama/mistral/qwen2/qwen3/smollm3 directory (save_pretrained, safetensors) as an rnope checkpoint"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("hf_dir", metavar="HFDIR", help="Hugging Face model directory (config.json + safetensors)")
    p.add_argument("--out", required=True, help="new rnope checkpoint directory (must not exist or be empty)")


def run(args) -> int:
    from pathlib import Path

    from ..checkpoint import read_config
    from ..interop.hf import import_hf
    from ..outputs import check_new_dir

    check_new_dir(Path(args.out))
    out = import_hf(args.hf_dir, args.out)
    cfg, _ = read_config(out)
    tok = "with" if (out / "tokenizer.json").exists() else "without"
    print(f"imported {args.hf_dir} -> {out} (pattern {cfg.pattern}, {cfg.n_layer} layers, {tok} tokenizer)")
    return 0
