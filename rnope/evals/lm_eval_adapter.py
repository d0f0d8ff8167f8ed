"""lm-evaluation-harness adapter: rnope checkpoints as the ``rnope`` model of ``lm_eval``.

``lm_eval`` is optional (``pip install lm_eval``); importing this module without it works, but
:class:`RnopeLM` is then ``None``.

Registration -- which one applies depends on the installed lm_eval:

* lm_eval releases with entry-point plugins (``docs/plugins.md``, EleutherAI PR #4013) discover
  the model from rnope's package metadata::

      [project.entry-points."lm_eval.models"]
      rnope = "rnope.evals.lm_eval_adapter:RnopeLM"

  so ``lm_eval run --model rnope --model_args pretrained=DIR --tasks ...`` works as is.
* Older releases (<= 0.4.13) register models only by import: run the same command line through
  this module, which imports it (firing ``@register_model("rnope")``) and then hands the arguments
  to lm_eval's own CLI::

      python -m rnope.evals.lm_eval_adapter run --model rnope --model_args pretrained=DIR \\
          --tasks rnope_passkey --include_path TASK_DIR

  (or, from Python, ``import rnope.evals.lm_eval_adapter`` before ``lm_eval.simple_evaluate``).

Local task (offline): ``python -m rnope.evals.lm_eval_adapter make-task TASK_DIR`` writes
``TASK_DIR/passkey.jsonl`` (passkey items (docs/evaluation.md)) and three task configs that read it with
``dataset_path: json`` + ``data_files`` (absolute paths, HF datasets cache inside TASK_DIR):
``rnope_passkey`` (generate_until, exact match -- the shipped ``local_tasks/passkey.yaml``),
``rnope_passkey_ll`` (loglikelihood of the key) and ``rnope_passkey_rolling``
(loglikelihood_rolling of the prompt). Set ``HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1`` so nothing
is fetched from a hub.

Model arguments (``--model_args``): ``pretrained`` (checkpoint / run / HF directory), ``batch_size``,
``device`` (falls back to CPU when CUDA is missing), ``dtype``, ``max_length`` (default: the model
config's ``max_seq_len``; longer inputs keep their last tokens, rolling windows use it),
``max_gen_toks`` (default 256). Generation is greedy; sampling arguments are ignored with a warning.
"""

from __future__ import annotations

import json
import logging
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["RnopeLM", "TASK_NAMES", "main", "passkey_task_configs", "write_passkey_task"]

log = logging.getLogger(__name__)

TASK_NAMES = ("rnope_passkey", "rnope_passkey_ll", "rnope_passkey_rolling")
SHIPPED_TASK = Path(__file__).resolve().parent / "local_tasks" / "passkey.yaml"


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
            "task": "rnope_passkey_ll", **base, "output_type": "loglikelihood", "doc_to_target": "{{answer}}",
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
    from .runner import item_seed

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


def write_passkey_task(out_dir: str | Path, *, n: int = 20, lengths: Sequence[int] = (512, 1024), seed: int = 0,
                       encode=None) -> list[Path]:
    """Write ``passkey.jsonl`` and the three task YAMLs (absolute paths) into ``out_dir``."""
    import yaml

    d = Path(out_dir).resolve()
    if d.exists() and not d.is_dir():
        raise ValueError(f"'{d}' exists and is not a directory")
    d.mkdir(parents=True, exist_ok=True)
    data = d / "passkey.jsonl"
    tmp = data.with_name(data.name + ".tmp")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in passkey_rows(n, lengths, seed, encode)))
    tmp.replace(data)
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
            from .runner import load_predictor

            extra = {k: v for k, v in kwargs.items() if k not in ("max_batch_size", "trust_remote_code")}
            if extra:
                log.warning("rnope: ignoring unknown model_args %s", sorted(extra))
            bs = _as_int(batch_size, 8)
            if predictor is None:
                if not pretrained:
                    raise ValueError("rnope: give --model_args pretrained=CHECKPOINT_DIR")
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
            from .runner import progress_bar

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
        import lm_eval.models  # noqa: F401  (lm_eval's lazy built-ins first, so they stay available)

        try:
            from lm_eval.api.registry import model_registry  # lm_eval >= 0.4.9: a Registry object
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
def main(argv: Sequence[str] | None = None) -> int:
    """``python -m rnope.evals.lm_eval_adapter make-task DIR [--n N] [--lengths 512,1024] [--seed S]``
    or ``python -m rnope.evals.lm_eval_adapter [run] --model rnope ...`` (lm_eval's CLI with the
    ``rnope`` model registered)."""
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
        from .runner import parse_lengths

        for p in write_passkey_task(a.dir, n=a.n, lengths=parse_lengths(a.lengths), seed=a.seed):
            print(p)
        return 0
    if RnopeLM is None:
        print("rnope: error: lm_eval is not installed (pip install lm_eval)", file=sys.stderr)
        return 2
    from lm_eval.__main__ import cli_evaluate

    sys.argv = ["lm-eval", *argv]
    cli_evaluate()
    return 0


if __name__ == "__main__":
    from rnope.evals.lm_eval_adapter import main as _main  # the importable module registers "rnope"

    sys.exit(_main())
