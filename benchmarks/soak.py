"""Soak test: train a tiny model for many steps in a subprocess, SIGKILL it once midway, resume, and
check that memory stays flat and ``metrics.jsonl`` holds every step exactly once.

    python benchmarks/soak.py                     # 10000 steps (a few minutes on one CPU core)
    python benchmarks/soak.py --steps 2000 --out /tmp/soak --keep

What it does:

1. ``rnope train`` (``python -m rnope``, OMP_NUM_THREADS=1) on the built-in corpus, checkpointing every
   ``--save-every`` steps; polls the process's RSS (psutil if installed, else /proc/PID/status) and
   the last step in ``metrics.jsonl`` every ``--poll`` seconds;
2. SIGKILLs it once ``--kill-at`` steps are logged (default: half-way; the kill may land anywhere,
   mid-checkpoint included);
3. resumes with ``--resume`` and runs to the end;
4. checks ``metrics.jsonl``: steps 1..N each have exactly one row with a loss, no step number
   appears twice, and the final checkpoint ``step_N`` is complete;
5. prints RSS at the start (first sample after ``--warmup`` steps of each process, past the
   allocator's warm-up) and at the end of each process, and the verdict: flat if the growth within
   each process is at most ``--tolerance`` (5%).

Exit code 0 when every check passes, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODEL = ["--preset", "rnope-swa", "--model.d_model", "32", "--model.d_ff", "64", "--model.n_layer", "2",
         "--model.window", "16", "--seq-len", "384", "--batch-size", "1"]


def rss_bytes(pid: int) -> int | None:
    """Resident set size of ``pid`` (None once it has exited)."""
    try:
        import psutil

        try:
            return psutil.Process(pid).memory_info().rss
        except psutil.Error:
            return None
    except ImportError:
        pass
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        return None
    return None


def last_step(metrics: Path) -> int:
    """The highest step with a loss in ``metrics.jsonl`` so far (0 if none)."""
    try:
        with open(metrics, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 4096))
            tail = f.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return 0
    for line in reversed(tail):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a partial line
        if isinstance(row, dict) and "loss" in row:
            return int(row["step"])
    return 0


def run_phase(cmd: list[str], env: dict, metrics: Path, *, kill_at: int | None, warmup: int, poll: float, log) -> dict:
    """Run ``cmd``; sample (time, step, rss) until it exits, or SIGKILL it at ``kill_at`` steps."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=log, cwd=REPO)
    samples: list[tuple[float, int, int]] = []
    killed_at = None
    while proc.poll() is None:
        rss, step = rss_bytes(proc.pid), last_step(metrics)
        if rss is not None:
            samples.append((time.perf_counter() - t0, step, rss))
        if kill_at is not None and step >= kill_at:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            killed_at = step
            break
        time.sleep(poll)
    code = proc.wait()
    first_step = samples[0][1] if samples else 0
    steady = [s for s in samples if s[1] >= first_step + warmup] or samples[-1:]
    return {"code": code, "killed_at": killed_at, "wall_s": time.perf_counter() - t0, "samples": samples,
            "rss_start": steady[0][2] if steady else None, "rss_end": samples[-1][2] if samples else None,
            "step_start": steady[0][1] if steady else None, "step_end": samples[-1][1] if samples else None}


def check_metrics(metrics: Path, steps: int) -> list[str]:
    """Problems with ``metrics.jsonl``: each step 1..steps exactly once with a loss, no duplicates."""
    problems, seen, losses = [], {}, {}
    for n, line in enumerate(metrics.read_text(encoding="utf-8").splitlines(), 1):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            problems.append(f"line {n} is not JSON (a torn write survived the resume)")
            continue
        s = row.get("step")
        seen[s] = seen.get(s, 0) + 1
        if "loss" in row:
            losses[s] = losses.get(s, 0) + 1
    dup = sorted(s for s, c in seen.items() if c > 1)
    if dup:
        problems.append(f"{len(dup)} step(s) appear more than once, e.g. {dup[:5]}")
    missing = [s for s in range(1, steps + 1) if s not in losses]
    if missing:
        problems.append(f"{len(missing)} step(s) have no loss row, e.g. {missing[:5]}")
    extra = sorted(s for s in losses if not (isinstance(s, int) and 1 <= s <= steps))
    if extra:
        problems.append(f"rows for steps outside 1..{steps}: {extra[:5]}")
    return problems


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=10000, help="optimizer steps in all (default 10000)")
    ap.add_argument("--kill-at", type=int, default=None, help="SIGKILL once this many steps are logged (default: half)")
    ap.add_argument("--save-every", type=int, default=250, help="checkpoint cadence (default 250)")
    ap.add_argument("--warmup", type=int, default=200, help="steps of each process before the start RSS sample (default 200)")
    ap.add_argument("--tolerance", type=float, default=0.05, help="allowed RSS growth within a process (default 0.05)")
    ap.add_argument("--poll", type=float, default=0.5, help="seconds between samples (default 0.5)")
    ap.add_argument("--out", default=None, help="run directory (default: a temporary one, removed unless --keep)")
    ap.add_argument("--keep", action="store_true", help="keep the run directory")
    ap.add_argument("--json", default=None, help="also write the result (and every RSS sample) to this JSON file")
    args = ap.parse_args(argv)
    if args.steps < 4:
        ap.error("--steps must be >= 4")
    kill_at = args.kill_at if args.kill_at is not None else args.steps // 2
    if not 1 <= kill_at < args.steps:
        ap.error(f"--kill-at must be in [1, {args.steps})")

    tmp = None
    if args.out is None:
        tmp = tempfile.mkdtemp(prefix="rnope-soak-")
        out = Path(tmp) / "run"
    else:
        out = Path(args.out)
        if out.exists():
            ap.error(f"--out '{out}' exists; give a new directory")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "RNOPE_CACHE": str(out.parent / (out.name + "-cache"))}
    cmd = [sys.executable, "-m", "rnope", "train", *MODEL, "--max-steps", str(args.steps), "--save-every", str(args.save_every),
           "--eval-every", "0", "--eval-batches", "1", "--out", str(out)]
    metrics = out / "metrics.jsonl"
    log_path = out.parent / (out.name + "-stderr.log")
    out.parent.mkdir(parents=True, exist_ok=True)
    print(f"soak: {args.steps} steps, SIGKILL at step {kill_at}, run {out}", flush=True)
    with open(log_path, "wb") as log:
        a = run_phase(cmd, env, metrics, kill_at=kill_at, warmup=args.warmup, poll=args.poll, log=log)
        ckpts = sorted(int(p.name[5:]) for p in (out / "checkpoints").glob("step_*") if p.name[5:].isdigit())
        print(f"phase 1: killed at step {a['killed_at']} after {a['wall_s']:.0f} s (exit {a['code']}); "
              f"checkpoints on disk: {ckpts}", flush=True)
        b = run_phase(cmd + ["--resume"], env, metrics, kill_at=None, warmup=args.warmup, poll=args.poll, log=log)
        print(f"phase 2: resumed, exit {b['code']} after {b['wall_s']:.0f} s", flush=True)

    problems = []
    if a["killed_at"] is None:
        problems.append(f"phase 1 ended (exit {a['code']}) before step {kill_at}: see {log_path}")
    if b["code"] != 0:
        problems.append(f"the resumed run exited {b['code']}: see {log_path}")
    final = out / "checkpoints" / f"step_{args.steps}"
    if not (final / "model.safetensors").is_file() or not (final / "trainer_state.json").is_file():
        problems.append(f"final checkpoint {final} is incomplete")
    metric_problems = check_metrics(metrics, args.steps) if metrics.exists() else ["no metrics.jsonl"]
    problems += metric_problems
    try:
        resumed = json.loads((out / "run.json").read_text()).get("resumed_from_step")
    except (OSError, ValueError):
        resumed = None

    mib = 2**20
    flat = True
    for name, ph in (("phase 1 (to the kill)", a), ("phase 2 (resumed)", b)):
        if ph["rss_start"] is None:
            problems.append(f"{name}: no RSS samples")
            flat = False
            continue
        growth = ph["rss_end"] / ph["rss_start"] - 1
        ok = growth <= args.tolerance
        flat &= ok
        print(f"{name}: RSS {ph['rss_start'] / mib:.1f} MiB at step {ph['step_start']} -> {ph['rss_end'] / mib:.1f} MiB "
              f"at step {ph['step_end']} ({growth:+.1%}; {'flat' if ok else 'GROWS'})")
    if not flat:
        problems.append(f"RSS grew more than {args.tolerance:.0%} within a process")
    print(f"kill/resume: killed at step {a['killed_at']}, resumed from checkpoint step {resumed}, "
          f"metrics.jsonl: {'every step exactly once' if not metric_problems else 'BROKEN'}")
    verdict = "PASS" if not problems else "FAIL"
    print(f"verdict: {verdict}" + "".join(f"\n  - {p}" for p in problems))
    if args.json:
        Path(args.json).write_text(json.dumps({"steps": args.steps, "kill_at": kill_at, "phases": [a, b],
                                               "resumed_from_step": resumed, "problems": problems, "verdict": verdict}, indent=1))
    if tmp is not None and not args.keep:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
