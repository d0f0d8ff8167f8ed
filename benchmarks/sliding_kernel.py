"""Sliding-window kernel vs dense masked SDPA, measured in the same run.

Prints, for T in {2k, 4k, 8k, 16k} and W = 256, forward time of the O(T·W) blockwise kernel and of
dense SDPA with a T×T window mask (the O(T²) baseline), their ratio, and t(16k)/t(8k).
Usage: python benchmarks/sliding_kernel.py [--window 256] [--heads 4] [--kv-heads 2] [--head-dim 64]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

from rnope.config import LayerSpec
from rnope.kernels import sdpa, visibility


def bench(fn, reps: int) -> float:
    fn()  # warm-up
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--window", type=int, default=256)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--lengths", default="2048,4096,8192,16384")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--json", default=None, help="also write the figures to this file")
    a = ap.parse_args()
    torch.manual_seed(0)
    spec = LayerSpec(rope=True, span="sliding", window=a.window)
    rows = []
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}")
    print(f"{'T':>6} {'sliding ms':>11} {'dense ms':>9} {'dense/sliding':>14}")
    for T in map(int, a.lengths.split(",")):
        q = torch.randn(1, a.heads, T, a.head_dim)
        k = torch.randn(1, a.kv_heads, T, a.head_dim)
        v = torch.randn(1, a.kv_heads, T, a.head_dim)
        t = torch.arange(T)
        mask = visibility(t, t, spec)
        with torch.no_grad():
            ts = bench(lambda: sdpa.sliding(q, k, v, a.window), a.reps)
            td = bench(lambda: sdpa.masked(q, k, v, mask), max(1, a.reps // 2))
        rows.append({"T": T, "sliding_s": ts, "dense_s": td, "dense_over_sliding": td / ts})
        print(f"{T:>6} {ts * 1e3:>11.2f} {td * 1e3:>9.2f} {td / ts:>14.2f}")
    by_t = {r["T"]: r for r in rows}
    if 8192 in by_t and 16384 in by_t:
        ratio = by_t[16384]["sliding_s"] / by_t[8192]["sliding_s"]
        print(f"sliding t(16k)/t(8k) = {ratio:.2f} (linear = 2.0, target <= 2.3)")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"window": a.window, "rows": rows, "torch": torch.__version__}, f, indent=2)


if __name__ == "__main__":
    main()
