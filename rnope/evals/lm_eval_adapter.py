"""lm-evaluation-harness adapter: rnope checkpoints as the ``rnope`` model of ``lm_eval``.

``lm_eval`` is optional (``pip install 'rnope[eval]'``); importing this module without it works,
but :class:`RnopeLM` is then ``None``.

The command (README, ``rnope lm-eval --help``)::

    rnope lm-eval --model_args pretrained=DIR --tasks rnope_passkey --output_path OUT

runs lm_eval's own CLI (:func:`run_cli`) with the ``rnope`` model registered (importing this
module fires the registration), ``--model rnope`` unless another ``--model`` is given, the shipped
task directory ``local_tasks/`` on the task path, and ``--device auto`` for rnope unless a device is
given. ``python -m rnope.evals.lm_eval_adapter run ARGS`` is the same. lm_eval releases that read
the ``lm_eval.models`` entry point (declared in ``pyproject.toml``) also run ``lm_eval run --model
rnope ...`` as is; the releases that ``rnope[eval]`` installs today (<= 0.4.13) register models only
by import (from Python: ``import rnope.evals.lm_eval_adapter`` before ``lm_eval.simple_evaluate``).

Shipped tasks (``local_tasks/``, offline): ``rnope_passkey`` (generate_until, exact match of the
key), ``rnope_passkey_ll`` (loglikelihood of the key) and ``rnope_passkey_rolling``
(loglikelihood_rolling of the prompt). Their items (passkey, docs/evaluation.md) are generated in
memory by :func:`passkey_dataset` -- ``n`` per length, ``lengths`` in byte-level tokens, ``seed``,
from the task metadata (lm_eval's ``--metadata``). ``python -m rnope.evals.lm_eval_adapter make-task
TASK_DIR`` writes the same tasks as a fixed ``passkey.jsonl`` plus YAMLs that read it (``dataset_path:
json``, absolute paths, HF datasets cache inside TASK_DIR); use them with ``--include_path TASK_DIR``.

Model arguments (``--model_args``): ``pretrained`` (checkpoint / run / HF directory), ``batch_size``,
``device`` (``auto``; falls back to CPU, with a warning, when CUDA is asked for but missing),
``dtype``, ``max_length`` (default: the model config's ``max_seq_len``; longer inputs keep their last
tokens, rolling windows use it), ``max_gen_toks`` (default 256). Generation is greedy; sampling
arguments are ignored with a warning.
"""

from __future__ import annotations

import json
import logging
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["RnopeLM", "TASKS_DIR", "TASK_NAMES", "lm_eval_argv", "main", "passkey_dataset", "passkey_task_configs",
           "run_cli", "write_passkey_task"]

log = logging.getLogger(__name__)

TASK_NAMES = ("rnope_passkey", "rnope_passkey_ll", "rnope_passkey_rolling")
TASKS_DIR = Path(__file__).resolve().parent / "local_tasks"  # the shipped tasks (package data)
SHIPPED_TASK = TASKS_DIR / "passkey.yaml"


# ------------------------------------------------------------------------------------ local task
def passkey_task_configs(data_file: str, cache_dir: str | None = None) -> dict[str, dict]:
    """The three task configs (dicts) reading ``data_file`` (a JSONL of ``prompt``/``answer``)."""
    kwargs: dict[str, Any] = {"data_files": {"test": str(data_file)}}
    if cache_dir:
        kwargs["cache_dir"] = str(cache_dir)
    base = {"dataset_path": "json", "dataset_kwargs": kwargs, "test_split": "test", "doc_to_text": "{{prompt}}",
            "metadata": {"version": 1.0}}
    return {
        "rnope_passkey": {
            "task": "rnope_passkey", **base, "output_type": "generate_until", "doc_to_target": "{{answer}}",
            "target_delimiter": " ",
            "generation_kwargs": {"until": ["\n", "."], "max_gen_toks": 16, "do_sample": False, "temperature": 0.0},
            "metric_list": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True,
                             "ignore_case": True, "ignore_punctuation": True, "regexes_to_ignore": [" "]}],
        },
        "rnope_passkey_ll": {
            # lm_eval puts no target_delimiter in front of a loglikelihood continuation: the space is the target's
            "task": "rnope_passkey_ll", **base, "output_type": "loglikelihood", "doc_to_target": " {{answer}}",
            "target_delimiter": " ",
            "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True},
                            {"metric": "perplexity", "aggregation": "perplexity", "higher_is_better": False}],
        },
        "rnope_passkey_rolling": {
            "task": "rnope_passkey_rolling", **base, "output_type": "loglikelihood_rolling",
            "doc_to_target": "{{prompt}}", "doc_to_text": "",
            "metric_list": [{"metric": "word_perplexity"}, {"metric": "byte_perplexity"}, {"metric": "bits_per_byte"}],
        },
    }


def passkey_rows(n: int = 20, lengths: Sequence[int] = (512, 1024), seed: int = 0, encode=None) -> list[dict]:
    """``n`` passkey items (docs/evaluation.md) per length (depths spread over 0-100 %), fitted with ``encode``
    (default: the byte-level tokenizer, so lengths are in bytes)."""
    from ..tasks import passkey
    from .args import item_seed

    if encode is None:
        from ..tokenizer import Tokenizer

        encode = Tokenizer.byte_level().encode
    rows = []
    for L in lengths:
        for i in range(n):
            depth = 100.0 * i / max(1, n - 1)
            it = passkey(item_seed(seed, "lm_eval", i), L, depth, encode=encode)
            rows.append({"prompt": it.prompt, "answer": it.answers[0], "length": L, "depth": depth})
    return rows


def passkey_dataset(n: int = 20, lengths: Sequence[int] | str = (512, 1024), seed: int = 0, **_metadata: Any):
    """The shipped tasks' items as ``{"test": datasets.Dataset}`` (``custom_dataset`` of ``local_tasks/*.yaml``).

    lm_eval passes the task metadata merged with ``--metadata`` and the model arguments; only ``n``,
    ``lengths`` and ``seed`` are read."""
    import datasets

    from .args import parse_lengths

    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"rnope passkey tasks: metadata n must be a positive integer, got {n!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"rnope passkey tasks: metadata seed must be an integer, got {seed!r}")
    rows = passkey_rows(n, parse_lengths(lengths, "metadata lengths"), seed)
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})


def write_passkey_task(out_dir: str | Path, *, n: int = 20, lengths: Sequence[int] = (512, 1024), seed: int = 0,
                       encode=None) -> list[Path]:
    """Write ``passkey.jsonl`` and the three task YAMLs (absolute paths) into ``out_dir``."""
    import yaml

    d = Path(out_dir).resolve()
    if d.exists() and not d.is_dir():
        raise ValueError(f"'{d}' exists and is not a directory")
    d.mkdir(parents=True, exist_ok=True)
    data = d / "passkey.jsonl"
    from ..outputs import atomic_write_text

    atomic_write_text(data, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in passkey_rows(n, lengths, seed, encode)))
    out = [data]
    for name, cfg in passkey_task_configs(str(data), str(d / ".hf_cache")).items():
        p = d / f"{name}.yaml"
        p.write_text(yaml.safe_dump(cfg, sort_keys=False))
        out.append(p)
    return out


# ------------------------------------------------------------------------------------ the model
try:  # lm_eval is optional
    from lm_eval.api.model import LM as _LM
except ImportError:  # pragma: no cover - exercised when lm_eval is absent
    _LM = None


def _as_int(v: Any, default: int) -> int:
    if v is None or v == "" or (isinstance(v, str) and v.startswith("auto")):
        return default
    return int(v)


if _LM is not None:

    class RnopeLM(_LM):
        """``lm_eval`` model over an rnope checkpoint (see module doc for arguments)."""

        def __init__(
            self,
            pretrained: str | None = None,
            batch_size: int | str | None = 8,
            device: str | None = None,
            dtype: str = "auto",
            max_length: int | str | None = None,
            max_gen_toks: int | str = 256,
            predictor: Any = None,
            **kwargs: Any,
        ) -> None:
            super().__init__()
            from .predictor import load_predictor

            extra = {k: v for k, v in kwargs.items() if k not in ("max_batch_size", "trust_remote_code")}
            if extra:
                log.warning("rnope: ignoring unknown model_args %s", sorted(extra))
            bs = _as_int(batch_size, 8)
            if predictor is None:
                if not pretrained:
                    raise ValueError("the rnope model needs --model_args pretrained=CHECKPOINT_DIR")
                import torch

                dev = device or "auto"
                if str(dev).startswith("cuda") and not torch.cuda.is_available():
                    log.warning("rnope: CUDA is not available; running on CPU")
                    dev = "cpu"
                predictor = load_predictor(str(pretrained), device=dev, dtype=dtype, batch_size=bs)
                self._device = predictor.model.embed_tokens.weight.device
            self.predictor = predictor
            cfg_len = getattr(getattr(predictor, "config", None), "max_seq_len", None) or predictor.train_seq_len
            self.max_length = _as_int(max_length, int(cfg_len))
            self.max_gen_toks = _as_int(max_gen_toks, 256)
            if hasattr(predictor, "max_length"):
                predictor.max_length = self.max_length

        # -- helpers
        @property
        def tokenizer_name(self) -> str:
            return f"rnope-{getattr(self.predictor, 'name', 'model')}"

        @property
        def eot_token_id(self) -> int:
            return self.predictor.tokenizer.eos_id

        def _progress(self, n: int, desc: str, disable: bool):
            from .items import progress_bar

            return progress_bar(n, desc, not disable)

        # -- requests
        def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
            ctxs, conts = [], []
            for r in requests:
                c, x = r.args[0], r.args[1]
                n_sp = len(c) - len(c.rstrip())  # trailing context spaces belong to the continuation
                if n_sp:
                    c, x = c[:-n_sp], c[-n_sp:] + x
                ctxs.append(c)
                conts.append(x)
            out = []
            bs = getattr(self.predictor, "batch_size", 8)
            with self._progress(len(requests), "loglikelihood", disable_tqdm) as bar:
                for s in range(0, len(requests), bs * 8):
                    res = self.predictor.nll(ctxs[s : s + bs * 8], conts[s : s + bs * 8])
                    for (nll, greedy), c, x in zip(res, ctxs[s : s + bs * 8], conts[s : s + bs * 8]):
                        out.append((-float(nll), bool(greedy)))
                        self.cache_hook.add_partial("loglikelihood", (c, x), (-float(nll), bool(greedy)))
                    bar.update(len(res))
            return out

        def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
            from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

            p = self.predictor
            out = []
            with self._progress(len(requests), "loglikelihood_rolling", disable_tqdm) as bar:
                for r in requests:
                    (text,) = r.args[:1]
                    ids = p.encode(text)
                    if not ids:
                        out.append(0.0)
                        bar.update(1)
                        continue
                    windows = [make_disjoint_window(w) for w in get_rolling_token_windows(
                        token_list=ids, prefix_token=p.tokenizer.bos_id, max_seq_len=self.max_length, context_len=1)]
                    total = -math.fsum(nll for nll, _ in p.nll_ids(windows))
                    out.append(total)
                    self.cache_hook.add_partial("loglikelihood_rolling", (text,), total)
                    bar.update(1)
            return out

        def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
            p = self.predictor
            groups: dict[tuple, list[int]] = {}
            specs = []
            for i, r in enumerate(requests):
                ctx, kw = r.args[0], dict(r.args[1] or {})
                until = kw.pop("until", None)
                until = [until] if isinstance(until, str) else list(until or [])
                max_gen = _as_int(kw.pop("max_gen_toks", None), self.max_gen_toks)
                if kw.get("do_sample") or float(kw.get("temperature", 0.0) or 0.0) > 0:
                    log.warning("rnope: generation is greedy; ignoring sampling arguments %s", kw)
                specs.append((ctx, until, max_gen))
                groups.setdefault((max_gen,), []).append(i)
            res: list[str] = [""] * len(requests)
            with self._progress(len(requests), "generate_until", disable_tqdm) as bar:
                for (max_gen,), idx in groups.items():
                    bs = getattr(p, "batch_size", 8)
                    for s in range(0, len(idx), bs):
                        chunk = idx[s : s + bs]
                        prompts = [specs[i][0] for i in chunk]
                        if hasattr(p, "complete_ids") and self.max_length:
                            keep = max(1, self.max_length - max_gen)
                            ids = [(p.encode(t) or [p.tokenizer.bos_id])[-keep:] for t in prompts]
                            outs = [p.tokenizer.decode(o) for o in p.complete_ids(ids, max_gen)]
                        else:
                            outs = p.complete(prompts, max_gen)
                        for i, o in zip(chunk, outs):
                            for stop in specs[i][1]:
                                if stop and stop in o:
                                    o = o[: o.index(stop)]
                            res[i] = o
                            self.cache_hook.add_partial("generate_until", requests[i].args, o)
                        bar.update(len(chunk))
            return res

    def _register() -> None:
        import importlib

        importlib.import_module("lm_eval.models")  # lm_eval's lazy built-ins first, so they stay available

        try:
            from lm_eval.api.registry import model_registry  # lm_eval >= 0.4.10: a Registry object
        except ImportError:  # older releases: a dict behind @register_model
            from lm_eval.api.registry import MODEL_REGISTRY as model_registry
            from lm_eval.api.registry import register_model

            if "rnope" not in model_registry:
                register_model("rnope")(RnopeLM)
            return
        if "rnope" not in model_registry:  # else: already registered, or an entry-point placeholder
            model_registry.register("rnope")(RnopeLM)

    if __name__ != "__main__":
        _register()
else:  # pragma: no cover
    RnopeLM = None  # type: ignore[assignment,misc]


# ------------------------------------------------------------------------------------ entry point
def _flag(argv: Sequence[str], flag: str) -> str | None:
    """The value of ``flag`` (``--flag V`` or ``--flag=V``) in ``argv``; ``""`` when given without one."""
    for i, a in enumerate(argv):
        if a == flag:
            return argv[i + 1] if i + 1 < len(argv) else ""
        if a.startswith(flag + "="):
            return a[len(flag) + 1 :]
    return None


def _has_subcommands() -> bool:
    import importlib.util

    return importlib.util.find_spec("lm_eval._cli") is not None  # lm_eval >= 0.4.10: run / ls / validate


def lm_eval_argv(argv: Sequence[str], subcommands: bool = True) -> list[str]:
    """lm_eval CLI arguments for ``rnope lm-eval ARGV``: ``--model rnope`` unless a model is given,
    the shipped task directory as ``--include_path`` unless one is given, ``--device auto`` for rnope
    unless a device (or ``--config``) is given, and ``run`` first when lm_eval has sub-commands."""
    argv = list(argv)
    sub = "run"
    if argv[:1] and argv[0] in ("run", "ls", "validate"):
        sub, argv = argv[0], argv[1:]
    if sub != "run" and not subcommands:
        raise ValueError(f"the installed lm_eval has no '{sub}' command (it needs lm_eval >= 0.4.10)")
    extra = []
    if sub == "run":
        model = _flag(argv, "--model")
        if model is None:
            extra += ["--model", "rnope"]
        if (model or "rnope") == "rnope" and _flag(argv, "--device") is None and _flag(argv, "--config") is None:
            extra += ["--device", "auto"]  # lm_eval's own default is cuda:0, a warning on every CPU machine
    if _flag(argv, "--include_path") is None:
        extra += ["--include_path", str(TASKS_DIR)]
    return ([sub] if subcommands else []) + extra + argv


def _also_include_shipped_tasks() -> Any:
    """Add the shipped task directory to every ``TaskManager`` (for a user's own ``--include_path``,
    which lm_eval's CLI takes as one path) in front of the user's paths, so a user's task of the same
    name wins; returns the function that undoes it."""
    from lm_eval.tasks import TaskManager

    init = TaskManager.__init__

    def __init__(self, *args, include_path=None, **kwargs):
        paths = [] if include_path is None else [include_path] if isinstance(include_path, (str, Path)) \
            else list(include_path)
        init(self, *args, include_path=[str(TASKS_DIR), *map(str, paths)], **kwargs)

    TaskManager.__init__ = __init__

    def undo() -> None:
        TaskManager.__init__ = init

    return undo


def run_cli(argv: Sequence[str]) -> int:
    """Run lm_eval's own CLI on ``lm_eval_argv(argv)`` in this process, ``rnope`` registered; returns
    the exit code (lm_eval's usage errors exit 2 with its own message)."""
    if RnopeLM is None:
        raise ValueError("lm-eval needs lm_eval: pip install 'rnope[eval]'")
    from lm_eval.__main__ import cli_evaluate

    args = lm_eval_argv(argv, _has_subcommands())
    undo = _also_include_shipped_tasks() if _flag(list(argv), "--include_path") is not None else None
    saved = sys.argv
    sys.argv = ["lm-eval", *args]
    try:
        cli_evaluate()
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    finally:
        sys.argv = saved
        if undo is not None:
            undo()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m rnope.evals.lm_eval_adapter make-task DIR [--n N] [--lengths 512,1024] [--seed S]``
    or ``python -m rnope.evals.lm_eval_adapter [run] ARGS`` (the same as ``rnope lm-eval ARGS``)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["make-task"]:
        import argparse

        ap = argparse.ArgumentParser(prog="python -m rnope.evals.lm_eval_adapter make-task",
                                     description="write the offline passkey task (JSONL + lm_eval YAMLs)")
        ap.add_argument("dir")
        ap.add_argument("--n", type=int, default=20, help="items per length")
        ap.add_argument("--lengths", default="512,1024", help="prompt lengths in byte-level tokens")
        ap.add_argument("--seed", type=int, default=0)
        a = ap.parse_args(argv[1:])
        from .args import parse_lengths

        for p in write_passkey_task(a.dir, n=a.n, lengths=parse_lengths(a.lengths), seed=a.seed):
            print(p)
        return 0
    try:
        return run_cli(argv)
    except ValueError as e:
        print(f"rnope: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    from rnope.evals.lm_eval_adapter import main as _main  # the importable module registers "rnope"

    sys.exit(_main())
