"""``rnope reproduce``: the paper's study at laptop scale — train, evaluate, analyse, report.

See :mod:`rnope.reproduce.profiles` for the recipe and :func:`run_study` for the pipeline.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .profiles import PROFILES, Profile, get_profile
from .report import build_results, figures, render

__all__ = ["PROFILES", "Profile", "get_profile", "run_study"]


def run_study(profile: Profile, out: str | os.PathLike, *, jobs: int = 2, seeds: int | None = None,
              device: str = "auto", progress: bool = True) -> Path:
    """Run (or resume) a study into ``out``; returns the path of ``REPORT.md``.

    The evaluation runs in spawned worker processes, each of which imports the calling script again:
    call this under ``if __name__ == "__main__":`` (a call made while a worker starts is refused).
    """
    import multiprocessing

    import torch

    if getattr(multiprocessing.current_process(), "_inheriting", False):  # the flag spawn sets while a child imports __main__
        raise RuntimeError("run_study was called while a worker process was starting: the calling script runs again in "
                           "every evaluation worker; call run_study under `if __name__ == \"__main__\":`")

    from ..outputs import atomic_write_text, machine, safe_name
    from .runner import Study

    from .conversions import check_profile

    check_profile(profile)
    seeds = profile.seeds if seeds is None else seeds
    if seeds < 1:
        raise ValueError(f"--seeds must be >= 1, got {seeds}")
    if jobs < 1:
        raise ValueError(f"--jobs must be >= 1, got {jobs}")
    study = Study(profile, Path(out), jobs=jobs, seeds=seeds, device=device, progress=progress)
    try:
        study.claim_dir()
    except BaseException:
        study.close()
        raise
    try:
        tok = study.tokenizer()
        from ..data import prepare_dataset

        # tokenized once here, before the parallel trainings that all read it
        _, _, meta = prepare_dataset("builtin", tok, study.out / "cache")
        study.train_all()
        evals = study.evaluate_all()
        runs = [json.loads((study.out / "runs" / safe_name(n) / "DONE").read_text())
                for n in dict.fromkeys(r[3] for r in study.eval_rows())]
        setup = {
            "seeds": seeds,
            "minutes": study.active_seconds() / 60,  # wall time of all its invocations (resumes included, gaps not)
            "train_seconds": sum(r.get("seconds", 0) for r in runs),
            "machine": ", ".join(f"{k} {v}" for k, v in machine("summary").items() if v is not None),
            "corpus_hash": meta.get("corpus_hash"),
            "tokens_per_model": profile.tokens_per_model(),
            "threads": torch.get_num_threads(),
            # every model scored on the same items (evaluations cached by an older rnope drew them per seed)
            "fixed_eval_items": all("eval_seeds" in e for e in evals.values()),
        }
        models = {n for _, _, n in study.run_names()}
        results = build_results(profile, {n: e for n, e in evals.items() if n in models}, setup)
        extra = {n: e for n, e in evals.items() if n not in models}
        if extra:  # conversions and NoPE-scaled rows: their own section (reproduce.conversions)
            results["conversions"] = build_results(profile, extra, setup)["models"]
        atomic_write_text(study.out / "results.json", json.dumps(results, indent=1, default=str))
        figures(results, profile, study.out / "figures")
        report = study.out / "REPORT.md"
        atomic_write_text(report, render(results, profile))
        study.say(f"wrote {report}")
    finally:
        study.record_time()
        study.close()
    return report
