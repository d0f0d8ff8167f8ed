"""The training loop. Reads top to bottom: per step, the schedule (a pure
function), the eval / checkpoint cadence, the micro-steps, clipping, the optimizer step, the log.

:class:`Plan` is a validated run (built by ``rnope train``); :func:`train` runs it and returns the
exit code: 0 done (or SIGTERM: checkpoint saved), 130 SIGINT (checkpoint saved), 1 non-finite loss
(the last good checkpoint is kept). AdamW (fused), warm-up + cosine (:func:`lr_at`), bf16
autocast on CUDA and fp32 on CPU, optional ``torch.compile``. On GPU the host syncs only every
``log_every`` steps (losses stay on the device until then).
"""

from __future__ import annotations

import bisect
import contextlib
import json
import math
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..config import ModelConfig
from ..model import Transformer
from . import distributed as dist_
from . import state as state_
from .stream import TrainStream, prefetch, step_batches
from .runconfig import RunConfig, Stage
from .schedule import lr_at

__all__ = ["Plan", "train"]


@dataclass
class Plan:
    """A validated run: everything :func:`train` needs, nothing left to check."""

    run: RunConfig
    out: Path
    stages: tuple[Stage, ...]
    models: list[ModelConfig]  # one per stage
    tokenizer: object
    mode: str  # none | ddp | fsdp
    cache_dir: Path
    resume_from: Path | None = None
    rejected: tuple[Path, ...] = ()  # newer checkpoints that do not verify: set aside as step_N.corrupt at the start
    notes: tuple[str, ...] = ()  # one line each, printed when training starts
    run_info: dict = field(default_factory=dict)  # versions, git, hardware: recorded in run.json
    init_from: Path | None = None  # a new run starts from this checkpoint's weights (``--init``); optimizer fresh


class _NonFinite(Exception):
    pass


class _Signals:
    """SIGINT / SIGTERM set a flag; the loop saves at the end of the step. A second signal aborts."""

    def __init__(self):
        self.signum: int | None = None
        self._prev: dict = {}
        # RNOPE_STOP_WITH_PARENT=PID (set by ``rnope reproduce`` for its trainings): when that process
        # dies, however it dies, stop as on SIGTERM instead of training on as an orphan
        parent = os.environ.get("RNOPE_STOP_WITH_PARENT", "")
        self._parent = int(parent) if parent.isdigit() else None

    @property
    def requested(self) -> bool:
        if self.signum is None and self._parent is not None and os.getppid() != self._parent:
            self.signum = signal.SIGTERM
        return self.signum is not None

    def __enter__(self):
        import threading

        if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
            return self
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._prev[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum

    def __exit__(self, *exc):
        for sig, h in self._prev.items():
            signal.signal(sig, h)


class _Metrics:
    """``metrics.jsonl`` (+ TensorBoard when importable): one line per optimizer step.

    Step values stay on the device in ``pending`` until :meth:`flush` (every ``log_every`` steps,
    before evaluation results are attached, before a checkpoint): one host sync, one all-reduce of
    the loss sums, the non-finite check, then rank 0 appends the lines. ``tok_per_s`` is the rate over
    the flushed window, excluding evaluation and checkpoint time (:meth:`paused`).
    """

    def __init__(self, out: Path, d: dist_.Dist, bar):
        self.d, self.bar, self.pending = d, bar, []
        self.path = out / "metrics.jsonl"
        self.tb = None
        self.t_window, self.paused_s, self.train_s = time.perf_counter(), 0.0, 0.0
        self.last_loss: float | None = None  # of the last flushed step
        if d.is_main:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(out / "tensorboard"))
            except Exception:  # tensorboard not installed
                self.tb = None

    @contextlib.contextmanager
    def paused(self):
        t = time.perf_counter()
        yield
        self.paused_s += time.perf_counter() - t

    def note_val(self, step: int, stage: str, tokens: int, val: float, L: int) -> None:
        """Attach a validation loss to the line of ``step`` (a line of its own at step 0)."""
        if not self.pending:
            self.pending.append({"step": step, "stage": stage, "tokens": tokens})
        self.pending[-1].update(val_loss=val, val_seq_len=L)

    def flush(self) -> None:
        d, steps = self.d, [p for p in self.pending if "_sum" in p]
        if steps:
            sums = torch.stack([torch.stack([p["_sum"].double(), torch.tensor(float(p["_n"]), dtype=torch.float64, device=d.device)])
                                for p in steps])
            dist_.all_reduce_sum(d, sums)
            norms = torch.stack([p["_norm"].float() for p in steps]).tolist()
            now = time.perf_counter()
            window = max(now - self.t_window - self.paused_s, 1e-9)
            rate = sum(p["_tokens"] for p in steps) / window
            self.t_window, self.paused_s, self.train_s = now, 0.0, self.train_s + window
            for p, (total, n), g in zip(steps, sums.tolist(), norms):
                loss = total / max(n, 1.0)
                if not (math.isfinite(loss) and math.isfinite(g)):
                    self._write([q for q in self.pending if q["step"] < p["step"]])
                    self.pending = []
                    what, v = ("loss", loss) if not math.isfinite(loss) else ("gradient norm", g)
                    raise _NonFinite(f"non-finite {what} ({v}) at step {p['step']}")
                p.update(loss=loss, grad_norm=round(g, 5), tok_per_s=round(rate, 1))
                for k in ("_sum", "_n", "_norm", "_tokens"):
                    del p[k]
            self.bar.set_postfix(loss=f"{steps[-1]['loss']:.4f}", tok_s=f"{rate:,.0f}", refresh=False)
            self.last_loss = steps[-1]["loss"]
        self._write(self.pending)
        self.pending = []

    def _write(self, rows: list[dict]) -> None:
        if not self.d.is_main or not rows:
            return
        with open(self.path, "a", encoding="utf-8") as f:
            f.write("".join(json.dumps(r) + "\n" for r in rows))
        if self.tb is not None:
            for r in rows:
                for k in ("loss", "val_loss", "lr", "tok_per_s", "grad_norm"):
                    if k in r:
                        self.tb.add_scalar(f"train/{k}", r[k], r["step"])
            self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


class _Validation:
    """Mean next-token loss on the first ``eval_batches · batch_size`` validation samples of length L
    (corpus only, no synthetic documents), split evenly over the ranks."""

    def __init__(self, val_dir: Path, run: RunConfig, d: dist_.Dist, amp, say):
        self.val_dir, self.run, self.d, self.amp, self.say = val_dir, run, d, amp, say
        self.sets: dict = {}

    def loss(self, fwd, L: int) -> float | None:
        from ..data import DataError, PackedDataset

        if L not in self.sets:
            try:
                ds = PackedDataset(self.val_dir, L, seed=0, shuffle=False)
                self.sets[L] = ds if ds.n_samples >= self.d.world else None
            except DataError:
                self.sets[L] = None
            if self.sets[L] is None:
                self.say(f"rnope: warning: the validation split is too small for sequences of {L} tokens; skipping validation")
        ds, d, B = self.sets[L], self.d, self.run.batch_size
        if ds is None:
            return None
        rows = min(self.run.eval_batches * B, ds.n_samples // d.world)  # the same number of forwards on every rank
        tot = torch.zeros(2, dtype=torch.float64, device=d.device)
        lo = d.rank * rows
        with torch.no_grad():
            for b in range(lo, lo + rows, B):
                items = [ds[i] for i in range(b, min(b + B, lo + rows))]
                x = torch.stack([t[0] for t in items]).to(d.device)
                y = torch.stack([t[1] for t in items]).to(d.device)
                with self.amp:
                    tot[0] += fwd(x, targets=y, reduction="sum")
                tot[1] += y.numel()
        dist_.all_reduce_sum(d, tot)
        return float(tot[0] / tot[1])


def _optimizer(model: torch.nn.Module, run: RunConfig, device: torch.device) -> torch.optim.Optimizer:
    """AdamW; weight decay on matrices and embeddings only (not norm weights)."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    other = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": run.weight_decay}, {"params": other, "weight_decay": 0.0}]
    # fused on CUDA and on CPU (one vectorised kernel per step; the per-parameter loop, PyTorch's CPU
    # default, took a fifth of a tiny model's step)
    return torch.optim.AdamW(groups, lr=run.lr, betas=(run.beta1, run.beta2), eps=1e-8, fused=device.type in ("cuda", "cpu"))


def _build(cfg: ModelConfig, run: RunConfig, d: dist_.Dist, msd=None, osd=None):
    """(raw model, module to call, optimizer) for ``cfg``, with state loaded if given."""
    with torch.random.fork_rng(devices=[]):  # identical init on every rank; the global RNG is untouched
        torch.manual_seed(run.seed)
        raw = Transformer(cfg)
    raw = raw.to(d.device)
    fwd = dist_.wrap(raw, d)
    optim = _optimizer(raw, run, d.device)
    if msd is not None:
        dist_.load_full_state(raw, optim, msd, osd)
    if run.compile:
        fwd = torch.compile(fwd, dynamic=False)  # one graph per micro-batch shape (long / short)
    return raw, fwd, optim


def train(plan: Plan) -> int:
    d = dist_.setup(plan.mode)
    try:
        return _train(plan, d)
    finally:
        dist_.teardown(d)


def _train(plan: Plan, d: dist_.Dist) -> int:
    from tqdm import tqdm

    from ..data import prepare_dataset

    run, out, stages, tok = plan.run, plan.out, plan.stages, plan.tokenizer
    starts = [sum(s.steps for s in stages[:i]) for i in range(len(stages))]  # first step of each stage
    total, K, B = run.total_steps, run.grad_accum, run.batch_size
    cuda = d.device.type == "cuda"
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else contextlib.nullcontext()
    log_every = run.log_every or (10 if cuda else 1)
    say = (lambda msg: tqdm.write(msg, file=sys.stderr)) if d.is_main else (lambda msg: None)

    # ---- data: tokenized once into shards (rank 0 first, the others then find the cache) -------
    if d.is_main:
        train_dir, val_dir, meta = prepare_dataset(run.data, tok, plan.cache_dir, val_fraction=run.val_fraction, show_progress=True)
    dist_.barrier(d)
    if not d.is_main:
        train_dir, val_dir, meta = prepare_dataset(run.data, tok, plan.cache_dir, val_fraction=run.val_fraction)

    # ---- state: fresh, or the checkpoint we resume from ---------------------------------------
    st = {"step": 0, "stage": 0, "tokens": 0, "elapsed_s": 0.0, "positions": {}}
    msd = osd = None
    if plan.resume_from is not None:
        msd, osd, saved, rng = state_.read_checkpoint(plan.resume_from)
        st.update({k: saved[k] for k in st if k in saved})
        state_.set_rng_state(rng, saved["rng"])
    elif plan.init_from is not None:
        msd = _init_state(plan.init_from, plan.models[0])
    start, stage_i = st["step"], st["stage"]
    raw, fwd, optim = _build(plan.models[stage_i], run, d, msd, osd)
    del msd, osd
    stream = TrainStream(train_dir, tok, seed=run.seed, kinds=run.synthetic_kinds, positions=st["positions"])
    gen = step_batches(stream, stages, starts, batch_size=B, grad_accum=K, default_ratio=run.synthetic_ratio,
                       rank=d.rank, world=d.world, start=start, stop=total)
    batches = prefetch(gen) if cuda else gen  # CPU: the cores are busy with the model anyway
    validation = _Validation(val_dir, run, d, amp, say)
    if d.is_main:
        for msg in plan.notes:
            say(msg)
        for bad in plan.rejected:
            if bad.exists():
                state_.set_aside(bad)
        state_.clean_tmp(out)
        state_.truncate_metrics(out / "metrics.jsonl", start)
        _write_run_json(plan, d, meta, start)

    def save(step: int) -> None:
        msd, osd = dist_.full_state(raw, optim, d)  # gathered on rank 0
        if d.is_main:
            name = stages[stage_i].name
            trainer = {**st, "stage_name": name, "world_size": d.world, "run": run.to_dict()}
            try:
                path = state_.write_checkpoint(out, step, config=plan.models[stage_i], model_state=msd, optim_state=osd,
                                               tokenizer=tok, trainer=trainer, keep=run.keep, extra={"stage": name, "run": run.to_dict()})
            except state_.CheckpointWriteError as e:
                last = state_.latest_checkpoint(out)
                raise state_.CheckpointWriteError(
                    e.errno, f"{e}; training stopped at step {step}; last checkpoint: "
                             f"{last.name + ' (intact; rerun with --resume)' if last else 'none'}") from None
            say(f"saved {path}")
        dist_.barrier(d)

    def every(n: int, s: int) -> bool:
        return bool(n) and s % n == 0

    # ---- the loop -----------------------------------------------------------------------------
    bar = tqdm(total=total, initial=start, desc="train", unit="step", file=sys.stderr, disable=not d.is_main,
               dynamic_ncols=True, mininterval=0.5)
    metrics = _Metrics(out, d, bar)
    metrics.train_s = st["elapsed_s"]
    if start >= total:
        say(f"run '{out}' is already complete at step {start} (raise --max-steps to continue it)")
    say(f"training {plan.models[stage_i].num_params():,} parameters for {max(total - start, 0)} steps "
        f"({d.world} process{'es' if d.world > 1 else ''}, {d.device.type}) -> {out}")
    code = 0
    last_val = None
    t_start = time.perf_counter()
    try:
        with _Signals() as sig:
            while True:
                s = st["step"]  # optimizer steps done
                final, boundary = s >= total, s in starts[1:]
                stopping = dist_.any_flag(d, sig.requested) if d.world == 1 or (s - start) % log_every == 0 else False

                # -- eval / checkpoint cadence, for the weights after s steps (done already at a resume point)
                if (s > start or plan.resume_from is None) and (final or boundary or every(run.eval_every, s)):
                    with metrics.paused():
                        L = stages[stage_i].seq_len
                        v = validation.loss(fwd, L)
                    if v is not None:
                        metrics.note_val(s, stages[stage_i].name, st["tokens"], v, L)
                        say(f"step {s}: val_loss {v:.4f} ({L} tokens, held-out split)")
                        last_val = (v, L)
                save_now = s > start and (final or stopping or boundary or every(run.save_every, s))
                if final or stopping or save_now or len(metrics.pending) >= log_every:
                    metrics.flush()  # raises _NonFinite before a bad state can be saved
                if save_now:
                    with metrics.paused():
                        save(s)
                if final or stopping:
                    break

                # -- stage: a new stage rebuilds the model from the current weights (theta, length)
                step, micros, positions = next(batches)
                i = bisect.bisect_right(starts, s) - 1
                if i != stage_i:
                    msd, osd = dist_.full_state(raw, optim, d, everyone=True)
                    raw, fwd, optim = _build(plan.models[i], run, d, msd, osd)
                    del msd, osd
                    stage_i = i
                    say(_describe(stages[i], plan.models[i]))
                stage = stages[i]

                # -- schedule: a pure function of the step within the stage
                warmup = stage.warmup if stage.warmup is not None else run.warmup if run.warmup is not None else stage.steps // 10
                lr = lr_at(s - starts[i], total=stage.steps, peak=stage.lr or run.lr,
                           min_lr=run.min_lr if stage.min_lr is None else stage.min_lr, warmup=warmup)
                for g in optim.param_groups:
                    g["lr"] = lr

                # -- micro-steps: each holds B·seq_len tokens, so one constant normalises the loss
                norm = B * stage.seq_len * K
                loss_sum = torch.zeros((), device=d.device)
                n_targets = 0
                for m, (x, y, n) in enumerate(micros):
                    x, y = x.to(d.device, non_blocking=True), y.to(d.device, non_blocking=True)
                    with dist_.no_sync(getattr(fwd, "_orig_mod", fwd), d, sync=m == K - 1):
                        with amp:  # the loss inside the (compiled) forward: no fp32 logits kept for backward
                            lsum = fwd(x, targets=y, reduction="sum")
                        (lsum / norm).backward()
                    loss_sum += lsum.detach()
                    n_targets += n

                # -- clip, step
                gnorm = torch.nn.utils.clip_grad_norm_(raw.parameters(), run.clip if run.clip > 0 else float("inf"))
                gnorm = gnorm.full_tensor() if hasattr(gnorm, "full_tensor") else gnorm  # FSDP2: a DTensor
                optim.step()
                optim.zero_grad(set_to_none=True)

                # -- log: values stay on the device until the next flush
                tokens = sum(x.numel() for x, _, _ in micros) * d.world
                st.update(step=s + 1, stage=i, tokens=st["tokens"] + tokens, positions=positions)
                metrics.pending.append({"step": s + 1, "stage": stage.name, "lr": lr, "tokens": st["tokens"], "seq_len": stage.seq_len,
                                        "_sum": loss_sum, "_n": n_targets, "_norm": gnorm.detach(), "_tokens": tokens})
                st["elapsed_s"] = metrics.train_s
                bar.update(1)
        if stopping:
            code = 130 if sig.signum == signal.SIGINT else 0
            say(f"rnope: stopped by signal {sig.signum} at step {st['step']}; checkpoint saved")
        elif st["step"] > start:
            loss = f"train loss {metrics.last_loss:.4f}" if metrics.last_loss is not None else "no train loss logged"
            val = f", val_loss {last_val[0]:.4f} at {last_val[1]} tokens" if last_val else ""
            last = state_.latest_checkpoint(out) if d.is_main else None
            say(f"done: steps {start + 1}-{st['step']} ({st['tokens']:,} tokens in all) in "
                f"{(time.perf_counter() - t_start) / 60:.1f} min; {loss}{val}; checkpoint {last or 'none'}")
    except _NonFinite as e:
        if d.is_main:
            last = state_.latest_checkpoint(out)
            print(f"rnope: error: {e}; training stopped (last good checkpoint: {last or 'none'})", file=sys.stderr)
        code = 1
    finally:
        if hasattr(batches, "close"):
            batches.close()  # stops the prefetch thread
        bar.close()
        metrics.close()
    return code


def _init_state(path: Path, cfg: ModelConfig) -> dict:
    """The weights of checkpoint ``path`` for a model of ``cfg`` (tensors ``cfg`` adds at their init values)."""
    from ..checkpoint import load
    from ..convert import carry_state

    model, _ = load(path)
    return carry_state(model.state_dict(), model.config, cfg)


def _describe(stage: Stage, cfg: ModelConfig) -> str:
    mix = f" (mixed with {stage.short_seq_len}, long_ratio {stage.long_ratio:g})" if stage.mixed else ""
    return f"stage {stage.name!r}: seq_len {stage.seq_len}{mix}, rope_theta {cfg.rope.theta:g}, max_seq_len {cfg.max_seq_len}"


def _write_run_json(plan: Plan, d: dist_.Dist, meta: dict, start: int) -> None:
    """``run.json``: resolved run and model configs, seed, corpus and tokenizer hashes, versions, hardware."""
    run, tok = plan.run, plan.tokenizer
    info = {**plan.run_info, "run": run.to_dict(), "model": plan.models[0].to_dict(),
            "stage_models": {s.name: m.to_dict() for s, m in zip(plan.stages, plan.models)},
            "seed": run.seed, "corpus_hash": meta["corpus_hash"], "tokenizer_hash": tok.content_hash,
            "data": {k: meta[k] for k in ("spec", "n_documents", "n_train_documents", "n_val_documents", "key") if k in meta},
            "world_size": d.world, "distributed": d.mode, "device": str(d.device), "parameters": plan.models[0].num_params(),
            "resumed_from_step": start if plan.resume_from is not None else None}
    (plan.out / "run.json").write_text(json.dumps(info, indent=2, sort_keys=True), encoding="utf-8")
