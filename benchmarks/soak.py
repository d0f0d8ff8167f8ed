"""Soak under faults: train a tiny model for many steps in subprocesses while things go wrong, and
check that nothing is lost, nothing is counted twice, memory stays flat and the result is exact.

    python benchmarks/soak.py                     # 2000 steps (a few minutes on one CPU core)
    python benchmarks/soak.py --steps 10000 --save-every 250 --out /tmp/soak --keep

What it does (``rnope train``, OMP_NUM_THREADS=1, the built-in corpus, a checkpoint every
``--save-every`` steps; RSS via psutil or /proc/PID/status and the last logged step are sampled every
``--poll`` seconds):

1. trains and SIGKILLs the process a quarter of the way in (between two checkpoints);
2. flips one byte in the weights of the newest checkpoint, then resumes: the resume must name that
   checkpoint, fall back to the one before and go on. Half-way, the checkpoint write hits a full disk
   (ENOSPC, injected in the child): the run must stop with one line naming the checkpoint and the
   cause, and leave no partial checkpoint;
3. resumes again and SIGKILLs it three quarters of the way in;
4. resumes to the end;
5. trains the same run uninterrupted (the reference; ``--no-reference`` skips it).

Checks: every step 1..N has exactly one row in ``metrics.jsonl``; the final weights equal the
reference's bit for bit; RSS grows at most ``--tolerance`` (5%) within each process, measured from
``--warmup`` steps after its start. Exit code 0 when every check passes, 1 otherwise.
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


# The training process, with one fault injected on request: SOAK_FAIL_SAVE_AT=N makes the write of checkpoint
# step_N raise ENOSPC (a full disk) once, as the operating system would.
CHILD = """
import errno, os, sys
import safetensors.torch as st
fail = os.environ.get("SOAK_FAIL_SAVE_AT")
if fail:
    real = st.save_file
    def save_file(tensors, filename, *a, **k):
        if f".tmp-step_{fail}" in str(filename):
            raise OSError(errno.ENOSPC, "No space left on device", str(filename))
        return real(tensors, filename, *a, **k)
    st.save_file = save_file
from rnope.cli import main
sys.exit(main(sys.argv[1:]))
"""


def corrupt_newest(out: Path) -> str:
    """Flip one byte of the newest checkpoint's weights (inside tensor data: safetensors alone would load it)."""
    ckpts = sorted((int(p.name[5:]), p) for p in (out / "checkpoints").glob("step_*") if p.name[5:].isdigit())
    step, d = ckpts[-1]
    w = d / "model.safetensors"
    raw = bytearray(w.read_bytes())
    raw[len(raw) - 7] ^= 0x10
    w.write_bytes(bytes(raw))
    return d.name


def final_weights_equal(a: Path, b: Path) -> bool:
    from safetensors.torch import load_file

    import torch

    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=2000, help="optimizer steps in all (default 2000)")
    ap.add_argument("--save-every", type=int, default=100, help="checkpoint cadence (default 100)")
    ap.add_argument("--warmup", type=int, default=100, help="steps of each process before its start RSS sample (default 100)")
    ap.add_argument("--tolerance", type=float, default=0.05, help="allowed RSS growth within a process (default 0.05)")
    ap.add_argument("--poll", type=float, default=0.5, help="seconds between samples (default 0.5)")
    ap.add_argument("--no-reference", action="store_true", help="skip the uninterrupted reference run (no weight comparison)")
    ap.add_argument("--out", default=None, help="run directory (default: a temporary one, removed unless --keep)")
    ap.add_argument("--keep", action="store_true", help="keep the run directory")
    ap.add_argument("--json", default=None, help="also write the result (and every RSS sample) to this JSON file")
    args = ap.parse_args(argv)
    if args.steps < 8 * args.save_every:
        ap.error(f"--steps must be >= 8 x --save-every ({8 * args.save_every}): the faults need checkpoints between them")
    N, every = args.steps, args.save_every
    kill1, kill2 = N // 4 + every // 2, 3 * N // 4 + every // 2  # between two checkpoints
    fail_at = (N // 2 // every) * every  # the save that hits a full disk

    tmp = None
    if args.out is None:
        tmp = tempfile.mkdtemp(prefix="rnope-soak-")
        out = Path(tmp) / "run"
    else:
        out = Path(args.out)
        if out.exists():
            ap.error(f"--out '{out}' exists; give a new directory")
    ref = out.parent / (out.name + "-reference")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "RNOPE_CACHE": str(out.parent / (out.name + "-cache"))}
    env.pop("SOAK_FAIL_SAVE_AT", None)
    train = ["train", *MODEL, "--max-steps", str(N), "--save-every", str(every), "--eval-every", "0", "--eval-batches", "1"]
    cmd = [sys.executable, "-c", CHILD, *train, "--out", str(out)]
    metrics = out / "metrics.jsonl"
    log_path = out.parent / (out.name + "-stderr.log")
    out.parent.mkdir(parents=True, exist_ok=True)
    print(f"soak: {N} steps; SIGKILL at step {kill1}, corrupt the newest checkpoint, a full disk at the step-{fail_at} "
          f"save, SIGKILL at step {kill2}, then to the end; run {out}", flush=True)
    phases, problems = [], []
    with open(log_path, "wb") as log:
        def phase(name, kill_at=None, extra=(), fail=None):
            e = {**env, **({"SOAK_FAIL_SAVE_AT": str(fail)} if fail else {})}
            log.write(f"---- {name}\n".encode())
            log.flush()
            r = run_phase(cmd + list(extra), e, metrics, kill_at=kill_at, warmup=args.warmup, poll=args.poll, log=log)
            r["name"] = name
            phases.append(r)
            ckpts = sorted(int(p.name[5:]) for p in (out / "checkpoints").glob("step_*") if p.name[5:].isdigit())
            print(f"{name}: exit {r['code']} at step {r['step_end']} after {r['wall_s']:.0f} s; checkpoints {ckpts}", flush=True)
            return r

        a = phase("1 train, SIGKILL", kill_at=kill1)
        bad = corrupt_newest(out)
        print(f"corrupted {bad}/model.safetensors (one flipped byte)", flush=True)
        b = phase("2 resume past the corrupt checkpoint; the save hits a full disk", extra=["--resume"], fail=fail_at)
        c = phase("3 resume, SIGKILL", kill_at=kill2, extra=["--resume"])
        d = phase("4 resume to the end", extra=["--resume"])
        if not args.no_reference:
            t0 = time.perf_counter()
            r = subprocess.run([sys.executable, "-m", "rnope", *train, "--out", str(ref)], env=env, stdout=subprocess.DEVNULL,
                               stderr=log, cwd=REPO)
            print(f"reference: uninterrupted run, exit {r.returncode} after {time.perf_counter() - t0:.0f} s", flush=True)
    err = log_path.read_text(errors="replace")

    if a["killed_at"] is None:
        problems.append(f"phase 1 ended (exit {a['code']}) before step {kill1}")
    if f"rnope: {bad} does not verify (" not in err:
        problems.append(f"the resume did not report the corrupt {bad}")
    if b["code"] != 2 or f"cannot write checkpoint '{out / 'checkpoints' / f'step_{fail_at}'}': No space left on device" not in err:
        problems.append(f"phase 2 did not stop with one line at the failed step-{fail_at} save (exit {b['code']})")
    if (out / "checkpoints" / f".tmp-step_{fail_at}").exists():
        problems.append("a partial checkpoint directory was left behind")
    if c["killed_at"] is None:
        problems.append(f"phase 3 ended (exit {c['code']}) before step {kill2}")
    if d["code"] != 0:
        problems.append(f"the last phase exited {d['code']}")
    final = out / "checkpoints" / f"step_{N}"
    if not (final / "model.safetensors").is_file():
        problems.append(f"final checkpoint {final} is missing")
    metric_problems = check_metrics(metrics, N) if metrics.exists() else ["no metrics.jsonl"]
    problems += metric_problems
    same = None
    if not args.no_reference and final.is_dir():
        same = final_weights_equal(final, ref / "checkpoints" / f"step_{N}")
        if not same:
            problems.append("the final weights differ from the uninterrupted run's")

    mib = 2**20
    flat = True
    for ph in phases:
        if ph["rss_start"] is None or ph["step_end"] is None or ph["step_end"] - (ph["step_start"] or 0) < args.warmup:
            print(f"phase {ph['name']}: too short for an RSS reading")
            continue
        growth = ph["rss_end"] / ph["rss_start"] - 1
        ok = growth <= args.tolerance
        flat &= ok
        print(f"phase {ph['name']}: RSS {ph['rss_start'] / mib:.1f} MiB at step {ph['step_start']} -> {ph['rss_end'] / mib:.1f} MiB "
              f"at step {ph['step_end']} ({growth:+.1%}; {'flat' if ok else 'GROWS'})")
    if not flat:
        problems.append(f"RSS grew more than {args.tolerance:.0%} within a process")
    print(f"metrics.jsonl: {'every step exactly once' if not metric_problems else 'BROKEN'}; final weights "
          f"{'equal to' if same else 'NOT equal to' if same is False else 'not compared with'} the uninterrupted run's")
    verdict = "PASS" if not problems else "FAIL"
    print(f"verdict: {verdict}" + "".join(f"\n  - {p}" for p in problems))
    if args.json:
        Path(args.json).write_text(json.dumps({"steps": N, "kills": [kill1, kill2], "corrupted": bad, "failed_save": fail_at,
                                               "phases": phases, "weights_equal": same, "problems": problems,
                                               "verdict": verdict}, indent=1))
    if tmp is not None and not args.keep:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
