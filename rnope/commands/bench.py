"""``rnope bench [--quick] --out DIR`` (writes ``DIR/bench.json``): training, prefill/decode, KV-cache and sliding-kernel
figures vs transformers, measured in one run (:mod:`rnope.bench` does the work)."""

from __future__ import annotations

import argparse

NAME = "bench"
HELP = "benchmark training, prefill/decode, KV cache and the sliding kernel against transformers (JSON out)"


def _module():
    from .. import bench

    return bench


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true", help="drop 32k, fewer rounds and new tokens")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory: writes DIR/bench.json")
    p.add_argument("--only", default="train,inference,kv,sliding,long",
                   help="comma-separated parts: train, inference, kv, sliding, long, llamacpp (default: all but llamacpp, "
                        "which needs a llama.cpp build: see --llama-bench)")
    p.add_argument("--llama-bench", default=None, metavar="PATH",
                   help="llama.cpp's llama-bench binary for --only llamacpp (default: $RNOPE_LLAMA_BENCH, then PATH; "
                        "the part is skipped when there is none)")
    p.add_argument("--no-hf", action="store_true", help="skip the transformers baselines")
    p.add_argument("--no-compile", action="store_true", help="eager only")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--rounds", type=int, default=None, help="timed rounds (default 3 with --quick, else 5)")
    p.add_argument("--new-tokens", type=int, default=None,
                   help="tokens generated per inference call (default 128, 32 with --quick)")
    p.add_argument("--lengths", default=None, help="prompt lengths for inference / KV (default 2048,8192[,32768])")
    p.add_argument("--fused-adamw", choices=("default", "fused", "unfused"), default="default",
                   help="AdamW implementation for every training variant (default: torch's, as rnope train on CPU)")


def run(args) -> int:
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    if args.rounds is not None and args.rounds < 1:
        raise ValueError(f"--rounds must be >= 1, got {args.rounds}")
    from ..outputs import check_out_dir

    out = check_out_dir(args.out, new=False)  # a directory, as every other --out: DIR/bench.json
    mod = _module()
    mod.check_args(args)
    out.mkdir(parents=True, exist_ok=True)
    args.out = str(out / "bench.json")
    return mod.run_args(args)
