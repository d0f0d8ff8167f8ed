"""Peak memory of the attention analysis on a long probe (target: a 16k probe within 4 GB).

Runs :func:`rnope.analysis.analyze` on one passkey probe of ``--length`` tokens (default 16384) with
a small randomly initialised model (default preset ``rnope-swa``: 4 layers, d_model 128, byte-level
vocabulary) and prints the process's peak resident set size. For scale it also prints what one
layer's full T x T fp32 attention matrix would take (what chunked capture avoids).

    python benchmarks/analysis_memory.py [--length 16384] [--preset rnope-swa] [--chunk-mb 64]
"""

from __future__ import annotations

import argparse
import resource
import sys
import time


def peak_rss_mb() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 2**20 if sys.platform == "darwin" else r / 1024  # bytes on macOS, KiB on Linux


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--length", type=int, default=16384)
    ap.add_argument("--preset", default="rnope-swa")
    ap.add_argument("--samples", type=int, default=1)
    ap.add_argument("--chunk-mb", type=int, default=64)
    ap.add_argument("--limit-gb", type=float, default=4.0, help="exit 1 when the peak exceeds this")
    args = ap.parse_args()

    import torch

    from rnope import ModelConfig, Transformer
    from rnope.analysis import analyze
    from rnope.analysis.report import build_probes
    from rnope.tokenizer import Tokenizer

    torch.manual_seed(0)
    cfg = ModelConfig.from_preset(args.preset, vocab_size=259)
    model = Transformer(cfg).eval()
    tok = Tokenizer.byte_level()
    probes = build_probes(tok, [args.length], args.samples, 0)
    base = peak_rss_mb()
    t0 = time.perf_counter()
    (res,) = analyze(model, tok, [args.length], args.samples, 0, probes=probes, chunk_bytes=args.chunk_mb * 2**20)
    dt = time.perf_counter() - t0
    peak = peak_rss_mb()
    T = int(res["tokens"])
    dense = cfg.n_head * T * T * 4 / 2**30
    print(f"model: {args.preset} ({cfg.num_params():,} params, {cfg.n_layer} layers, {cfg.n_head} heads), probe {T} tokens x {args.samples}")
    print("segments (all layers): " + ", ".join(f"{k} {v:.4f}" for k, v in res["segments"]["all"].items()))
    print(f"analysis time: {dt:.1f} s")
    print(f"peak RSS before analysis: {base:.0f} MiB")
    print(f"peak RSS: {peak:.0f} MiB ({peak / 1024:.2f} GiB; limit {args.limit_gb:g} GiB)")
    print(f"for scale: one layer's dense T x T fp32 attention would take {dense:.2f} GiB")
    return 0 if peak / 1024 <= args.limit_gb else 1


if __name__ == "__main__":
    sys.exit(main())
