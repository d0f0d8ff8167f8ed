"""The one-script GPU check: kernels, cache and a compiled bf16 training step, with a JSON summary.

    python benchmarks/gpu_check.py                  # on a CUDA machine (H100: < 5 minutes)
    python benchmarks/gpu_check.py --dry-run        # anywhere: the same code at tiny shapes on CPU

Without CUDA (and without ``--dry-run``) it prints ``{"skipped": "no CUDA device"}`` and exits 0.
Every section runs under one deadline (``--budget-s``, default 270 s); a section that would not fit
is recorded as skipped rather than overrunning. Sections:

1. **kernels** — FlexAttention (``torch.nn.attention.flex_attention`` with ``create_block_mask``;
   sliding mask_mod ``kv <= q & q - kv < W``, chunked, causal) and the blockwise SDPA sliding
   kernel against the fp32 reference, forward and backward, fp32 and bf16, GQA, a length that is
   not a multiple of the 128-token block; FlashAttention ``window_size=(W-1, 0)`` too when the
   ``flash_attn`` package is installed.
2. **model** — a small rnope-swa on the GPU: ``attn_impl="auto"`` (FlexAttention) vs ``"reference"``
   logits and gradients; cached decode (:class:`rnope.decode.Decoder`, eager and compiled) vs the
   uncached forward.
3. **train** — a ≈125M-parameter rnope-swa (12 layers, d_model 768, 12 heads, 4 KV heads, d_ff 3072,
   vocab 32768, window 1024) at T = 8192, batch 8: bf16 autocast, fused AdamW, ``torch.compile`` of
   the forward with its loss (``model(x, targets=y)``, as the trainer runs it); tokens/s
   and MFU = (6·N + attention FLOPs over the visible keys)·tokens / time, against the best bf16
   ``torch.mm`` measured here and against the card's nominal dense bf16 peak.

Exit code 0 when every check that ran passed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # the rnope package of this checkout, installed or not
sys.path.insert(0, str(HERE))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

NOMINAL_BF16_TFLOPS = {"H100": 989.4, "H200": 989.4, "A100": 312.0, "L4": 121.0, "A10": 125.0}

BIG = dict(vocab_size=32768, n_layer=12, d_model=768, n_head=12, n_kv_head=4, d_ff=3072, window=1024, max_seq_len=8192)
TINY = dict(vocab_size=97, n_layer=4, d_model=64, n_head=4, n_kv_head=2, d_ff=128, window=16, chunk_size=16, max_seq_len=512)


class Deadline:
    def __init__(self, budget_s: float):
        self.t0, self.budget = time.perf_counter(), budget_s

    def left(self) -> float:
        return self.budget - (time.perf_counter() - self.t0)

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


def maxerr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max())


def _grads(out: torch.Tensor, tensors, seed: int = 1):
    g = torch.Generator(device="cpu").manual_seed(seed)
    w = torch.randn(out.shape, generator=g).to(out.device, out.dtype)
    return torch.autograd.grad((out * w).float().sum(), tensors)


# ------------------------------------------------------------------------------------------- kernels
def check_kernels(dev: torch.device, dry: bool) -> dict:
    from rnope.config import LayerSpec
    from rnope.kernels import flex, reference_attention, sdpa, visibility

    T, W, C = (77, 16, 16) if dry else (1000, 256, 256)
    B, H, Hkv, D = 2, 4, 2, 64
    specs = {"sliding": LayerSpec(rope=True, span="sliding", window=W), "chunked": LayerSpec(rope=True, span="chunked", chunk=C),
             "causal": LayerSpec(rope=False, span="full")}
    dtypes = [torch.float32] + ([torch.bfloat16] if dev.type == "cuda" else [])
    tol = {torch.float32: 2e-3, torch.bfloat16: 3e-2}
    backward = dev.type == "cuda"  # FlexAttention has no CPU backward
    out: dict = {"T": T, "window": W, "flex_importable": flex.importable()}
    g = torch.Generator(device="cpu").manual_seed(0)
    base = [torch.randn(B, h, T, D, generator=g) for h in (H, Hkv, Hkv)]
    times = torch.arange(T, device=dev)
    ok = True
    for dt in dtypes:
        q, k, v = (x.to(dev, dt).requires_grad_(backward) for x in base)
        for name, spec in specs.items():
            allowed = visibility(times, times, spec)
            ref = reference_attention(q.float(), k.float(), v.float(), allowed)[0]
            gr = _grads(ref, (q, k, v)) if backward else None  # once: the reference graph is freed after it
            cands = {}
            if flex.importable():
                cands["flex"] = lambda spec=spec: flex.attend(q, k, v, spec)
            if name == "sliding":
                cands["sdpa_blockwise"] = lambda: sdpa.sliding(q, k, v, W)
            for cname, fn in cands.items():
                key = f"{cname}/{name}/{str(dt).split('.')[-1]}"
                try:
                    with torch.set_grad_enabled(backward):
                        y = fn()
                    row = {"fwd_maxerr": maxerr(y, ref)}
                    if backward:
                        gy = _grads(y, (q, k, v))
                        row["bwd_maxerr"] = max(maxerr(a, b) for a, b in zip(gy, gr))
                    row["ok"] = all(v_ <= tol[dt] * (10 if k_ == "bwd_maxerr" else 1) for k_, v_ in row.items() if k_.endswith("maxerr"))
                except Exception as e:  # a kernel that does not run is a failed check, not a crash
                    row = {"ok": False, "error": f"{e.__class__.__name__}: {str(e).splitlines()[0] if str(e) else ''}"}
                ok &= row["ok"]
                out[key] = row
    # FlashAttention's window_size, where the package is installed (layout (B, T, H, D), bf16)
    try:
        from flash_attn import flash_attn_func  # type: ignore
    except Exception:
        out["flash_attn"] = "not installed"
    else:
        if dev.type == "cuda":
            q, k, v = (x.to(dev, torch.bfloat16) for x in base)
            allowed = visibility(times, times, specs["sliding"])
            ref = reference_attention(q.float(), k.float(), v.float(), allowed)[0]
            y = flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), causal=True, window_size=(W - 1, 0))
            err = maxerr(y.transpose(1, 2), ref)
            out["flash_attn/sliding/bfloat16"] = {"fwd_maxerr": err, "ok": err <= tol[torch.bfloat16]}
            ok &= err <= tol[torch.bfloat16]
    out["ok"] = bool(ok)
    return out


# ------------------------------------------------------------------------------------------- model
def check_model(dev: torch.device, dry: bool, compile_decode: bool) -> dict:
    from rnope import ModelConfig, Transformer

    torch.manual_seed(0)
    cfg = ModelConfig.from_preset("rnope-swa", **TINY) if dry else ModelConfig.from_preset(
        "rnope-swa", vocab_size=4096, n_layer=8, d_model=256, n_head=4, n_kv_head=2, d_ff=768, window=128, max_seq_len=2048)
    model = Transformer(cfg).to(dev)
    T = 100 if dry else 700
    x = torch.randint(0, cfg.vocab_size, (2, T), device=dev)
    out: dict = {"T": T}
    grad = dev.type == "cuda"  # the flex path has no CPU backward
    outs, grads = {}, {}
    for impl in ("auto", "reference"):
        model.attn_impl = impl
        model.zero_grad(set_to_none=True)
        with torch.set_grad_enabled(grad):
            y = model(x)
            if grad:
                y.float().square().mean().backward()
                grads[impl] = [p.grad.detach().clone() for p in model.parameters()]
        outs[impl] = y.detach()
    model.attn_impl = "auto"
    out["logits_maxerr"] = maxerr(outs["auto"], outs["reference"])
    ok = out["logits_maxerr"] <= 1e-3
    if grad:
        out["grad_max_relerr"] = max(maxerr(a, b) / (float(b.abs().max()) + 1e-12) for a, b in zip(grads["auto"], grads["reference"]))
        ok &= out["grad_max_relerr"] <= 1e-3
    # cached decode (static buffers) vs the uncached forward, eager and compiled
    model.eval()
    P, N = (20, 40) if dry else (300, 200)  # decode across the window boundary
    seq = torch.randint(0, cfg.vocab_size, (2, P + N), device=dev)
    warm, timed = 2, 20  # decode steps after the check: untimed (a new token layout), then timed
    variants = [("decode_eager", False, False)] + ([("decode_compiled", True, False)] if compile_decode else [])
    if compile_decode and dev.type == "cuda":
        variants.append(("decode_cudagraphs", True, True))  # experimental: not part of `ok`
    with torch.no_grad():
        full = model(seq)
        for name, comp, graphs in variants:
            try:
                out[name] = _decode_variant(model, seq, full, P, N, warm, timed, comp, graphs, dev)
            except Exception as e:
                if not graphs:
                    raise
                out[name] = {"error": f"{e.__class__.__name__}: {str(e).splitlines()[0] if str(e) else ''}"}
                continue
            if not graphs:
                ok &= out[name]["maxerr"] <= 1e-3
    out["ok"] = bool(ok)
    return out


def _decode_variant(model, seq, full, P, N, warm, timed, comp, graphs, dev) -> dict:
    """Prefill P tokens, decode N more (checked against ``full``), then time ``timed`` greedy steps.

    ``graphs``: the library's CUDA-graph decode (``Decoder(cuda_graphs=True)``: the compiled step
    under ``mode="reduce-overhead"``, the cache buffers static, each step's logits copied)."""
    from rnope.decode import Decoder

    cache = model.new_cache(2, P + N + warm + timed)
    logits = [model(seq[:, :P], cache=cache)]
    step = Decoder(model, cache, compile=comp, cuda_graphs=graphs)
    if graphs and not step.graphs:
        raise RuntimeError("Decoder(cuda_graphs=True) did not enable CUDA graphs")
    for i in range(P, P + N):
        logits.append(step(seq[:, i])[:, None])
    err = maxerr(torch.cat(logits, 1), full)
    tok = seq[:, -1]
    for _ in range(warm):
        tok = step(tok).argmax(-1)
    sync(dev)
    t = time.perf_counter()
    for _ in range(timed):
        tok = step(tok).argmax(-1)
    sync(dev)
    return {"maxerr": err, "compiled": step.compiled, "cuda_graphs": step.graphs, "ms_per_step": (time.perf_counter() - t) / timed * 1e3}


# ------------------------------------------------------------------------------------------- train
def mm_peak(dev: torch.device, dtype: torch.dtype, n: int, reps: int = 10) -> float:
    a, b = torch.randn(n, n, device=dev, dtype=dtype), torch.randn(n, n, device=dev, dtype=dtype)
    torch.mm(a, b)
    sync(dev)
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        torch.mm(a, b)
        sync(dev)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def flops_per_token(cfg, T: int) -> float:
    from rnope.bench import train_flops_per_token

    return train_flops_per_token(cfg, T)[0]


def train_variant(dev: torch.device, cfg, impl: str, compile: bool, deadline: Deadline, batch: int, steps: int,
                  loss_in_graph: bool = True, mode: str | None = None, profile: bool = False) -> dict:
    """Time one training step setup: forward, fp32 cross-entropy, backward, clip, fused AdamW.

    ``loss_in_graph``: the trainer's way, ``model(x, targets=y)``: the cross-entropy compiles with the
    model, so inductor fuses the fp32 upcast and log-softmax instead of keeping fp32 logits. False:
    logits out of the compiled model, the loss outside (how the first GPU runs measured)."""
    from rnope import Transformer

    cuda = dev.type == "cuda"
    T = cfg.max_seq_len
    torch.manual_seed(0)
    model = Transformer(cfg).to(dev).train()
    model.attn_impl = impl
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=cuda)

    def model_loss(inp, tgt):
        return model(inp, targets=tgt)

    if loss_in_graph:
        fwd_loss = torch.compile(model_loss, dynamic=False, mode=mode) if compile else model_loss
    else:
        fwd = torch.compile(model, dynamic=False, mode=mode) if compile else model

        def fwd_loss(inp, tgt):
            return F.cross_entropy(fwd(inp).float().flatten(0, 1), tgt.flatten())
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else torch.autocast("cpu", enabled=False)
    x = torch.randint(0, cfg.vocab_size, (batch, T + 1), device=dev)
    out: dict = {"attn_impl": impl, "compiled": compile, "compile_mode": mode or "default", "loss_in_graph": loss_in_graph, "losses": []}

    def step() -> float:
        sync(dev)
        t = time.perf_counter()
        with amp:
            loss = fwd_loss(x[:, :-1], x[:, 1:])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync(dev)
        out["losses"].append(float(loss.detach()))
        return time.perf_counter() - t

    if cuda:
        torch.cuda.reset_peak_memory_stats()
    out["first_step_s"] = step()  # compiles (a minute for the ≈125M model on an H100)
    # always two more steps: the compile time says nothing about a step's, so the deadline is judged
    # on real steps (on an H100 the first deadline-judged-by-compile run timed none)
    ts: list[float] = [step(), step()]
    while len(ts) < steps + 1:
        if deadline.left() < 10 + 2 * max(ts):
            out["note"] = f"stopped early by the deadline after {len(ts)} steps"
            break
        ts.append(step())
    ts = ts[1:]  # the first timed step may still autotune
    dt = sorted(ts)[len(ts) // 2]
    tok = batch * T
    out.update(step_s=dt, step_s_all=ts, tok_per_s=tok / dt, max_memory_gb=torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
               loss_finite=all(math.isfinite(v) for v in out["losses"]))
    if profile and deadline.left() > 10 + 4 * dt:
        out["profile"] = profile_steps(step, dev, n=2)
    return out


def profile_steps(step, dev: torch.device, n: int = 2, top: int = 20) -> dict:
    """torch.profiler over ``n`` steps: the kernels that take the device time, largest first, and how
    much of it goes to matmuls (``gemm`` / ``mm``), attention (``flex`` / ``attention``) and the rest."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    with profile(activities=acts) as prof:
        for _ in range(n):
            step()
    attr = "self_device_time_total" if dev.type == "cuda" else "self_cpu_time_total"
    rows = [(e.key, getattr(e, attr, 0.0) or 0.0, e.count) for e in prof.key_averages()]
    rows = [r for r in rows if r[1] > 0]
    total = sum(r[1] for r in rows) or 1.0

    def kind(name: str) -> str:  # by kernel name: a heuristic (the "top" list has the names themselves)
        low = name.lower()
        if low.startswith("triton_tem_"):  # inductor templates: FlexAttention, or an autotuned mm
            return "matmul" if "_mm" in low or "addmm" in low or "bmm" in low else "attention"
        if "flex" in low or "attention" in low or "fmha" in low or "flash" in low:
            return "attention"
        if any(w in low for w in ("gemm", "matmul", "cutlass", "nvjet", "sm90_xmma")) or low.startswith(("aten::mm", "aten::addmm", "aten::bmm")):
            return "matmul"
        return "other"

    share: dict[str, float] = {}
    for name, t, _ in rows:
        k = kind(name)
        share[k] = share.get(k, 0.0) + t / total
    rows.sort(key=lambda r: -r[1])
    return {"steps": n, "time_kind": attr, "total_ms_per_step": total / 1e3 / n, "share": share,
            "top": [{"name": name[:120], "ms_per_step": t / 1e3 / n, "share": t / total, "calls": c} for name, t, c in rows[:top]]}


def check_train(dev: torch.device, dry: bool, compile: bool, deadline: Deadline, batch: int, steps: int,
                loss_in_graph: bool = True, mode: str | None = None, profile: bool = False) -> dict:
    """≈125M rnope-swa at T=8192 (tiny on the dry run): FlexAttention, then the blockwise SDPA path
    if the deadline allows; MFU of each against the measured bf16 mm peak and the nominal one."""
    from rnope import ModelConfig

    cuda = dev.type == "cuda"
    cfg = ModelConfig.from_preset("rnope-swa", **({**TINY, "max_seq_len": 256} if dry else BIG))
    T = cfg.max_seq_len
    fpt = flops_per_token(cfg, T)
    peak = mm_peak(dev, torch.bfloat16 if cuda else torch.float32, 8192 if cuda else 512)
    name = torch.cuda.get_device_name(0) if cuda else ""
    nominal = next((v for k, v in NOMINAL_BF16_TFLOPS.items() if k in name), None)
    out: dict = {"params": cfg.num_params(), "batch": batch, "seq_len": T, "window": cfg.window, "autocast": "bf16" if cuda else "none (fp32)",
                 "fused_adamw": cuda, "flops_per_token": fpt, "mm_peak_tflops": peak / 1e12, "nominal_bf16_tflops": nominal, "variants": {}}
    ok = True
    for impl, need in (("flex" if cuda else "auto", 0), ("sdpa", 100 if compile else 10)):
        if need and deadline.left() < need:
            out["variants"][impl] = {"skipped": f"deadline ({deadline.left():.0f}s left)"}
            continue
        try:
            r = train_variant(dev, cfg, impl, compile, deadline, batch, steps, loss_in_graph, mode, profile)
        except Exception as e:
            r = {"error": f"{e.__class__.__name__}: {str(e).splitlines()[0] if str(e) else ''}",
                 "traceback": traceback.format_exc().splitlines()[-6:]}
            ok = False
            out["variants"][impl] = r
            continue
        flops = fpt * batch * T / r["step_s"]
        r.update(achieved_tflops=flops / 1e12, mfu_vs_measured_mm=flops / peak)
        if nominal:
            r["mfu_vs_nominal"] = flops / (nominal * 1e12)
        ok &= r["loss_finite"]
        out["variants"][impl] = r
        if cuda:
            torch.cuda.empty_cache()
    out["ok"] = bool(ok)
    return out


# ------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dry-run", action="store_true", help="tiny shapes on the CPU (no CUDA needed)")
    ap.add_argument("--budget-s", type=float, default=270.0, help="deadline for all sections (seconds)")
    ap.add_argument("--batch", type=int, default=8, help="training batch (sequences of 8192 tokens; 8 = 27 GB with the loss in the graph, the best MFU measured)")
    ap.add_argument("--steps", type=int, default=8, help="timed training steps")
    ap.add_argument("--compile-mode", default=None, choices=["default", "max-autotune-no-cudagraphs", "max-autotune"],
                    help="torch.compile mode of the training step (the autotuning modes compile for minutes; untried so far)")
    ap.add_argument("--profile", action="store_true",
                    help="training: also profile two steps (top kernels; matmul / attention / other shares)")
    ap.add_argument("--loss-outside-graph", action="store_true",
                    help="training: the loss outside the compiled model (fp32 logits kept), for an A/B against the default")
    ap.add_argument("--no-compile", action="store_true", help="eager training step and decode")
    ap.add_argument("--json", default=None, help="also write the summary here")
    ap.add_argument("--sections", default="kernels,model,train",
                    help="comma-separated sections to run, in this order (default kernels,model,train)")
    a = ap.parse_args(argv)
    cuda = torch.cuda.is_available()
    if not cuda and not a.dry_run:
        summary = {"skipped": "no CUDA device", "torch": torch.__version__}
        print(json.dumps(summary))
        return 0
    dev = torch.device("cuda" if cuda and not a.dry_run else "cpu")
    dry = a.dry_run
    deadline = Deadline(a.budget_s)
    compile = not a.no_compile and not dry  # the dry run checks the code paths, not the compiler
    summary: dict = {"device": torch.cuda.get_device_name(0) if dev.type == "cuda" else "cpu (dry run)", "torch": torch.__version__,
                     "cuda": torch.version.cuda, "dry_run": dry, "budget_s": a.budget_s}
    if dev.type == "cuda":
        summary["capability"] = ".".join(map(str, torch.cuda.get_device_capability(0)))
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 checks in fp32
    known = {
        "kernels": (30, lambda: check_kernels(dev, dry)),
        "model": (60 if compile else 15, lambda: check_model(dev, dry, compile)),
        "train": (90 if compile else 20, lambda: check_train(dev, dry, compile, deadline, a.batch, a.steps, not a.loss_outside_graph,
                                                                        a.compile_mode, a.profile)),
    }
    names = [n.strip() for n in a.sections.split(",") if n.strip()]
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        ap.error(f"--sections: unknown section {', '.join(map(repr, unknown)) or '(none given)'}; choose from {', '.join(known)}")
    sections = [(n, *known[n]) for n in names]
    ok = True
    for name, need, fn in sections:
        if deadline.left() < need:
            summary[name] = {"skipped": f"deadline ({deadline.left():.0f}s left, needs ~{need}s)"}
            continue
        t = time.perf_counter()
        try:
            res = fn()
        except Exception as e:
            res = {"ok": False, "error": f"{e.__class__.__name__}: {str(e).splitlines()[0] if str(e) else ''}",
                   "traceback": traceback.format_exc().splitlines()[-6:]}
        res["section_s"] = time.perf_counter() - t
        summary[name] = res
        ok &= bool(res.get("ok", False))
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    summary["ok"] = bool(ok)
    summary["elapsed_s"] = deadline.elapsed()
    text = json.dumps(summary, default=float)
    print(text)
    if a.json:
        Path(a.json).write_text(json.dumps(summary, indent=2, default=float))
    return 0 if ok else 1


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
