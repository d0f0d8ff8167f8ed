"""``rnope reproduce``: the paper's study at laptop scale in one command, written up as REPORT.md."""

from __future__ import annotations

import argparse
import signal
import sys
import threading

NAME = "reproduce"
HELP = "train the paper's variants under one budget, evaluate and analyse them, write DIR/REPORT.md"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--profile", default="quick",
                   help="quick (default; rope, nope, rnope-swa, swa x 2 seeds, ~13 min on a 2-core CPU), convert (quick's "
                        "rope and rnope-swa, rope converted to rnope-swa and to DroPE, every --nope-scale; 1x-32x), full "
                        "(the paper's 7 models x 3 seeds, 1x-16x, 9 RULER tasks; ~2 h) or smoke (seconds; for tests)")
    p.add_argument("--out", required=True, help="study directory (re-running resumes it)")
    p.add_argument("--seeds", type=int, default=None, help="seeds per model (default: the profile's)")
    p.add_argument("--jobs", type=int, default=2, help="trainings run in parallel (CPU threads are split between them)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (evaluation)")


def run(args) -> int:
    import torch

    from ..runtime import pick_device
    from ..reproduce import get_profile, run_study

    if args.seeds is not None and args.seeds < 1:  # (0 must not mean "the profile's default")
        raise ValueError(f"--seeds must be >= 1, got {args.seeds}")
    if args.jobs < 1:
        raise ValueError(f"--jobs must be >= 1, got {args.jobs}")
    pick_device(args.device)  # a bad --device fails now, not after hours of training
    profile = get_profile(args.profile, gpu=torch.cuda.is_available())
    stopped = []

    def on_term(signum, frame):  # SIGTERM as Ctrl-C: trainings save a checkpoint, finished results stay
        stopped.append(signum)
        raise KeyboardInterrupt

    main_thread = threading.current_thread() is threading.main_thread()  # signals reach the main thread only
    prev = signal.signal(signal.SIGTERM, on_term) if main_thread else None
    try:
        report = run_study(profile, args.out, jobs=args.jobs, seeds=args.seeds, device=args.device)
    except KeyboardInterrupt:
        print(f"rnope: study stopped by {'SIGTERM' if stopped else 'SIGINT'}; finished trainings and evaluations are "
              f"kept, the same command resumes it", file=sys.stderr)
        return 143 if stopped else 130
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, prev)
    print(report)
    return 0
