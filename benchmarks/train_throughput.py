"""Training throughput and MFU: rnope-swa vs transformers' Cohere2ForCausalLM of the same shape.

    python benchmarks/train_throughput.py [--compile] [--steps 5] [--batch-size 8] [--json out.json]

Shape (~7M parameters): 8 layers, d_model 256, 4 heads, 2 KV heads, d_ff 768, window 128,
vocab 4096, T 512; pattern SSSN (HF: 3 sliding RoPE layers then one full NoPE layer).

Variants are built and warmed up (compiled) first, then timed in interleaved rounds — one step of
each per round — so a busy shared machine slows all of them alike. A step is what ``rnope train`` does: forward, fp32 cross-entropy, backward, grad clipping, AdamW
(bf16 autocast on CUDA, fp32 on CPU). Reported: median tokens/s over the timed steps and

    MFU = (6·N·tokens + attention FLOPs) / step time / peak

* ``N``: parameters in matmuls (attention, MLP, and the tied embedding used as LM head).
* attention FLOPs: 12·d_model·(visible keys) per token per layer for forward + backward (QKᵀ and
  AV, ×3 for the backward), counting only the keys a query can see: (T+1)/2 on average for a full
  causal layer, min(t+1, W) for a sliding layer — the work a perfect kernel would do.
* ``peak``: the best large ``torch.mm`` (fp32 on CPU, bf16 on CUDA; re-measured before every
  variant) in the same run on the same threads, so the ratio is against what this machine delivers.

Prints a table, then one JSON object (also written to ``--json``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from rnope import ModelConfig, Transformer  # noqa: E402

SHAPE = dict(vocab_size=4096, n_layer=8, d_model=256, n_head=4, n_kv_head=2, d_ff=768, window=128, max_seq_len=512)


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int, reps: int = 5) -> float:
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    best = float("inf")
    for _ in range(reps + 1):
        sync(device)
        t = time.perf_counter()
        torch.mm(a, b)
        sync(device)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def flops_per_token(cfg: ModelConfig, T: int) -> tuple[float, int]:
    """(training FLOPs per token, matmul parameters N)."""
    d, hd = cfg.d_model, cfg.head_dim
    per_layer = d * cfg.n_head * hd * 2 + d * cfg.n_kv_head * hd * 2 + 3 * d * cfg.d_ff
    n = cfg.n_layer * per_layer + cfg.vocab_size * d
    attn = 0.0
    for spec in cfg.layers:
        if spec.span == "sliding":
            keys = sum(min(t + 1, spec.window) for t in range(T)) / T
        else:
            keys = (T + 1) / 2
        attn += 12 * cfg.n_head * hd * keys
    return 6 * n + attn, n


def hf_model(cfg: ModelConfig):
    try:
        from transformers import Cohere2Config, Cohere2ForCausalLM
    except ImportError:
        return None
    try:
        from rnope.interop.hf_config import to_hf_config

        d = to_hf_config(cfg)
    except ImportError:
        d = dict(vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, intermediate_size=cfg.d_ff, num_hidden_layers=cfg.n_layer,
                 num_attention_heads=cfg.n_head, num_key_value_heads=cfg.n_kv_head, head_dim=cfg.head_dim,
                 max_position_embeddings=cfg.max_seq_len, layer_norm_eps=cfg.norm_eps, logit_scale=cfg.logit_scale,
                 tie_word_embeddings=True, sliding_window=cfg.window,
                 layer_types=["sliding_attention" if s.span == "sliding" else "full_attention" for s in cfg.layers],
                 rope_parameters={"rope_type": "default", "rope_theta": cfg.rope.theta})
    d = {k: v for k, v in d.items() if k not in ("rnope", "architectures", "model_type", "dtype")}
    hc = Cohere2Config(**d)
    hc._attn_implementation = "sdpa"
    return Cohere2ForCausalLM(hc)


class Runner:
    """One variant: a model, its optimizer and a fixed batch; :meth:`step` times one training step."""

    def __init__(self, model, call, *, device, batch: int, T: int, vocab: int, compile: bool):
        self.model, self.device = model.to(device).train(), device
        self.fwd = torch.compile(call) if compile else call
        self.opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
        self.amp = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
        g = torch.Generator().manual_seed(0)
        self.x = torch.randint(3, vocab, (batch, T + 1), generator=g).to(device)
        self.times: list[float] = []

    def step(self) -> float:
        sync(self.device)
        t = time.perf_counter()
        with self.amp:
            logits = self.fwd(self.x[:, :-1])
        loss = F.cross_entropy(logits.float().flatten(0, 1), self.x[:, 1:].flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        sync(self.device)
        return time.perf_counter() - t


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--steps", type=int, default=5, help="timed rounds (one step of every variant each)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--compile", action="store_true", help="also time torch.compile variants")
    ap.add_argument("--no-hf", action="store_true", help="skip the transformers pair")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", default=None, help="also write the JSON result here")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    B, T = args.batch_size, args.seq_len
    cfg = ModelConfig.from_preset("rnope-swa", **{**SHAPE, "max_seq_len": max(SHAPE["max_seq_len"], T)})
    fpt, n_matmul = flops_per_token(cfg, T)
    mm = lambda: matmul_peak(device, torch.bfloat16 if cuda else torch.float32, 8192 if cuda else 2048)  # noqa: E731

    variants = [("rnope", False)] + ([("rnope", True)] if args.compile else [])
    if not args.no_hf:
        variants += [("hf-cohere2", False)] + ([("hf-cohere2", True)] if args.compile else [])
    runners = {}
    for which, comp in variants:
        torch.manual_seed(0)
        if which == "rnope":
            model = Transformer(cfg)
            call = model
        else:
            model = hf_model(cfg)
            if model is None:
                print("transformers is not installed: skipping the Cohere2 pair", file=sys.stderr)
                continue
            call = lambda x, m=model: m(input_ids=x).logits  # noqa: E731
        r = Runner(model, call, device=device, batch=B, T=T, vocab=cfg.vocab_size, compile=comp)
        try:
            first = r.step()  # compiles
            for _ in range(args.warmup - 1):
                r.step()
        except Exception as e:  # e.g. no C++ compiler for inductor
            print(f"{which} compile={comp}: failed ({e.__class__.__name__}: {str(e).splitlines()[0]})", file=sys.stderr)
            continue
        r.first = first
        runners[(which, comp)] = r
    # interleaved rounds: every variant sees the same machine state (fair on a shared machine)
    peaks = [mm()]
    for _ in range(args.steps):
        for r in runners.values():
            r.times.append(r.step())
        peaks.append(mm())
    peak = max(peaks)
    rows = []
    for (which, comp), r in runners.items():
        dt = statistics.median(r.times)
        rows.append({"model": which, "compile": comp, "params": sum(p.numel() for p in r.model.parameters()), "step_s": dt,
                     "first_step_s": r.first, "step_times": r.times, "tok_per_s": B * T / dt, "tflops": fpt * B * T / dt / 1e12,
                     "mfu": fpt * B * T / dt / peak})
    for r in rows:
        twin = next((q for q in rows if q["model"] != r["model"] and q["compile"] == r["compile"]), None)
        if r["model"] == "rnope" and twin is not None:
            r["speedup_vs_hf"] = r["tok_per_s"] / twin["tok_per_s"]

    print(f"\ntraining step, B={B} T={T}, {device.type} ({torch.get_num_threads()} threads), "
          f"peak {peak / 1e9:.1f} GFLOP/s ({'bf16' if cuda else 'fp32'} mm), {fpt / 1e6:.1f} MFLOP/token")
    print(f"{'model':<12}{'compile':<9}{'params':>10}{'step s':>9}{'tok/s':>10}{'GFLOP/s':>10}{'MFU':>8}{'vs HF':>8}")
    for r in rows:
        vs = f"{r['speedup_vs_hf']:.2f}x" if "speedup_vs_hf" in r else ""
        print(f"{r['model']:<12}{str(r['compile']):<9}{r['params']:>10,}{r['step_s']:>9.3f}{r['tok_per_s']:>10,.0f}"
              f"{r['tflops'] * 1e3:>10.1f}{r['mfu']:>8.1%}{vs:>8}")
    result = {"device": str(device), "gpu": torch.cuda.get_device_name(0) if cuda else None, "cpu": platform.processor() or platform.machine(),
              "threads": torch.get_num_threads(), "torch": torch.__version__, "batch_size": B, "seq_len": T,
              "shape": SHAPE, "matmul_params": n_matmul, "flops_per_token": fpt, "peak_flops": peak, "peak_samples": peaks,
              "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None, "results": rows}
    print(json.dumps(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
