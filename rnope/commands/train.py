"""``rnope train``: train a preset on a corpus (stages, checkpoints, exact resume, torchrun DDP/FSDP),
or continue from a checkpoint's weights (``--init``, e.g. one ``rnope convert`` wrote).

Everything is validated before ``--out`` is created: a bad flag, config key, preset, data path,
sequence length, tokenizer, or a resume whose model config differs gives one line
``rnope: error: ...`` and exit code 2 with nothing written. See :mod:`rnope.train`.
"""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

NAME = "train"
HELP = "train a model: --preset NAME (or --init CKPT) --out DIR [--config run.yaml] [--resume] [--model.FIELD VALUE ...]"

# flag -> (RunConfig field, kind); every flag defaults to None so only explicit ones override
_FLAGS = {
    "--data": ("data", str),
    "--tokenizer": ("tokenizer", str),
    "--cache-dir": ("cache_dir", str),
    "--max-steps": ("max_steps", int),
    "--seq-len": ("seq_len", int),
    "--batch-size": ("batch_size", int),
    "--grad-accum": ("grad_accum", int),
    "--lr": ("lr", float),
    "--min-lr": ("min_lr", float),
    "--warmup": ("warmup", int),
    "--weight-decay": ("weight_decay", float),
    "--clip": ("clip", float),
    "--seed": ("seed", int),
    "--save-every": ("save_every", int),
    "--keep": ("keep", int),
    "--eval-every": ("eval_every", int),
    "--eval-batches": ("eval_batches", int),
    "--log-every": ("log_every", int),
    "--synthetic-ratio": ("synthetic_ratio", float),
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", help="model preset (see `rnope info`); taken from the run when resuming")
    p.add_argument("--out", required=True, help="run directory (metrics.jsonl, run.json, checkpoints/)")
    p.add_argument("--config", help="YAML/JSON run config (keys of rnope.train.RunConfig, stages: [...])")
    helps = {
        "--data": "corpus spec: builtin[:prose|:code], a .txt/.md/.jsonl/.parquet file, a folder, hf:PATH (default builtin)",
        "--tokenizer": "byte (default) or a tokenizer.json path",
        "--cache-dir": "token shard cache (default $RNOPE_CACHE or OUT/data)",
        "--max-steps": "optimizer steps (default 300), or a cap on the stages' total",
        "--seq-len": "tokens per sequence (single-stage runs; default 256)",
        "--batch-size": "sequences per micro-batch per process (default 16)",
        "--grad-accum": "micro-batches per optimizer step (default 1)",
        "--synthetic-ratio": "fraction of sequences that are synthetic retrieval documents (default 0.25)",
        "--keep": "checkpoints to keep (default 3)",
        "--log-every": "steps between host syncs for metrics (default 1 on CPU, 10 on GPU)",
        "--eval-every": "steps between validations (0: only at the end; default 50)",
        "--eval-batches": "validation batches (default 4)",
        "--lr": "peak learning rate (default 3e-3)",
        "--min-lr": "final learning rate of the cosine decay (default 3e-4)",
        "--warmup": "linear warm-up steps per stage (default 10%% of the stage)",
        "--weight-decay": "AdamW weight decay on matrices (default 0.1)",
        "--clip": "gradient-norm clipping, 0 = off (default 1.0)",
        "--seed": "seed of init, data order and synthetic documents (default 0)",
        "--save-every": "steps between checkpoints (0: only at the end; default 100)",
    }
    for flag, (_, kind) in _FLAGS.items():
        p.add_argument(flag, default=None, metavar=kind.__name__.upper() if kind is not str else None, help=helps.get(flag))
    p.add_argument("--compile", action="store_true", default=None, help="torch.compile the model")
    p.add_argument("--distributed", choices=("auto", "none", "ddp", "fsdp"), default=None,
                   help="auto (default): ddp under torchrun with several processes")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its latest checkpoint")
    p.add_argument("--init", metavar="CKPT", default=None,
                   help="start from this checkpoint's weights and model config (a checkpoint, run or Hugging Face "
                        "directory, e.g. from `rnope convert`): step 0, a fresh optimizer; --model.FIELD overrides "
                        "apply where the shapes stay; its tokenizer.json is used unless --tokenizer is given")
    from ..cli import MODEL_OVERRIDES_HELP

    p.epilog = MODEL_OVERRIDES_HELP
    p.set_defaults(_accepts_extra=True)


def _typed(flag: str, raw: str, kind):
    if kind is str:
        return raw
    try:
        return kind(raw)
    except ValueError:
        raise ValueError(f"{flag}: {raw!r} is not a valid {'integer' if kind is int else 'number'}") from None


def _first_difference(a, b) -> tuple[str, object, object] | None:
    """(field, a's value, b's value) of the first field two model configs differ in; options as 'rope.theta'."""
    da, db = a.to_dict(), b.to_dict()
    for k in da:
        x, y = da[k], db.get(k)
        if isinstance(x, dict) and isinstance(y, dict):
            for name in x:
                if x[name] != y.get(name):
                    return f"{k}.{name}", x[name], y.get(name)
        elif x != y:
            return k, x, y
    return None


def _check_data(spec: str) -> None:
    """The corpus exists and holds at least one document (reads only the first)."""
    from ..data import iter_documents

    if not spec.startswith(("builtin", "hf:")):
        p = Path(spec)
        if not p.exists():
            raise ValueError(f"--data '{spec}' does not exist")
        if p.is_file() and p.stat().st_size == 0:
            raise ValueError(f"--data '{spec}' is empty")
    if next(iter(iter_documents(spec)), None) is None:
        raise ValueError(f"--data '{spec}' holds no documents")


def _run_info() -> dict:
    """``run.json``'s ``git_sha``, ``hardware`` and ``versions``."""
    from ..outputs import git_commit, machine, versions

    return {"git_sha": git_commit(), "hardware": machine("run"),
            "versions": versions(("python", "torch", "rnope", "numpy", "tokenizers"))}


def build_plan(args):
    """Validate everything and return a :class:`rnope.train.Plan`; writes nothing."""
    from ..checkpoint import read_config
    from ..cli import model_overrides
    from ..config import ModelConfig, merge_overrides
    from ..outputs import check_out_dir
    from ..tokenizer import Tokenizer
    from ..train import Plan, RunConfig, load_run_file, stage_model_configs
    from ..train.distributed import resolve_mode
    from ..train.stream import check_synthetic
    from ..train.state import STATE_JSON, latest_checkpoint

    import json

    out = check_out_dir(args.out, new=False)  # a new run or one to resume: --out can be created
    cli = {field: _typed(flag, getattr(args, field), kind) for flag, (field, kind) in _FLAGS.items() if getattr(args, field) is not None}
    if args.preset is not None:
        cli["preset"] = args.preset
    if args.compile is not None:
        cli["compile"] = True
    if args.distributed is not None:
        cli["distributed"] = args.distributed
    cli_model = model_overrides(args._extra)
    if args.init is not None:
        if args.resume:
            raise ValueError("--init starts a new run from a checkpoint's weights and --resume continues the run in --out: "
                             "give one of them")
        cli["init"] = args.init

    # precedence: resumed run < --config < flags
    base: dict = {}
    resume_from = saved = None
    rejected = []
    if args.resume:
        if not out.is_dir():
            raise ValueError(f"--resume: run directory '{out}' does not exist")
        rejected: list = []
        resume_from = latest_checkpoint(out, rejected)
        if resume_from is None:
            if rejected:
                raise ValueError(f"--resume: no checkpoint of '{out}' verifies (newest: {rejected[0][1]})")
            raise ValueError(f"--resume: '{out}' has no complete checkpoint under checkpoints/")
        try:
            saved = json.loads((resume_from / STATE_JSON).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"--resume: {resume_from / STATE_JSON} is unreadable ({e.__class__.__name__}: {e})") from None
        if not isinstance(saved, dict) or not isinstance(saved.get("run", {}), dict):
            raise ValueError(f"--resume: {resume_from / STATE_JSON} is not a trainer state (no 'run' mapping)")
        base = dict(saved.get("run", {}))
    elif out.is_dir() and ((out / "checkpoints").exists() or (out / "metrics.jsonl").exists()):
        raise ValueError(f"--out '{out}' already holds a run; pass --resume to continue it or choose another directory")
    file = load_run_file(args.config) if args.config else {}
    where = f"config file '{args.config}': " if args.config else ""
    if "seq_len" in cli and (file.get("stages") or base.get("stages")):
        raise ValueError("--seq-len cannot be combined with stages in the run config; set seq_len per stage")
    merged = {**base, **file, **cli}
    if file.get("model") is not None and not isinstance(file["model"], dict):
        raise ValueError(f"{where}model must be a mapping of model config overrides, got {type(file['model']).__name__}")
    # nested ({rope: {factor: 4}}) and flat (rope_factor: 4) option names merge option by option, later layers winning
    merged["model"] = merge_overrides(*(m for m in (base.get("model"), file.get("model")) if m), cli_model)
    run = RunConfig.from_dict(merged, where)
    try:
        run.validate()
    except ValueError as e:  # name the flag or the file the bad value came from
        msg = str(e)
        key = msg.split(" ", 1)[0]
        flag = next((f for f, (k, _) in _FLAGS.items() if k == key), None)
        if key in cli and flag:
            raise ValueError(flag + msg[len(key):]) from None
        if key in file or key.startswith("stages["):
            raise ValueError(where + msg) from None
        raise
    if run.init is not None:
        if "preset" in cli:
            raise ValueError("--init takes the model config from the checkpoint: drop --preset (change fields with --model.FIELD)")
        run = run.replace(preset=None)  # a preset from --config (or a stale one) does not describe the model
    elif run.preset is None:
        raise ValueError("--preset is required (or set preset: in --config)")
    init = _read_init(run.init) if run.init is not None and resume_from is None else None
    cache_dir = run.cache_dir or os.environ.get("RNOPE_CACHE")
    if cache_dir and Path(cache_dir).exists() and not Path(cache_dir).is_dir():
        raise ValueError(f"cache directory '{cache_dir}' (--cache-dir / RNOPE_CACHE) exists and is not a directory")

    # tokenizer, then the model config of each stage
    if resume_from is not None and (resume_from / "tokenizer.json").exists():
        tok = Tokenizer.load(resume_from / "tokenizer.json")
        if "tokenizer" in cli:
            mine = Tokenizer.byte_level() if run.tokenizer == "byte" else Tokenizer.load(run.tokenizer)
            if mine.content_hash != tok.content_hash:
                raise ValueError(f"cannot resume '{out}': --tokenizer {run.tokenizer} differs from the run's tokenizer.json")
    elif init is not None and init.tokenizer is not None and not ("tokenizer" in cli or "tokenizer" in file):
        tok = init.tokenizer  # the checkpoint's own
        run = run.replace(tokenizer=str(init.dir / "tokenizer.json"))
    elif run.tokenizer == "byte":
        tok = Tokenizer.byte_level()
    else:
        if not Path(run.tokenizer).exists():
            raise ValueError(f"--tokenizer '{run.tokenizer}' does not exist")
        tok = Tokenizer.load(run.tokenizer)
    if init is not None and tok is not init.tokenizer:
        if init.tokenizer is not None and tok.content_hash != init.tokenizer.content_hash:
            raise ValueError(f"--init '{run.init}': --tokenizer {run.tokenizer} differs from the checkpoint's tokenizer.json "
                             "(omit --tokenizer to train with the checkpoint's)")
        if tok.vocab_size > init.config.vocab_size:
            raise ValueError(f"--init '{run.init}': the tokenizer has {tok.vocab_size} tokens but the checkpoint's "
                             f"vocab_size is {init.config.vocab_size}")
    overrides = dict(run.model)
    vocab = overrides.get("vocab_size")
    if vocab is None and run.init is None:
        overrides["vocab_size"] = tok.vocab_size
    elif vocab is not None and vocab < tok.vocab_size:
        raise ValueError(f"vocab_size {vocab} is smaller than the tokenizer's {tok.vocab_size} tokens")
    if run.init is not None:  # the checkpoint's config (first run), or the whole config the run recorded (resume)
        model = init.config.replace(**overrides) if init is not None else ModelConfig.from_dict(overrides)
    else:
        model = ModelConfig.from_preset(run.preset, **overrides)
    stages = run.resolved_stages()
    models = stage_model_configs(model, stages)
    init_notes: list[str] = []
    if init is not None:
        from ..convert import plan_state

        try:
            added = plan_state(init.config, models[0])
        except ValueError as e:
            raise ValueError(f"--init '{run.init}': {e}") from None
        run = run.replace(init=str(init.dir.resolve()), model=model.to_dict())  # a resume rebuilds the model from run.json alone
        init_notes.append(f"rnope: starting from the weights of {init.dir} (pattern {model.pattern}; step 0, a fresh optimizer)")
        if added:
            init_notes.append(f"rnope: note: {len(added)} tensor(s) the checkpoint lacks start at their fresh-init values")

    # data, synthetic documents, distribution
    _check_data(run.data)
    for st in stages:
        ratio = run.synthetic_ratio if st.synthetic_ratio is None else st.synthetic_ratio
        for L in st.lengths:
            check_synthetic(tok, kinds=st.synthetic_kinds or run.synthetic_kinds, L=L, ratio=ratio)
    mode = resolve_mode(run.distributed)

    if resume_from is not None:
        got, _ = read_config(resume_from)
        i = int(saved.get("stage", 0))
        if i >= len(stages) or saved.get("stage_name") != stages[i].name:
            raise ValueError(f"cannot resume '{out}': its checkpoint is in stage {saved.get('stage_name')!r}, "
                             f"which this run config does not have at position {i}")
        want = models[i]
        diff = _first_difference(got, want)
        if diff is not None:
            field, a, b = diff
            raise ValueError(f"cannot resume '{out}': model config field '{field}' differs "
                             f"(checkpoint: {a!r}, this run: {b!r})")
    cache = Path(run.cache_dir or os.environ.get("RNOPE_CACHE") or out / "data")
    notes = [f"rnope: {d.name} does not verify ({why}); resuming from {resume_from.name} instead" for d, why in rejected]
    notes += _cut_stages_note(stages, run.total_steps) + init_notes
    return Plan(run=run, out=out, stages=stages, models=models, tokenizer=tok, mode=mode, cache_dir=cache,
                resume_from=resume_from, rejected=tuple(d for d, _ in rejected), run_info=_run_info(), notes=tuple(notes),
                init_from=None if init is None else init.dir)


def _read_init(path: str):
    """The ``--init`` checkpoint's config and tokenizer (:func:`rnope.convert.read_source`); no weights read."""
    from ..convert import read_source

    try:
        return read_source(path)
    except ValueError as e:
        raise ValueError(f"--init: {e}") from None


def _cut_stages_note(stages, total: int) -> list[str]:
    """One line when --max-steps ends the run before its stages do (which stages are cut or skipped)."""
    planned = sum(s.steps for s in stages)
    if total >= planned or len(stages) < 2 and stages[0].name == "pretrain":
        return []
    start = 0
    for i, st in enumerate(stages):
        if total < start + st.steps:
            skipped = [s.name for s in stages[i + 1:]]
            rest = f"; stage(s) {', '.join(repr(n) for n in skipped)} will not run" if skipped else ""
            return [f"rnope: note: --max-steps {total} ends the run in stage {st.name!r} at step {total - start} of "
                    f"{st.steps} ({planned} planned in all){rest}"]
        start += st.steps
    return []


def run(args) -> int:
    from ..outlock import OutLock
    from ..train import train

    main_rank = os.environ.get("RANK", "0") == "0"
    out = Path(args.out)
    # one writer per run directory: refuse a second process before reading anything of the run
    lock = OutLock(out, say=_say) if main_rank and out.parent.is_dir() else None
    try:
        plan = build_plan(args)
        created = not plan.out.exists()
        plan.out.mkdir(parents=True, exist_ok=True)
        if main_rank and lock is None:
            lock = OutLock(out, say=_say)
        try:
            return train(plan)
        except (ValueError, OSError):  # e.g. a corpus file that turns out malformed while tokenizing
            if created and not (plan.out / "checkpoints").exists() and main_rank:
                shutil.rmtree(plan.out, ignore_errors=True)
            raise
    finally:
        if lock is not None:
            lock.release()


def _say(msg: str) -> None:
    import sys

    print(msg, file=sys.stderr, flush=True)
