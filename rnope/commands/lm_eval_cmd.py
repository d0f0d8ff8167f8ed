"""``rnope lm-eval ARGS``: lm-evaluation-harness with the ``rnope`` model and rnope's offline tasks.

The arguments are lm_eval's own (``lm_eval run --help``) and go to its CLI unchanged, with the
defaults documented in ``HELP_TEXT`` added (:func:`rnope.evals.lm_eval_adapter.lm_eval_argv`).
"""

from __future__ import annotations

import argparse

NAME = "lm-eval"
HELP = "run lm-evaluation-harness (lm_eval) on rnope checkpoints, e.g. the shipped offline passkey tasks"
HELP_TEXT = """\
Every argument is lm_eval's own (see `lm_eval run --help`) and is passed to lm_eval's CLI, which
prints the results table and writes results_*.json under --output_path. rnope adds:
  --model rnope          unless --model is given (e.g. --model hf for a Hugging Face model)
  --include_path DIR     the shipped task directory (rnope/evals/local_tasks); with a directory of your
                         own both are read, and your tasks win over shipped ones of the same name
  --device auto          for --model rnope unless --device is given (cuda if available, else cpu)

Shipped offline tasks (items generated in memory, nothing downloaded): rnope_passkey (greedy
continuation, exact match of the 5-digit key), rnope_passkey_ll (loglikelihood of the key: acc,
perplexity), rnope_passkey_rolling (loglikelihood_rolling of the prompt: word / byte perplexity,
bits per byte). 20 items per length at 512 and 1024 byte-level tokens, seed 0; change them with
--metadata '{"n": 5, "lengths": [2048, 4096], "seed": 1}'; --limit N scores the first N items.

rnope model arguments (--model_args k=v,...): pretrained=DIR (checkpoint, run or Hugging Face
directory; required), dtype (auto, float32, bfloat16, float16), max_length (default: the model's
max_seq_len), max_gen_toks (default 256); --batch_size and --device as usual.

Example:
  rnope lm-eval --model_args pretrained=runs/swa --tasks rnope_passkey,rnope_passkey_ll --output_path lm_out
  rnope lm-eval --model hf --model_args pretrained=hf/swa --tasks rnope_passkey --output_path lm_out

Needs the eval extra: pip install 'rnope[eval]'. lm_eval releases that read model entry points
also accept `lm_eval run --model rnope ...` directly."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.usage = "rnope lm-eval [--debug] [LM_EVAL_ARGS ...]"
    p.epilog = HELP_TEXT
    p.set_defaults(_accepts_extra=True)


def run(args: argparse.Namespace) -> int:
    from ..evals.lm_eval_adapter import run_cli

    return run_cli(args._extra)
