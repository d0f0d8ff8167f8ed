"""Evaluation speed: seconds per NIAH sample at 8k tokens, hybrid cache vs dense.

Builds passkey items (docs/evaluation.md) of ``--length`` byte-level tokens (depths spread over 0-100 %) and
greedily completes them through :class:`rnope.evals.predictor.ModelPredictor` -- left-padded
batches, chunked prefill into the hybrid KV cache, then 16 decode steps -- for:

* ``rnope-swa``        : the paper's SSSN model (3 RoPE sliding-window layers : 1 NoPE global),
                         fast kernels (O(T.W) sliding prefill, ring-buffer cache for local layers);
* ``rnope-swa dense``  : the same weights with ``attn_impl="dense"`` (every fresh attention builds
                         the full T x T visibility mask: the O(T^2) baseline);
* ``rope (global)``    : the same shapes with every layer full-attention RoPE (cache keeps all
                         positions in every layer).

Models are tiny and randomly initialised (speed does not depend on the weights). Prints seconds
per sample for each batch size and the KV-cache bytes per row. Timings on a shared CPU are noisy:
each figure is the median of ``--reps`` runs after a warm-up.

Usage: python benchmarks/eval_speed.py [--length 8192] [--batch-sizes 1,4] [--samples 4] [--reps 3]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

from rnope import ModelConfig, Transformer
from rnope.evals.predictor import ModelPredictor
from rnope.tasks import passkey
from rnope.tokenizer import Tokenizer


def build(pattern: str, length: int, impl: str = "auto", **shape) -> ModelPredictor:
    torch.manual_seed(0)
    cfg = ModelConfig.from_preset("rnope-swa", pattern=pattern, max_seq_len=length, **shape)
    m = Transformer(cfg).eval()
    m.attn_impl = impl
    return m


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--length", type=int, default=8192)
    ap.add_argument("--batch-sizes", default="1,4")
    ap.add_argument("--samples", type=int, default=4, help="prompts per measurement")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--window", type=int, default=128)
    ap.add_argument("--d-model", type=int, default=128)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", default=None, help="also write the numbers to this file")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    tok = Tokenizer.byte_level()
    items = [passkey(i, a.length, 100.0 * i / max(1, a.samples - 1), encode=tok.encode) for i in range(a.samples)]
    ntok = [len(tok.encode(it.prompt)) for it in items]
    shape = dict(window=a.window, d_model=a.d_model, n_layer=a.layers)
    variants = {
        "rnope-swa": build("SSSN", a.length, **shape),
        "rnope-swa dense": build("SSSN", a.length, "dense", **shape),
        "rope (global)": build("R", a.length, **shape),
    }
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}")
    print(f"{a.samples} passkey prompts of {min(ntok)}-{max(ntok)} tokens (length {a.length}), "
          f"greedy {items[0].gen_tokens} new tokens; d_model {a.d_model}, {a.layers} layers, window {a.window}")
    print(f"{'model':<18} {'batch':>5} {'s/sample':>9} {'KV bytes/row':>13}")
    rows = []
    for bs in [int(b) for b in a.batch_sizes.split(",")]:
        for name, model in variants.items():
            p = ModelPredictor(model, tok, name=name, batch_size=bs)
            prompts = [it.prompt for it in items]
            p.complete(prompts[:bs], items[0].gen_tokens)  # warm-up
            ts = []
            for _ in range(a.reps):
                t0 = time.perf_counter()
                p.complete(prompts, items[0].gen_tokens)
                ts.append(time.perf_counter() - t0)
            s = statistics.median(ts) / len(prompts)
            kv = model.new_cache(1, a.length + items[0].gen_tokens).nbytes
            rows.append({"model": name, "batch_size": bs, "s_per_sample": s, "kv_bytes_per_row": kv})
            print(f"{name:<18} {bs:>5} {s:>9.3f} {kv:>13,}")
    base = {(r["model"], r["batch_size"]): r["s_per_sample"] for r in rows}
    for bs in [int(b) for b in a.batch_sizes.split(",")]:
        h = base[("rnope-swa", bs)]
        print(f"batch {bs}: dense kernels / hybrid = {base[('rnope-swa dense', bs)] / h:.2f}x, "
              f"all-global rope / hybrid = {base[('rope (global)', bs)] / h:.2f}x")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"length": a.length, "prompt_tokens": ntok, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
