"""``rnope bench --only long``: the paper's efficiency claim on a laptop CPU.

A ~28M rnope-swa against rope of the same shape (:data:`LONG_SHAPE`) at a 32k-token prompt (16k with
``--quick``). Each model runs in its own process, so its peak RSS is its own: prefill seconds (chunked,
:func:`rnope.inference.prefill`), eager decode tokens/s after the prompt, KV-cache bytes (exactly
0.25 + 0.75·W/L of rope's) and the peak memory of the prefill above the built model.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time

import torch

__all__ = ["LONG_SHAPE", "TARGET_LONG_DECODE", "bench_long", "markdown", "targets"]

PRESETS = ("rnope-swa", "rope")
#: a ~28M shape (rnope-swa and rope) for a 32k-token prompt
LONG_SHAPE = dict(vocab_size=8192, n_layer=8, d_model=512, n_head=8, n_kv_head=2, d_ff=1536, window=512)
TARGET_LONG_DECODE = 2.0  # rnope-swa decode tok/s at 32k / rope's


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _long_child(preset: str, length: int, new_tokens: int) -> None:
    """One model in its own process (clean peak RSS): build, prefill ``length`` tokens, decode
    ``new_tokens`` eagerly; prints one JSON line. Run by :func:`bench_long`."""
    import resource

    from rnope import ModelConfig, Transformer
    from rnope.decode import Decoder
    from rnope.inference import prefill

    def rss() -> int:
        with open("/proc/self/status", encoding="ascii") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))

    torch.manual_seed(0)
    model = Transformer(ModelConfig.from_preset(preset, **{**LONG_SHAPE, "max_seq_len": length + new_tokens})).eval()
    ids = torch.randint(3, model.config.vocab_size, (1, length), generator=torch.Generator().manual_seed(length)).tolist()
    base = rss()
    with torch.inference_mode():
        cache = model.new_cache(1, length + new_tokens)
        t = time.perf_counter()
        tok = prefill(model, ids, cache).argmax(-1)
        pre = time.perf_counter() - t
        step = Decoder(model, cache)
        ts = []
        for _ in range(new_tokens):
            t = time.perf_counter()
            tok = step(tok).argmax(-1)
            ts.append(time.perf_counter() - t)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"parameters": model.num_params(), "prefill_s": pre, "decode_tok_s": 1.0 / statistics.median(ts),
                      "kv_bytes": cache.nbytes, "rss_model_bytes": base, "peak_rss_bytes": peak,
                      "prefill_peak_bytes": peak - base}))


def bench_long(length: int = 32768, new_tokens: int = 32, threads: int | None = None) -> dict:
    """rnope-swa vs rope of the same ~28M shape (:data:`LONG_SHAPE`) at a ``length``-token prompt, each in
    its own process: prefill seconds, decode tok/s after the prompt, KV bytes against
    0.25 + 0.75·W/L of rope's, and peak RSS (over the process after building the model)."""
    import subprocess

    out: dict = {"length": length, "new_tokens": new_tokens, "shape": LONG_SHAPE}
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    for preset in PRESETS:
        code = f"import torch; from rnope.bench_long import _long_child; {'torch.set_num_threads(%d); ' % threads if threads else ''}" \
               f"_long_child({preset!r}, {length}, {new_tokens})"
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=3600)
        if r.returncode != 0:
            out[preset] = {"error": (r.stderr.strip().splitlines() or ["?"])[-1]}
            log(f"long {preset}: failed ({out[preset]['error']})")
            continue
        out[preset] = json.loads(r.stdout.strip().splitlines()[-1])
        log(f"long {preset} L={length}: prefill {out[preset]['prefill_s']:.1f} s, decode {out[preset]['decode_tok_s']:.1f} tok/s, "
            f"peak RSS {out[preset]['peak_rss_bytes'] / 2**30:.2f} GiB")
    a, b = out.get("rnope-swa", {}), out.get("rope", {})
    if "decode_tok_s" in a and "decode_tok_s" in b:
        W = LONG_SHAPE["window"]
        total = length + new_tokens
        out["kv_theory"] = 0.25 + 0.75 * W / total  # the cache holds prompt + new tokens
        out["kv_fraction"] = a["kv_bytes"] / b["kv_bytes"]
        out["decode_swa_over_rope"] = a["decode_tok_s"] / b["decode_tok_s"]
        out["prefill_swa_over_rope"] = a["prefill_s"] / b["prefill_s"]
        out["prefill_peak_swa_over_rope"] = a["prefill_peak_bytes"] / b["prefill_peak_bytes"]
    return out


def targets(lo: dict | None) -> list[tuple]:
    """The part's target rows ``(name, goal, measured, baseline, met, note)`` (none when it did not finish)."""
    if not lo or "decode_swa_over_rope" not in lo:
        return []
    L = lo["length"]
    return [
        (f"decode after a {L // 1024}k prompt: rnope-swa / rope tok/s", f">= {TARGET_LONG_DECODE}x", lo["rnope-swa"]["decode_tok_s"],
         lo["rope"]["decode_tok_s"], lo["decode_swa_over_rope"] >= TARGET_LONG_DECODE, f"{lo['decode_swa_over_rope']:.2f}x"),
        (f"KV bytes at {L // 1024}k: rnope-swa / rope = 0.25 + 0.75·W/L", f"{lo['kv_theory']:.5f}", lo["kv_fraction"], lo["kv_theory"],
         abs(lo["kv_fraction"] - lo["kv_theory"]) < 1e-9, f"{lo['kv_fraction']:.5f}"),
        (f"prefill peak memory at {L // 1024}k: rnope-swa / rope", "< 1", lo["rnope-swa"]["prefill_peak_bytes"],
         lo["rope"]["prefill_peak_bytes"], lo["prefill_peak_swa_over_rope"] < 1, f"{lo['prefill_peak_swa_over_rope']:.2f}"),
    ]


def markdown(lo: dict) -> list[str]:
    """The part's Markdown lines (none when it did not finish)."""
    from .outputs import markdown_table

    if "decode_swa_over_rope" not in lo:
        return []
    return ["", f"Long context ({lo['length']} prompt tokens, ~{lo['rope']['parameters'] / 1e6:.0f}M parameters, W={lo['shape']['window']}):", "",
            markdown_table(["preset", "prefill s", "decode tok/s", "KV MiB", "model RSS GiB", "peak RSS GiB", "prefill peak GiB"],
                           [[p, f"{lo[p]['prefill_s']:.1f}", f"{lo[p]['decode_tok_s']:.1f}", f"{lo[p]['kv_bytes'] / 2**20:.1f}",
                             f"{lo[p]['rss_model_bytes'] / 2**30:.2f}", f"{lo[p]['peak_rss_bytes'] / 2**30:.2f}",
                             f"{lo[p]['prefill_peak_bytes'] / 2**30:.2f}"] for p in PRESETS])]
