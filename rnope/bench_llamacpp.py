"""rnope against llama.cpp, the fastest CPU peer: the same weights, the same thread count, one run.

For each shape (the 7M bench shape and a 55M one) an rnope-swa model is built with fixed seeds,
exported with :func:`rnope.interop.gguf.export_gguf` (f32 and f16 matrices; Q8_0 made with
``llama-quantize`` when it sits beside ``llama-bench``), and measured at 1 and 2 threads:

* llama.cpp: ``llama-bench -p P -n 0`` (prompt processing, tokens/s) and ``llama-bench -p 0 -n N
  -d P`` (N new tokens decoded at a depth of P cached tokens, tokens/s); ``-r`` repetitions, the
  mean it reports;
* rnope: :func:`rnope.inference.prefill` of P tokens, then N steps of
  :class:`rnope.decode.Decoder` (eager; compiled when a C++ compiler is there, with fp32 weights and
  with float16 decode weights, ``rnope_compiled_f16w``, whose greedy tokens are compared with the
  fp32 step's), tokens/s of the median step.

The goal: rnope's decode at least llama.cpp's f16-weight decode at each shape and thread count.
Skipped cleanly (``{"skipped": ...}``) when ``llama-bench`` is not found. Install llama.cpp and
point to it with ``--llama-bench PATH`` or ``RNOPE_LLAMA_BENCH``, or put ``llama-bench`` on
``PATH`` (``benchmarks/RESULTS.md`` says how to build it from source).
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import torch

__all__ = ["SHAPES", "bench_llamacpp", "find_llama_bench", "llama_bench"]

#: rnope-swa shapes: the bench's 7M and a 55M one (32k vocabulary, 12 layers of 512)
SHAPES = {
    "7M": dict(vocab_size=4096, n_layer=8, d_model=256, n_head=4, n_kv_head=2, d_ff=768, window=128),
    "55M": dict(vocab_size=32768, n_layer=12, d_model=512, n_head=8, n_kv_head=2, d_ff=1536, window=128),
}


def log(msg: str) -> None:
    print(f"[bench-llamacpp {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def find_llama_bench(path: str | None = None) -> Path | None:
    """``llama-bench``: ``path``, else ``$RNOPE_LLAMA_BENCH``, else the one on ``PATH``; None if absent."""
    for cand in (path, os.environ.get("RNOPE_LLAMA_BENCH"), shutil.which("llama-bench")):
        if cand and Path(cand).is_file() and os.access(cand, os.X_OK):
            return Path(cand)
    return None


def llama_bench(binary: Path, gguf: Path, *, threads: int, prompt: int, new: int, depth: int = 0, reps: int = 3) -> float:
    """Mean tokens/s ``llama-bench`` reports for one test (``-p prompt -n new -d depth``)."""
    cmd = [str(binary), "-m", str(gguf), "-t", str(threads), "-p", str(prompt), "-n", str(new), "-r", str(reps), "-o", "json"]
    if depth:
        cmd += ["-d", str(depth)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    if r.returncode != 0:
        raise RuntimeError(f"llama-bench failed ({r.returncode}): {r.stderr.strip().splitlines()[-1:] or r.stdout[-200:]}")
    rows = json.loads(r.stdout)
    return float(rows[0]["avg_ts"])


def _rnope_speed(model, *, threads: int, prompt: int, new: int, reps: int, compile: bool, weights: str | None = None) -> dict:
    """Prefill tokens/s and decode tokens/s (median step) after ``prompt`` tokens, B=1, and the
    greedy tokens decoded (``weights``: the decode step's weight dtype, :class:`rnope.decode.Decoder`)."""
    from .decode import Decoder
    from .inference import prefill

    torch.set_num_threads(threads)
    ids = torch.randint(3, model.config.vocab_size, (1, prompt), generator=torch.Generator().manual_seed(prompt)).tolist()
    pre, steps = [], []
    for _ in range(reps + 1):  # the first round warms up (and compiles)
        cache = model.new_cache(1, prompt + new + 1)
        with torch.inference_mode():
            t = time.perf_counter()
            tok = prefill(model, ids, cache).argmax(-1)
            pre.append(time.perf_counter() - t)
            step = Decoder(model, cache, compile=compile, weights=weights)
            ts, toks = [], []
            for _ in range(new):
                t = time.perf_counter()
                tok = step(tok).argmax(-1)
                ts.append(time.perf_counter() - t)
                toks.append(int(tok))
            steps.append(statistics.median(ts))
    return {"prefill_tok_s": prompt / statistics.median(pre[1:]), "decode_tok_s": 1.0 / statistics.median(steps[1:]),
            "compiled": bool(compile and step.compiled), "weights": step.weights, "tokens": toks}


def bench_llamacpp(*, binary: str | None = None, shapes: tuple[str, ...] = ("7M", "55M"), threads: tuple[int, ...] = (1, 2),
                   prompt: int = 2048, new: int = 128, reps: int = 3, compile: bool = True) -> dict:
    """The comparison (module doc): ``{shape: {"parameters", threads: {"rnope_eager", "rnope_compiled",
    "llamacpp_f32", "llamacpp_f16", "llamacpp_q8_0"}}}`` with prefill / decode tokens/s each, plus
    ``targets`` rows; ``{"skipped": reason}`` without llama-bench."""
    from . import ModelConfig, Transformer
    from .decode import compile_available
    from .interop.gguf import export_gguf
    from .tokenizer import Tokenizer

    exe = find_llama_bench(binary)
    if exe is None:
        return {"skipped": "llama-bench not found (--llama-bench PATH, RNOPE_LLAMA_BENCH, or PATH)"}
    quantize = exe.with_name("llama-quantize")
    compile = compile and compile_available()
    old_threads = torch.get_num_threads()
    out: dict = {"llama_bench": str(exe), "prompt": prompt, "new_tokens": new, "reps": reps, "shapes": {}, "targets": []}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for shape in shapes:
                torch.manual_seed(0)
                cfg = ModelConfig.from_preset("rnope-swa", max_seq_len=prompt + new + 1, **SHAPES[shape])
                model = Transformer(cfg).eval()
                files = {}
                for dt in ("f32", "f16"):
                    files[dt] = export_gguf(model, Path(tmp) / f"{shape}-{dt}.gguf", Tokenizer.byte_level(), dtype=dt)
                if quantize.is_file():
                    q8 = Path(tmp) / f"{shape}-q8_0.gguf"
                    r = subprocess.run([str(quantize), str(files["f32"]), str(q8), "q8_0"], capture_output=True, text=True)
                    if r.returncode == 0:
                        files["q8_0"] = q8
                res: dict = {"parameters": model.num_params()}
                for t in threads:
                    row: dict = {}
                    row["rnope_eager"] = _rnope_speed(model, threads=t, prompt=prompt, new=new, reps=reps, compile=False)
                    if compile:
                        row["rnope_compiled"] = _rnope_speed(model, threads=t, prompt=prompt, new=new, reps=reps, compile=True)
                        # the same step reading float16 weights (half the bytes, as llama.cpp's f16 file)
                        f16w = _rnope_speed(model, threads=t, prompt=prompt, new=new, reps=reps, compile=True, weights="float16")
                        ref = row["rnope_compiled"]["tokens"]
                        f16w["same_tokens_as_fp32"] = sum(a == b for a, b in zip(f16w["tokens"], ref)) / len(ref)
                        row["rnope_compiled_f16w"] = f16w
                    for dt, f in files.items():
                        row[f"llamacpp_{dt}"] = {
                            "prefill_tok_s": llama_bench(exe, f, threads=t, prompt=prompt, new=0, reps=reps),
                            "decode_tok_s": llama_bench(exe, f, threads=t, prompt=0, new=new, depth=prompt, reps=reps),
                        }
                    f16 = row["llamacpp_f16"]["decode_tok_s"]
                    for variant in [k for k in row if k.startswith("rnope") and k != "rnope_eager"] or ["rnope_eager"]:
                        got = row[variant]["decode_tok_s"]
                        out["targets"].append({"target": f"decode {shape} after {prompt} tokens, {t} thread(s): {variant} / llama.cpp f16",
                                               "goal": ">= 1x", "measured": got, "baseline": f16, "ratio": got / f16,
                                               "met": got >= f16})
                    log(f"{shape} t={t}: " + ", ".join(f"{k} {v['prefill_tok_s']:.0f}/{v['decode_tok_s']:.1f}" for k, v in row.items())
                        + " tok/s (prefill/decode)")
                    res[str(t)] = row
                out["shapes"][shape] = res
    finally:
        torch.set_num_threads(old_threads)
    return out


def markdown(res: dict) -> str:
    """Tables of a :func:`bench_llamacpp` result."""
    from .outputs import markdown_table

    if "skipped" in res:
        return f"llama.cpp comparison skipped: {res['skipped']}"
    lines = [f"Prompt {res['prompt']} tokens, then {res['new_tokens']} decoded; tokens/s (prefill / decode).", ""]
    for shape, r in res["shapes"].items():
        keys = list(next(v for k, v in r.items() if k != "parameters"))
        rows = [[t] + [f"{r[t][k]['prefill_tok_s']:.0f} / {r[t][k]['decode_tok_s']:.1f}" for k in keys] for t in r if t != "parameters"]
        lines += [f"{shape} ({r['parameters'] / 1e6:.1f}M parameters):", "", markdown_table(["threads"] + keys, rows), ""]
        same = [f"{t} thread(s) {r[t]['rnope_compiled_f16w']['same_tokens_as_fp32']:.0%}" for t in r
                if t != "parameters" and "rnope_compiled_f16w" in r[t]]
        if same:
            lines += ["Greedy tokens of the float16-weight step equal to the fp32 step's: " + ", ".join(same) + ".", ""]
    lines.append(markdown_table(["target", "goal", "rnope", "llama.cpp f16", "ratio", "met"],
                                [[t["target"], t["goal"], f"{t['measured']:.1f}", f"{t['baseline']:.1f}", f"{t['ratio']:.2f}x",
                                  "yes" if t["met"] else "**no**"] for t in res["targets"]]))
    return "\n".join(lines)
