"""``rnope bench``: the efficiency figures of benchmarks/RESULTS.md, each next to its baseline, from one run.

    rnope bench [--quick] --out DIR        (writes DIR/bench.json; or: python benchmarks/bench.py ...)

Shape (≈7M parameters): 8 layers, d_model 256, 4 heads, 2 KV heads, d_ff 768, window 128, vocab
4096; presets ``rnope-swa`` (SSSN) and ``rope`` (R). The baseline of every rnope figure is the same
model in transformers — ``Cohere2ForCausalLM`` for rnope-swa, ``CohereForCausalLM`` for rope (what
``rnope export`` writes) — with the same weights, measured in the same run, interleaved with rnope
(one repetition of each in turn), so a busy shared machine slows both alike. Medians are reported.

1. **train**: tokens/s and MFU of a training step (forward, fp32 cross-entropy, backward, clip,
   AdamW) at B×T = 8×512: rnope eager / compiled vs transformers eager / compiled, same batch,
   same optimizer. ``MFU = (6·N + attention FLOPs) · tokens / time / peak`` with ``N`` the matmul
   parameters and attention counted over the keys a query can see (a perfect kernel's work); the
   peak is the best fp32 ``torch.mm`` (2048³) measured between the rounds of this run.
2. **inference**: prefill seconds at 2k / 8k / 32k tokens (rnope: ``rnope.inference.prefill``, last
   logits only; transformers: ``model(ids, use_cache=True, logits_to_keep=1)``) and decode
   tokens/s after those prompts, each library's own greedy ``generate`` with the same number of new
   tokens, timed from the first new token to the last (streamer / callback time stamps). rnope's
   decode is the compiled static-shape step (:mod:`rnope.decode`) and, for reference, the eager one.
   End to end, as a user meets it: ``rnope.generate(model, [prompt], 128)`` with default arguments
   against transformers' ``generate()`` (prefill + new tokens, whole-call seconds): the first call in
   a process (the automatic choice decodes eagerly: too few tokens to repay a compile) and the
   steady state once the process has a compiled step of that shape.
3. **kv_cache**: bytes of rnope's hybrid cache at each length vs the paper's
   ``0.25 + 0.75·W/L`` of a full-attention cache (rnope-swa; 1 for rope), and transformers' cache
   after its prefill.
4. **sliding**: the blockwise sliding kernel's t(16k)/t(8k) (linear = 2) and prefill at 16k,
   rnope-swa vs rope.
5. **long**: a ~28M rnope-swa vs the same-size rope at a 32k-token prompt (16k with ``--quick``),
   each in its own process: prefill seconds, eager decode tokens/s, KV bytes (exactly 0.25 + 0.75·W/L
   of rope's) and peak RSS (:mod:`rnope.bench_long`).
6. **llamacpp** (``--only llamacpp``, not in the default run): the same weights in llama.cpp
   (:mod:`rnope.bench_llamacpp`), skipped without a ``llama-bench`` binary.

``--quick`` drops 32k, times fewer rounds and decodes fewer tokens. The JSON holds every figure,
its baseline, the ratio, the machine (CPU, threads, load average, versions, git SHA) and a
``targets`` table; :func:`markdown` renders the summary used in ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import gc
import json
import os
import sys
import time

import torch
import torch.nn.functional as F

from .bench_harness import HF_CLASS, PRESETS, SHAPE, config, hf_twin, interleaved, log, machine_info, matmul_peak, med, rnope_model
from .bench_infer import bench_inference, bench_kv, bench_sliding
from .bench_long import bench_long
from .bench_long import markdown as long_markdown
from .bench_long import targets as long_targets
from .outputs import atomic_write_text, markdown_table

# targets; each row of the JSON "targets" table says met or not
TARGET_TRAIN_VS_HF = 2.5
TARGET_MFU = 0.55
TARGET_DECODE_VS_HF = 4.0
#: every part of the run
PARTS = ("train", "inference", "kv", "sliding", "long", "llamacpp")  # all but llamacpp by default
#: ``rnope.generate`` with default arguments against ``transformers`` ``generate()``, prefill + 128
#: new tokens after a 2k prompt, B=1: rnope-swa and rope
TARGET_E2E_VS_HF = {"rnope-swa": 4.0, "rope": 3.0}
TARGET_PREFILL_16K = 0.4
TARGET_KV_TOL = 0.02


# ---------------------------------------------------------------------------------------------- training
def train_flops_per_token(cfg, T: int) -> tuple[float, int]:
    """(training FLOPs per token, matmul parameters N): 6·N + attention over the visible keys."""
    d, hd = cfg.d_model, cfg.head_dim
    per_layer = d * cfg.n_head * hd * 2 + d * cfg.n_kv_head * hd * 2 + 3 * d * cfg.d_ff
    n = cfg.n_layer * per_layer + cfg.vocab_size * d
    attn = 0.0
    for spec in cfg.layers:
        keys = sum(min(t + 1, spec.window) for t in range(T)) / T if spec.span == "sliding" else (T + 1) / 2
        attn += 12 * cfg.n_head * hd * keys  # QKᵀ and AV: 2·2 FLOPs per key per dim forward, ×3 with backward
    return 6 * n + attn, n


def make_optimizer(model: torch.nn.Module, fused: bool | None) -> torch.optim.Optimizer:
    """AdamW as ``rnope train`` builds it: weight decay on matrices only."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    other = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": 0.1}, {"params": other, "weight_decay": 0.0}]
    kw = {} if fused is None else {"fused": fused}
    return torch.optim.AdamW(groups, lr=1e-4, betas=(0.9, 0.95), eps=1e-8, **kw)


class TrainStep:
    """One variant: model + optimizer + a fixed batch; ``step()`` returns its seconds.

    ``call(x, y)`` returns the loss, so a compiled variant compiles its loss too: rnope's
    ``model(x, targets=y)``, as ``rnope train`` runs it, and for transformers the same fp32
    cross-entropy of its logits inside the compiled function (the same work in both graphs)."""

    def __init__(self, model, call, *, batch: int, T: int, vocab: int, compile: bool, fused: bool | None):
        self.model = model.train()
        self.fwd = torch.compile(call, dynamic=False) if compile else call
        self.opt = make_optimizer(model, fused)
        g = torch.Generator().manual_seed(0)
        self.x = torch.randint(3, vocab, (batch, T + 1), generator=g)
        self.losses: list[float] = []

    def step(self) -> float:
        t = time.perf_counter()
        loss = self.fwd(self.x[:, :-1], self.x[:, 1:])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        dt = time.perf_counter() - t
        self.losses.append(float(loss.detach()))
        return dt


def bench_train(preset: str, *, batch: int, T: int, rounds: int, compile: bool, hf: bool, fused: bool | None, peaks: list[float]) -> dict:
    cfg = config(preset, T)
    fpt, n_mm = train_flops_per_token(cfg, T)
    variants: dict[str, TrainStep] = {}
    for name in ["rnope_eager", "rnope_compiled", "hf_eager", "hf_compiled"]:
        comp = name.endswith("compiled")
        if comp and not compile or name.startswith("hf") and not hf:
            continue
        m = rnope_model(preset, T)
        if name.startswith("hf"):
            m = hf_twin(m)
            if m is None:
                continue
            call = lambda x, y, m=m: F.cross_entropy(m(input_ids=x).logits.float().flatten(0, 1), y.flatten())  # noqa: E731
        else:
            call = lambda x, y, m=m: m(x, targets=y)  # noqa: E731
        v = TrainStep(m, call, batch=batch, T=T, vocab=cfg.vocab_size, compile=comp, fused=fused)
        try:
            t = time.perf_counter()
            v.step()  # compiles
            v.first_s = time.perf_counter() - t
            v.step()
        except Exception as e:  # e.g. no C++ compiler for inductor
            log(f"train {preset} {name}: failed ({e.__class__.__name__}: {str(e).splitlines()[0] if str(e) else ''})")
            continue
        variants[name] = v
        log(f"train {preset} {name}: ready (first step {v.first_s:.1f}s)")
    times = interleaved({k: v.step for k, v in variants.items()}, rounds, between=lambda: peaks.append(matmul_peak()))
    tokens = batch * T
    rows = {}
    for k, ts in times.items():
        dt = med(ts)
        rows[k] = {"step_s": dt, "step_s_all": ts, "first_step_s": variants[k].first_s, "tok_per_s": tokens / dt,
                   "gflop_per_s": fpt * tokens / dt / 1e9, "loss_first": variants[k].losses[0]}
    # same weights, same batch: rnope and transformers start from the same loss
    best = lambda pre: max((r for k, r in rows.items() if k.startswith(pre)), key=lambda r: r["tok_per_s"], default=None)  # noqa: E731
    out = {"batch": batch, "seq_len": T, "tokens_per_step": tokens, "flops_per_token": fpt, "matmul_params": n_mm,
           "params": sum(p.numel() for p in variants[next(iter(variants))].model.parameters()) if variants else None,
           "variants": rows}
    rb, hb = best("rnope"), best("hf")
    if rb and hb:
        out["best_rnope_tok_per_s"], out["best_hf_tok_per_s"] = rb["tok_per_s"], hb["tok_per_s"]
        out["speedup_best_vs_best"] = rb["tok_per_s"] / hb["tok_per_s"]
    for a, b in (("rnope_eager", "hf_eager"), ("rnope_compiled", "hf_compiled")):
        if a in rows and b in rows:
            out[f"speedup_{a.split('_')[1]}"] = rows[a]["tok_per_s"] / rows[b]["tok_per_s"]
    del variants
    gc.collect()
    return out


def finish_mfu(train: dict, peak: float) -> None:
    for res in train.values():
        for r in res["variants"].values():
            r["mfu"] = r["gflop_per_s"] * 1e9 / peak


# ---------------------------------------------------------------------------------------------- run
def targets(res: dict) -> list[dict]:
    rows = []

    def add(name, target, measured, baseline, met, note=""):
        rows.append({"target": name, "goal": target, "measured": measured, "baseline": baseline, "met": bool(met), "note": note})

    for p, tr in res.get("train", {}).items():
        if "@T" in p:
            p = f"{p.split('@')[0]} at B×T {tr['batch']}×{tr['seq_len']} (informational: the targets are at 8×512)"
        if "speedup_best_vs_best" in tr:
            add(f"train {p}: best rnope / best transformers tok/s", f">= {TARGET_TRAIN_VS_HF}x", tr["best_rnope_tok_per_s"],
                tr["best_hf_tok_per_s"], tr["speedup_best_vs_best"] >= TARGET_TRAIN_VS_HF, f"{tr['speedup_best_vs_best']:.2f}x")
        best = max(tr["variants"].items(), key=lambda kv: kv[1]["mfu"] if kv[0].startswith("rnope") else -1)
        add(f"train {p}: MFU of {best[0]}", f">= {TARGET_MFU:.0%} of fp32 mm peak", best[1]["mfu"], res["peak_flops"],
            best[1]["mfu"] >= TARGET_MFU, f"{best[1]['mfu']:.1%}")
    for p, inf in res.get("inference", {}).items():
        r = inf.get("2048", {})
        if "decode_speedup_vs_hf" in r:
            dec = r["decode_tok_per_s"]
            best = max(v for k, v in dec.items() if k.startswith("rnope") and not k.endswith("f16w"))
            add(f"decode {p} after 2k prompt: rnope / transformers generate() tok/s", f">= {TARGET_DECODE_VS_HF}x", best, dec["hf"],
                r["decode_speedup_vs_hf"] >= TARGET_DECODE_VS_HF, f"{r['decode_speedup_vs_hf']:.2f}x")
        if "e2e_speedup_vs_hf" in r:
            goal = TARGET_E2E_VS_HF.get(p, TARGET_E2E_VS_HF["rnope-swa"])
            add(f"generate {p}, 2k prompt + {r['new_tokens']} new, defaults: transformers / rnope seconds (steady)",
                f">= {goal}x", r["e2e_s"]["rnope_default"], r["e2e_s"]["hf"], r["e2e_speedup_vs_hf"] >= goal,
                f"{r['e2e_speedup_vs_hf']:.2f}x; first call {r['e2e_first_call_s']:.2f} s ({r['e2e_first_call_vs_hf']:.2f}x)")
        if "e2e_f16w_speedup_vs_hf" in r:
            goal = TARGET_E2E_VS_HF.get(p, TARGET_E2E_VS_HF["rnope-swa"])
            add(f"generate {p}, 2k prompt + {r['new_tokens']} new, decode_weights=float16 (opt-in): transformers / rnope seconds",
                f">= {goal}x", r["e2e_s"]["rnope_f16w"], r["e2e_s"]["hf"], r["e2e_f16w_speedup_vs_hf"] >= goal,
                f"{r['e2e_f16w_speedup_vs_hf']:.2f}x; greedy tokens equal to fp32: {r.get('f16w_same_tokens_as_eager', 0):.0%}")
    for row in long_targets(res.get("long")):
        add(*row)
    sl = res.get("sliding")
    if sl:
        add("prefill 16k: rnope-swa / rope time", f"<= {TARGET_PREFILL_16K}", sl["prefill_16k_s"]["rnope-swa"], sl["prefill_16k_s"]["rope"],
            sl["prefill_16k_swa_over_rope"] <= TARGET_PREFILL_16K, f"{sl['prefill_16k_swa_over_rope']:.3f}")
        add("sliding kernel t(16k)/t(8k)", "~2 (linear)", sl["kernel_16k_s"], sl["kernel_8k_s"], sl["kernel_t16k_over_t8k"] <= 2.3,
            f"{sl['kernel_t16k_over_t8k']:.2f}")
    kv = res.get("kv_cache", {}).get("rnope-swa")
    if kv:
        worst = max(abs(r["rel_error"]) for r in kv.values())
        add("KV bytes rnope-swa vs 0.25 + 0.75·W/L", f"within ±{TARGET_KV_TOL:.0%}", worst, 0.0, worst <= TARGET_KV_TOL,
            f"worst |error| {worst:.2%}")
    return rows


def run(quick: bool = False, *, out: str | None = None, parts: tuple[str, ...] = PARTS[:-1],
        hf: bool = True, compile: bool = True, threads: int | None = None, fused_adamw: bool | None = None,
        rounds: int | None = None, lengths: list[int] | None = None, llama_bench: str | None = None,
        new_tokens: int | None = None) -> dict:
    """Run the benchmark; returns (and writes to ``out``) the result dict. ``llama_bench``: the
    ``llama-bench`` binary for the ``llamacpp`` part (:mod:`rnope.bench_llamacpp`). ``new_tokens``:
    tokens generated per inference call (default 128, 32 with ``quick``)."""
    if threads:
        torch.set_num_threads(threads)
    if hf:
        try:
            import transformers  # noqa: F401
        except ImportError:
            log("transformers is not installed: no baselines")
            hf = False
    if compile:
        from rnope.decode import compile_available

        if not compile_available():
            log("torch.compile is not available here (no C++ compiler): eager only")
            compile = False
        import torch._dynamo as dynamo

        dynamo.config.cache_size_limit = max(dynamo.config.cache_size_limit, 64)
    rounds = rounds or (3 if quick else 5)
    lengths = lengths or ([2048, 8192] if quick else [2048, 8192, 32768])
    new_tokens = new_tokens or (32 if quick else 128)
    t0 = time.perf_counter()
    res: dict = {"machine": machine_info(), "quick": quick, "shape": SHAPE, "presets": list(PRESETS), "hf_classes": HF_CLASS,
                 "rounds": rounds, "optimizer": f"AdamW(wd 0.1 on matrices, fused={fused_adamw})"}
    peaks = [matmul_peak()]

    def checkpoint():  # a partial result survives a crash or a kill later in the run
        if out:
            atomic_write_text(out, json.dumps({**res, "partial": True}, indent=2, default=float))

    if "train" in parts:
        res["train"] = {}
        for p in PRESETS:
            log(f"train {p}")
            res["train"][p] = bench_train(p, batch=8, T=512, rounds=rounds, compile=compile, hf=hf, fused=fused_adamw, peaks=peaks)
        if not quick:  # long-context training, where the sliding layers' O(T·W) shows (same tokens per step)
            log("train rnope-swa at T=4096")
            res["train"]["rnope-swa@T4096"] = bench_train("rnope-swa", batch=1, T=4096, rounds=max(2, rounds - 2), compile=compile,
                                                          hf=hf, fused=fused_adamw, peaks=peaks)
    res["peak_flops"] = max(peaks)
    res["peak_flops_samples"] = peaks
    if "train" in res:
        finish_mfu(res["train"], res["peak_flops"])
        checkpoint()
    if "inference" in parts:
        res["inference"] = {}
        for p in PRESETS:
            log(f"inference {p}")
            res["inference"][p] = bench_inference(p, lengths, new_tokens, max(2, rounds - 1 if quick else rounds - 2), hf=hf,
                                                  compile=compile)
            checkpoint()
    if "kv" in parts:
        res["kv_cache"] = bench_kv(lengths + ([16384] if 16384 not in lengths else []), hf)
    if "sliding" in parts:
        log("sliding")
        res["sliding"] = bench_sliding(rounds)
    if "long" in parts:
        log("long context")
        res["long"] = bench_long(16384 if quick else 32768, new_tokens=16 if quick else 32, threads=threads)
        checkpoint()
    if "llamacpp" in parts:
        from .bench_llamacpp import bench_llamacpp

        log("llama.cpp")
        res["llamacpp"] = bench_llamacpp(binary=llama_bench, reps=rounds, compile=compile,
                                         threads=(threads,) if threads else (1, 2))
        if "skipped" in res["llamacpp"]:
            log(f"llama.cpp: skipped ({res['llamacpp']['skipped']})")
    res["targets"] = targets(res)
    res["machine"]["load_average_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    res["wall_s"] = time.perf_counter() - t0
    if out:
        atomic_write_text(out, json.dumps(res, indent=2, default=float))
    return res


def markdown(res: dict) -> str:
    """A Markdown summary of a result (the tables in RESULTS.md)."""
    m = res["machine"]
    lines = [f"Machine: {m['cpu']}, {m['threads']} threads, torch {m['torch']}, transformers {m['transformers']}, "
             f"load average {m['load_average'][0]:.1f} → {m.get('load_average_end', [0])[0]:.1f}; "
             f"fp32 mm peak {res.get('peak_flops', 0) / 1e9:.1f} GFLOP/s (best of {len(res.get('peak_flops_samples', []))})", ""]
    fmt = lambda x: f"{x:.4g}" if isinstance(x, float) else str(x)  # noqa: E731
    lines.append(markdown_table(["target", "goal", "measured", "baseline", "result", "met"],
                                [[t["target"], t["goal"], fmt(t["measured"]), fmt(t["baseline"]), t["note"], "yes" if t["met"] else "**no**"]
                                 for t in res.get("targets", [])]))
    for p, tr in res.get("train", {}).items():
        lines += ["", f"Training {p}, B×T = {tr['batch']}×{tr['seq_len']}:", "",
                  markdown_table(["variant", "step s (median)", "tok/s", "MFU"],
                                 [[k, f"{r['step_s']:.3f}", f"{r['tok_per_s']:.0f}", f"{r['mfu']:.1%}"] for k, r in tr["variants"].items()])]
    nan = float("nan")
    for p, inf in res.get("inference", {}).items():
        rows = []
        for L, r in inf.items():
            if "error" in r:  # the other columns left empty
                rows.append([L, r["error"], *[""] * 6])
                continue
            ps, dec = r["prefill_s"], r["decode_tok_per_s"]
            rows.append([L, f"{ps['rnope']:.3f}", f"{ps.get('hf', nan):.3f}", f"{r.get('prefill_speedup_vs_hf', nan):.2f}",
                         f"{dec.get('rnope_compiled', nan):.1f} / {dec['rnope_eager']:.1f}", f"{dec.get('hf', nan):.1f}",
                         f"{r.get('decode_speedup_vs_hf', nan):.2f}",
                         f"{r['decode_floor_tok_per_s']:.1f} ({r.get('hf_max_possible_speedup', nan):.2f})"])
        lines += ["", f"Inference {p} (B=1):", "",
                  markdown_table(["prompt", "prefill rnope s", "prefill HF s", "×", "decode tok/s rnope compiled / eager", "HF generate tok/s",
                                  "× (best)", "weight-read floor tok/s (max × possible)"], rows)]
    kv = res.get("kv_cache")
    if kv:
        lines += ["", "KV cache (B=1, fp32):", "",
                  markdown_table(["preset", "L", "bytes", "fraction of full", "theory", "error", "HF bytes"],
                                 [[p, L, f"{r['bytes']:,}", f"{r['fraction']:.4f}", f"{r['theory']:.4f}", f"{r['rel_error']:+.2%}",
                                   f"{r['hf_bytes']:,}" if r.get("hf_bytes") else "-"] for p, rows in kv.items() for L, r in rows.items()])]
    sl = res.get("sliding")
    if sl:
        lines += ["", f"Sliding kernel (W={sl['window']}): t(8k) {sl['kernel_8k_s'] * 1e3:.1f} ms, t(16k) {sl['kernel_16k_s'] * 1e3:.1f} ms, "
                  f"ratio {sl['kernel_t16k_over_t8k']:.2f}; prefill 16k rnope-swa {sl['prefill_16k_s']['rnope-swa']:.2f} s vs rope "
                  f"{sl['prefill_16k_s']['rope']:.2f} s = {sl['prefill_16k_swa_over_rope']:.3f}"]
    if res.get("long"):
        lines += long_markdown(res["long"])
    if "llamacpp" in res:
        from .bench_llamacpp import markdown as llamacpp_markdown

        lines += ["", "Against llama.cpp:", "", llamacpp_markdown(res["llamacpp"])]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``rnope bench ARGS`` (the same arguments, checks and output directory)."""
    from .cli import main as cli_main

    return cli_main(["bench", *(sys.argv[1:] if argv is None else argv)])


def run_args(a) -> int:
    parts, fused, lengths = check_args(a)
    res = run(a.quick, out=a.out, parts=parts, hf=not a.no_hf, compile=not a.no_compile, threads=a.threads, fused_adamw=fused,
              rounds=a.rounds, lengths=lengths, llama_bench=getattr(a, "llama_bench", None),
              new_tokens=getattr(a, "new_tokens", None))
    print(markdown(res))
    return 0


def check_args(a):
    """(parts, fused AdamW choice, lengths) of parsed arguments; ValueError naming a bad one."""
    parts = tuple(p.strip() for p in a.only.split(",") if p.strip())
    unknown = set(parts) - set(PARTS)
    if unknown:
        raise ValueError(f"--only: unknown part {sorted(unknown)[0]!r} (known: {', '.join(PARTS)})")
    fused = {"default": None, "fused": True, "unfused": False}[a.fused_adamw]
    try:
        lengths = [int(x) for x in a.lengths.split(",")] if getattr(a, "lengths", None) else None
    except ValueError:
        raise ValueError(f"--lengths must be comma-separated integers, got {a.lengths!r}") from None
    if lengths and min(lengths) < 1:
        raise ValueError(f"--lengths must be positive, got {a.lengths!r}")
    if getattr(a, "new_tokens", None) is not None and a.new_tokens < 1:
        raise ValueError(f"--new-tokens must be >= 1, got {a.new_tokens}")
    return parts, fused, lengths


if __name__ == "__main__":
    sys.exit(main())
