"""Run a study: tokenizer, trainings (subprocesses, resumable, ``--jobs`` in parallel), evaluation
and analysis per model (cached per model), then ``results.json`` + ``REPORT.md``."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
import yaml

from ..config import merge_overrides
from ..outputs import atomic_write_text, safe_name
from .profiles import ModelSpec, Profile

STUDY_FILE = "study.json"
# evaluation item seeds, the same for every training seed: a table's ± is the spread over training
# seeds alone, not over different needles, texts and RULER items as well
EVAL_SEEDS = {"niah": 1000, "ruler": 2000, "ppl": 0, "analysis": 3000}


class Study:
    def __init__(self, profile: Profile, out: Path, *, jobs: int, seeds: int, device: str, progress: bool = True):
        self.p, self.out, self.jobs, self.seeds, self.device = profile, out, jobs, seeds, device
        self.progress = progress
        self.t0 = time.time()
        self._said: set[str] = set()
        self.lock = None  # OutLock of ``out`` (claim_dir), released by :meth:`close`
        self.code = None
        self._procs: set[subprocess.Popen] = set()  # live trainings, stopped cleanly if the study is interrupted
        self._stopping = False

    def close(self) -> None:
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def stamp(self) -> dict[str, Any]:
        """What every cached result records: the study's profile hash and the code that produced it."""
        from ..outputs import code

        return {"profile_hash": self.p.hash(), "code": self.code or code()}

    def check_stamp(self, what: str, doc: dict) -> None:
        """Refuse (one line) a cached result of another profile or other code."""
        mine, got = self.stamp(), {"profile_hash": doc.get("profile_hash"), "code": doc.get("code")}
        if got["profile_hash"] != mine["profile_hash"] or (got["code"] or {}).get("source") != mine["code"]["source"]:
            raise ValueError(f"{what} comes from another study or other code (profile {got['profile_hash']}, source "
                             f"{(got['code'] or {}).get('source')}; this study: profile {mine['profile_hash']}, source "
                             f"{mine['code']['source']}); results are never mixed: choose a new --out")

    # ---- bookkeeping --------------------------------------------------------------------------
    def say(self, msg: str) -> None:
        if self.progress:
            el = time.time() - self.t0
            print(f"[reproduce {el / 60:5.1f} min] {msg}", file=sys.stderr, flush=True)

    def say_once(self, msg: str) -> None:
        """``say``, but a message every model would repeat (a skipped RULER length) only once."""
        if msg not in self._said:
            self._said.add(msg)
            self.say(msg)

    def claim_dir(self) -> None:
        """Lock ``out`` against a second writer, then create it or check it holds this very study: the
        same profile hash and the same code (results of two code versions are never mixed)."""
        from ..outlock import OutLock
        from ..outputs import code

        out, h = self.out, self.p.hash()
        if out.exists() and not out.is_dir():
            raise ValueError(f"--out '{out}' exists and is not a directory")
        if out.parent.is_dir():
            self.lock = OutLock(out, say=lambda m: print(m, file=sys.stderr, flush=True))
        self.code = code()
        marker = out / STUDY_FILE
        if out.exists() and any(out.iterdir()):
            if not marker.exists():
                raise ValueError(f"--out '{out}' is not empty and holds no rnope study; choose a new directory")
            try:
                got = json.loads(marker.read_text()).get("hash")
            except (OSError, ValueError, AttributeError):
                raise ValueError(f"{marker} is unreadable or not a study marker; choose a new directory") from None
            if got != h:
                raise ValueError(f"--out '{out}' holds a different study (config hash {got}, this one {h}); choose a new directory")
            src = (json.loads(marker.read_text()).get("code") or {}).get("source")
            if src != self.code["source"]:
                raise ValueError(f"--out '{out}' holds a study run by other rnope code (source {src}, this code "
                                 f"{self.code['source']}); results of two code versions are never mixed: choose a new directory")
        out.mkdir(parents=True, exist_ok=True)
        if self.lock is None:
            self.lock = OutLock(out, say=lambda m: print(m, file=sys.stderr, flush=True))
        self.started, self.active_before = time.time(), 0.0
        if marker.exists():
            old = json.loads(marker.read_text())
            self.started = old.get("started", self.started)
            self.active_before = float(old.get("active_seconds", 0.0))
        self._write_marker(self.active_before)

    def _write_marker(self, active: float) -> None:
        atomic_write_text(self.out / STUDY_FILE, json.dumps(
            {"hash": self.p.hash(), "started": self.started, "active_seconds": active, "code": self.code,
             "profile": self.p.to_dict(), "seeds": self.seeds}, indent=1, default=str))

    def active_seconds(self) -> float:
        """Wall time this study has run, summed over its invocations (not the idle time between resumes)."""
        return self.active_before + time.time() - self.t0

    def record_time(self) -> None:
        """Add this invocation's wall time to the marker (called once, when the invocation ends)."""
        self._write_marker(self.active_seconds())

    def run_names(self) -> list[tuple[ModelSpec, int, str]]:
        return [(m, s, self.seed_name(m.name, s)) for m in self.p.models for s in range(self.seeds)]

    def seed_name(self, row: str, seed: int) -> str:
        return row if self.seeds == 1 else f"{row}#seed{seed}"

    def eval_rows(self) -> list[tuple[ModelSpec, int, str, str, str | None]]:
        """``(spec, seed, name, run, nope_scale)`` of every row the study scores: its models, then its
        conversions and the rows scored with an inference-time NoPE scale (:mod:`.conversions`)."""
        rows = [(m, s, n, n, None) for m, s, n in self.run_names()]
        if self.p.conversions or self.p.nope_scales:
            from .conversions import extra_rows

            rows += extra_rows(self)
        return rows

    # ---- tokenizer ----------------------------------------------------------------------------
    def tokenizer(self):
        from ..data import builtin_documents, split_documents
        from ..tokenizer import Tokenizer

        path = self.out / "tokenizer.json"
        if not path.exists():
            pairs = " with two-digit number tokens" if self.p.digit_pairs else ""
            self.say(f"training a {self.p.vocab_size}-token BPE tokenizer{pairs} on the built-in prose (training split)")
            train, _ = split_documents(builtin_documents("prose"))
            Tokenizer.train_bpe(train, self.p.vocab_size, digit_pairs=self.p.digit_pairs).save(path)
        return Tokenizer.load(path)

    # ---- training -----------------------------------------------------------------------------
    def run_config(self, spec: ModelSpec, seed: int) -> dict[str, Any]:
        p = self.p
        model = dict(n_layer=p.n_layer, d_model=p.d_model, n_head=p.n_head, n_kv_head=p.n_kv_head, d_ff=p.d_ff,
                     window=p.window, chunk_size=p.window, vocab_size=p.vocab_size, max_seq_len=p.seq_len,
                     init_std=p.init_std, **spec.model)
        long_model = merge_overrides(spec.long_model)  # a copy, options nested
        rope = long_model.get("rope", {})
        if rope.get("scaling", "none") != "none":  # a RoPE extension from the pretraining length
            long_model["rope"] = {**rope, "original_len": rope.get("original_len", p.seq_len)}
        stages = [
            {"name": "near", "steps": p.near_steps, "seq_len": p.near_seq_len, "synthetic_ratio": 1.0,
             "synthetic_kinds": ["lookup_near"]},
            {"name": "mix", "steps": p.mix_steps, "seq_len": p.seq_len, "lr": p.mix_lr,
             "synthetic_ratio": p.mix_synthetic_ratio},
            {"name": "long", "steps": p.long_steps, "seq_len": p.seq_len * p.long_factor, "short_seq_len": p.seq_len,
             "long_ratio": 0.25, "synthetic_ratio": p.long_synthetic_ratio, "lr": p.long_lr,
             "warmup": max(1, p.long_steps // 10), **({"model": long_model} if long_model else {})},
        ]
        return {
            "preset": spec.preset, "model": model, "data": "builtin", "tokenizer": str(self.out / "tokenizer.json"),
            "cache_dir": str(self.out / "cache"), "seed": seed, "batch_size": p.batch_size, "lr": p.lr,
            "min_lr": p.lr / 10, "synthetic_ratio": p.mix_synthetic_ratio, "synthetic_kinds": list(p.mix_kinds),
            "eval_every": 0, "save_every": 500, "keep": 1, "stages": stages,
        }

    def train_one(self, spec: ModelSpec, seed: int, name: str, threads: int, config=None) -> float:
        """Train run ``name`` in a subprocess: ``spec``'s recipe (:meth:`run_config`), or ``config()`` --
        a callable returning the run config, called only when the run is not done yet."""
        run_dir = self.out / "runs" / safe_name(name)
        done = run_dir / "DONE"
        if done.exists():
            self.check_stamp(str(done), json.loads(done.read_text()))
            return 0.0
        run_dir.parent.mkdir(parents=True, exist_ok=True)
        cfg = self.out / "runs" / f"{safe_name(name)}.yaml"
        cfg.write_text(yaml.safe_dump(self.run_config(spec, seed) if config is None else config(), sort_keys=False))
        cmd = [sys.executable, "-m", "rnope", "train", "--config", str(cfg), "--out", str(run_dir)]
        if (run_dir / "checkpoints").exists():
            cmd.append("--resume")
        # the training stops (saving a checkpoint) when this process dies, however it dies
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "RNOPE_THREADS": str(threads),
               "RNOPE_STOP_WITH_PARENT": str(os.getpid())}
        t = time.time()
        log = run_dir.with_suffix(".log")
        if self._stopping:
            raise KeyboardInterrupt
        with open(log, "w") as f:
            proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)
            self._procs.add(proc)
            try:
                code = proc.wait()
            finally:
                self._procs.discard(proc)
        if code != 0:
            tail = log.read_text().strip().splitlines()[-1:] or ["(no output)"]
            raise RuntimeError(f"training {name} failed (exit {code}; log {log}): {tail[0]}")
        if self._stopping or not _finished(run_dir):
            raise KeyboardInterrupt  # stopped by a signal: its checkpoint is saved, a re-run resumes it
        secs = time.time() - t
        done.write_text(json.dumps({"seconds": secs, **self.stamp()}))
        return secs

    def stop_trainings(self) -> None:
        """SIGTERM every live training (each saves a checkpoint and exits) and wait for them."""
        self._stopping = True
        for proc in list(self._procs):
            if proc.poll() is None:
                proc.terminate()
        for proc in list(self._procs):
            try:
                proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                proc.kill()

    def train_all(self) -> None:
        """Train every model of the profile, then every conversion (from its trained parent)."""
        self._train_many([(m, s, n, None) for m, s, n in self.run_names()], "model(s)")
        if self.p.conversions:
            from .conversions import conversion_jobs

            self._train_many(conversion_jobs(self), "conversion(s)")

    def _train_many(self, runs: list, what: str) -> None:
        """Train ``runs`` ((spec, seed, name, config or None), see :meth:`train_one`) not done yet, ``jobs`` at a time."""
        todo = [r for r in runs if not (self.out / "runs" / safe_name(r[2]) / "DONE").exists()]
        if not todo:
            return
        jobs = max(1, min(self.jobs, len(todo)))
        cores = os.cpu_count() or 2
        self.say(f"training {len(todo)} {what}, {jobs} at a time, {max(1, cores // jobs)} thread(s) each")
        finished, done_secs = 0, []
        with ThreadPoolExecutor(jobs) as pool:  # starts its tasks in submission order
            futures = {pool.submit(self.train_one, m, s, n, launch_threads(i, len(todo), jobs, cores), c): n
                       for i, (m, s, n, c) in enumerate(todo)}
            for fut in futures:
                try:
                    secs = fut.result()
                except BaseException:  # an interrupt, or one training failed: stop the others cleanly
                    self.stop_trainings()
                    raise
                finished += 1
                done_secs.append(secs)
                eta = training_eta(done_secs, len(todo) - finished, jobs)
                self.say(f"trained {futures[fut]} ({secs:.0f} s); {finished}/{len(todo)} done, training ETA {eta / 60:.1f} min")

    # ---- evaluation ---------------------------------------------------------------------------
    def evaluate_one(self, spec: ModelSpec, seed: int, name: str, threads: int | None = None, run: str | None = None,
                     nope_scale: str | None = None) -> dict[str, Any]:
        """Score row ``name``: the trained run ``run`` (default: ``name``), its NoPE layers scaled by
        ``nope_scale`` (:func:`.conversions.scale_model`) when given."""
        path = self.out / "evals" / f"{safe_name(name)}.json"
        if path.exists():
            doc = json.loads(path.read_text())
            self.check_stamp(str(path), doc)
            return doc
        from ..analysis import analyze
        from ..evals import niah as niah_eval
        from ..evals import ppl as ppl_eval
        from ..evals import ruler as ruler_eval
        from ..evals.report import write_outputs
        from ..data.heldout import heldout_prose
        from ..evals.predictor import load_predictor

        torch.set_num_threads(threads or max(1, os.cpu_count() or 1))
        p, L = self.p, self.p.seq_len
        run_dir = self.out / "runs" / safe_name(run or name)
        pred = load_predictor(str(run_dir), name=name, device=self.device, batch_size=4)
        pred.train_seq_len = L  # the pre-training length: NIAH "beyond training length" is measured from it
        model, tok = pred.model, pred.tokenizer
        fig_dir = self.out / "figures"
        self.check_stamp(str(run_dir / "DONE"), json.loads((run_dir / "DONE").read_text()))
        res: dict[str, Any] = {**self.stamp(), "train_seq_len": L, "seed": seed, "eval_seeds": EVAL_SEEDS, "preset": spec.preset,
                               "parameters": model.num_params()}
        if nope_scale is not None:
            from .conversions import scale_model

            res["nope_scale"] = scale_model(model, tok, nope_scale, p.long_factor * L)
        res["config"] = model.config.to_dict()
        res["val_loss"] = validation_loss(model, self.out / "cache", tok, L)
        lengths = [f * L for f in p.niah_factors]
        res["niah"], res["niah_cells"] = {}, {}
        for col in p.niah_columns:
            wording, haystack = col.split("/")
            doc = niah_eval.evaluate([pred], lengths=lengths, depths=list(p.niah_depths), samples=p.niah_samples,
                                     seed=EVAL_SEEDS["niah"], haystack=haystack, wording=wording, progress=False)
            if col == p.primary:  # heat maps of the column the verdicts read
                write_outputs(fig_dir, {k: v for k, v in niah_eval.outputs(doc).items() if k.endswith(".png")})
            cells = doc["results"][0]["cells"]
            res["niah"][col] = {str(n): _mean(c["accuracy"] for c in cells if c["length"] == n) for n in lengths}
            res["niah_cells"][col] = cells
        essay = heldout_prose()
        # RULER: at each length, the tasks whose template fits it (RULER's templates need ~200-400 tokens);
        # a task left out is recorded with the reason, and every mean names the tasks it covers
        res["ruler"], res["ruler_tasks"], res["ruler_skipped"], res["ruler_run"] = {}, {}, {}, {}
        for n in (f * L for f in p.ruler_factors):
            fit = []
            for t in p.ruler_tasks:
                try:
                    ruler_eval.build_items(pred, [n], [t], 1, EVAL_SEEDS["ruler"], essay=essay)
                    fit.append(t)
                except ValueError as e:
                    res["ruler_skipped"][f"{t}@{n}"] = str(e)
            if not fit:
                continue
            rdoc = ruler_eval.evaluate([pred], lengths=[n], tasks=fit, samples=p.ruler_samples, seed=EVAL_SEEDS["ruler"],
                                       essay=essay, progress=False)
            res["ruler"].update(_ruler_means(rdoc))
            res["ruler_run"][str(n)] = fit
            res["ruler_tasks"].update({f"{x['task']}@{x['length']}": x["score"] for x in rdoc["results"][0]["scores"]})
        ppl = ppl_eval.evaluate([pred], lengths=[f * L for f in p.ppl_factors], streams=4, score_tokens=min(128, L // 2),
                                seed=EVAL_SEEDS["ppl"], progress=False)
        res["ppl"] = _ppl_by_length(ppl)
        res["kv_speed"] = kv_and_decode(model, max(p.niah_factors) * L)
        analysis = analyze(model, tok, [f * L for f in p.analysis_factors], p.analysis_samples, seed=EVAL_SEEDS["analysis"], name=name)
        res["analysis"] = analysis
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(res, default=_jsonable))
        return res

    def evaluate_all(self) -> dict[str, dict]:
        """Evaluate every trained model (cached per model), ``jobs`` at a time in worker processes
        with an even share of the cores each: tiny models run faster on one thread apiece."""
        import multiprocessing

        rows = self.eval_rows()
        todo = [r for r in rows if not (self.out / "evals" / f"{safe_name(r[2])}.json").exists()]
        jobs = max(1, min(self.jobs, len(todo)))
        threads = max(1, (os.cpu_count() or 1) // jobs)
        if todo:
            self.say(f"evaluating {len(todo)} model(s), {jobs} at a time, {threads} thread(s) each")
        done = 0
        if jobs == 1:
            for m, s, n, run, scale in todo:
                t = time.time()
                self.evaluate_one(m, s, n, threads=threads, run=run, nope_scale=scale)
                done += 1
                self.say(f"evaluated {n} ({time.time() - t:.0f} s); {done}/{len(todo)}")
        else:
            from concurrent.futures import ProcessPoolExecutor
            from concurrent.futures.process import BrokenProcessPool

            ctx = multiprocessing.get_context("spawn")  # a clean interpreter: no inherited torch threads
            pool = ProcessPoolExecutor(jobs, mp_context=ctx)
            try:
                pending = {n: pool.submit(_evaluate_in_worker, self.p, str(self.out), self.seeds, self.device, m, s, n,
                                          threads, self.code, run, scale)
                           for m, s, n, run, scale in todo}
                for n, res in pending.items():
                    secs = res.result()
                    done += 1
                    self.say(f"evaluated {n} ({secs:.0f} s); {done}/{len(todo)}")
            except BrokenProcessPool:  # a worker died (e.g. it failed to start): stop, never wait on it
                raise RuntimeError(f"an evaluation worker process died before finishing; finished evaluations are kept in "
                                   f"{self.out / 'evals'} (a script that calls run_study must do so under "
                                   f"`if __name__ == \"__main__\":`, since every worker imports it again)") from None
            except BaseException:  # an interrupt: finished evaluations are on disk, unfinished ones are dropped
                for proc in (getattr(pool, "_processes", None) or {}).values():
                    proc.terminate()
                raise
            finally:
                pool.shutdown(wait=True, cancel_futures=True)
        docs = {}
        for _, _, n, _, _ in rows:
            path = self.out / "evals" / f"{safe_name(n)}.json"
            docs[n] = json.loads(path.read_text())
            self.check_stamp(str(path), docs[n])
        return docs


def _evaluate_in_worker(profile: Profile, out: str, seeds: int, device: str, spec: ModelSpec, seed: int, name: str,
                        threads: int, code: dict, run: str, nope_scale: str | None) -> float:
    t = time.time()
    study = Study(profile, Path(out), jobs=1, seeds=seeds, device=device, progress=False)
    study.code = code
    study.evaluate_one(spec, seed, name, threads=threads, run=run, nope_scale=nope_scale)
    return time.time() - t


def _finished(run_dir: Path) -> bool:
    """Whether a run's latest checkpoint is at the last step of its stages."""
    from ..train.state import STATE_JSON, latest_checkpoint

    last = latest_checkpoint(run_dir)
    if last is None:
        return False
    from ..train.runconfig import RunConfig

    state = json.loads((last / STATE_JSON).read_text(encoding="utf-8"))
    return int(state["step"]) >= RunConfig.from_dict(state["run"]).total_steps


def training_eta(done_secs: list[float], remaining: int, jobs: int) -> float:
    """Seconds until the remaining trainings finish: the mean training time so far, ``jobs`` at a time."""
    if not done_secs or remaining <= 0:
        return 0.0
    return sum(done_secs) / len(done_secs) * remaining / max(1, min(jobs, remaining))


def launch_threads(i: int, n: int, jobs: int, cores: int) -> int:
    """Threads for the ``i``-th of ``n`` trainings run ``jobs`` at a time on ``cores`` cores.

    Full rounds split the cores evenly. The ``n % jobs`` trainings of a last, partial round (7
    models, 2 at a time: the 7th) split all the cores among themselves: they start as the previous
    round finishes, and would otherwise run beside idle cores to the end of the study.
    """
    tail = n % jobs if n > jobs else 0
    if tail and i >= n - tail:
        return max(1, cores // tail)
    return max(1, cores // jobs)


# ---- measurements --------------------------------------------------------------------------------
@torch.no_grad()
def validation_loss(model, cache_dir: Path, tok, L: int, max_rows: int = 32) -> float:
    """Mean next-token loss on the held-out split of the built-in corpus at the training length."""
    from ..data import prepare_dataset
    from ..data.shards import TokenShards

    _, val_dir, _ = prepare_dataset("builtin", tok, cache_dir)
    sh = TokenShards(val_dir)
    n = min(max_rows, (len(sh) - 1) // L)
    if n < 1:
        raise ValueError(f"the validation split has {len(sh)} tokens, fewer than one sequence of {L}")
    rows = torch.from_numpy(sh.get(0, n * L + 1).astype("int64"))
    x = rows[:-1].view(n, L)
    y = rows[1:].view(n, L)
    dev = model.embed_tokens.weight.device
    total = 0.0
    for i in range(0, n, 8):
        logits = model(x[i : i + 8].to(dev)).float()
        total += torch.nn.functional.cross_entropy(logits.flatten(0, 1), y[i : i + 8].to(dev).flatten(), reduction="sum").item()
    return total / (n * L)


@torch.no_grad()
def kv_and_decode(model, length: int, new_tokens: int = 32) -> dict[str, float]:
    """Hybrid KV bytes after ``length`` tokens vs a full-attention cache, and decode tokens/s."""
    cfg = model.config
    from ..inference import Decoder, prefill

    cache = model.new_cache(1, length + new_tokens)
    per_pos = 2 * cfg.n_kv_head * cfg.head_dim * model.embed_tokens.weight.element_size()
    full = cfg.n_layer * (length + new_tokens) * per_pos
    prompt = torch.randint(3, cfg.vocab_size, (1, length), generator=torch.Generator().manual_seed(0)).tolist()
    with torch.inference_mode():
        t = time.perf_counter()
        logits = prefill(model, prompt, cache)
        prefill_s = time.perf_counter() - t
        tok = logits.argmax(-1)
        t = time.perf_counter()
        step = Decoder(model, cache)  # the decode step rnope generate runs (eager)
        for _ in range(new_tokens):
            tok = step(tok).argmax(-1)
        decode = time.perf_counter() - t
    return {"length": length, "kv_bytes": cache.nbytes, "full_kv_bytes": full, "kv_ratio": cache.nbytes / full,
            "prefill_s": prefill_s, "decode_tok_s": new_tokens / decode}


def _mean(xs) -> float:
    xs = list(xs)
    return sum(xs) / len(xs) if xs else float("nan")


def _ruler_means(doc: dict) -> dict[str, float]:
    """{length: mean score over tasks (×100)} of a ruler.json document's single model."""
    return {str(m["length"]): m["score"] for m in doc["results"][0]["means"]}


def _ppl_by_length(doc: dict) -> dict[str, float]:
    return {str(x["length"]): x["ppl"] for x in doc["results"][0]["points"]}


def _jsonable(x):
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if hasattr(x, "tolist"):
        return x.tolist()
    return str(x)
