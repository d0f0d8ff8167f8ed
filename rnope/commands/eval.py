"""``rnope eval niah | ruler | ppl | mqar``: long-context evaluations of one or more checkpoints.

Every subcommand takes one or more ``--ckpt`` (checkpoint, training-run or Hugging Face
directory), ``--names``, ``--out DIR``, ``--seed``, ``--samples``, ``--batch-size``, ``--device``
and ``--dtype``; shows progress on stderr; and writes JSON (settings, model configs, seed,
versions), a Markdown table and PNG figures into ``DIR``. All arguments -- including every length
against the prompt template with each model's tokenizer -- are checked before any model runs, and
files are written only at the end, atomically (temporary files beside them, renamed once all are
written: :func:`rnope.outputs.write_files`), so a failed run leaves nothing in ``DIR``.
"""

from __future__ import annotations

import argparse
import sys

NAME = "eval"
HELP = "evaluate checkpoints: niah (passkey grid), ruler (11 synthetic tasks), ppl (vs length), mqar"


NOPE_SCALE_HELP = ("scale NoPE-layer queries at position p by beta(p), no retraining (docs/nope_scale.md): none; "
                   "llama4 = 1 + 0.1*ln(floor((p+1)/8192) + 1); log = 1 + c*ln(max(1, (p+1)/L_train)) with c 0.1, "
                   "or log:C; fitted = log with the c stored in the checkpoint's config.json, fitted on held-out "
                   "text when none is stored (default: the checkpoint as saved)")


def _common(p: argparse.ArgumentParser, samples: int | None, samples_help: str) -> None:
    p.add_argument("--ckpt", action="append", required=True, metavar="DIR",
                   help="checkpoint, run or Hugging Face directory (repeat for several models)")
    p.add_argument("--names", default=None, help="comma-separated model names, one per --ckpt (default: directory names)")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory (created; must not be a file)")
    p.add_argument("--seed", type=int, default=0, help="seed of the generated items / document order (default 0)")
    p.add_argument("--samples", type=int, default=samples,
                   help=samples_help if samples is None else f"{samples_help} (default {samples})")
    p.add_argument("--batch-size", type=int, default=8, help="prompts / sequences per forward batch (default 8)")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:N")
    p.add_argument("--dtype", default="auto", help="auto (bf16 on cuda, fp32 on cpu), float32, bfloat16, float16")
    p.add_argument("--nope-scale", default=None, metavar="MODE", help=NOPE_SCALE_HELP)
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show full tracebacks")


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="eval_command", metavar="EVAL", required=True)

    n = sub.add_parser("niah", help="needle-in-a-haystack grid (lengths x depths)",
                       description="NIAH grid: greedy continuation after the answer prefix, score = the needle's "
                                   "exact value. Wordings: the canonical passkey, or held-out wordings of the retrieval "
                                   "family (docs/study.md). Writes niah.json, niah.md, niah_<model>.png.")
    _common(n, 5, "samples per (length, depth) cell")
    n.add_argument("--lengths", default="auto",
                   help="context lengths in tokens, e.g. 256,512,4k; auto (default) = 1x, 2x, 4x and 8x the "
                        "training length, starting at the first multiple the prompt template fits")
    n.add_argument("--depths", default="0:100:10", help="needle depths in %%: list or START:STOP:STEP (default 0:100:10)")
    n.add_argument("--haystack", default="noise", choices=["noise", "essay"],
                   help="noise = the grass/sky filler; essay = prose no training run sees (rnope's held-out essays, "
                        "or --essay PATH)")
    n.add_argument("--wording", default="passkey", choices=["passkey", "heldout"],
                   help="passkey = 'The pass key is 12345...'; heldout = wordings of the retrieval family that "
                        "training never uses")
    n.add_argument("--essay", default=None, metavar="PATH",
                   help="prose for --haystack essay: a UTF-8 text file (paragraphs split at blank lines) or a "
                        "folder of .txt files")
    n.add_argument("--gen-tokens", type=int, default=None, help="generation budget (default: the task's, 16)")
    n.set_defaults(_eval=_run_niah)

    r = sub.add_parser("ruler", help="RULER's 11 synthetic tasks at several lengths",
                       description="RULER synthetic tasks (docs/ruler.md): string_match_all x100 per task and length "
                                   "with its binomial standard error, and the synthetic mean over the tasks run. "
                                   "Writes ruler.json, ruler.md, ruler.png.")
    _common(r, 50, "samples per task and length")
    r.add_argument("--lengths", default="1024,2048,4096", help="context lengths in tokens")
    r.add_argument("--tasks", default="all", help="all, or a comma list of RULER task names")
    r.add_argument("--gen-tokens", type=int, default=None, help="generation budget for every task (default: per task)")
    r.add_argument("--essay", default=None, metavar="PATH",
                   help="prose for the essay haystack: a UTF-8 text file or a folder of .txt files (default: rnope's "
                        "held-out essays, which no training run sees)")
    r.set_defaults(_eval=_run_ruler)

    q = sub.add_parser("ppl", help="perplexity vs evaluation length on held-out text",
                       description="Perplexity of the same final tokens at every context length, and mean NLL "
                                   "by token position. Writes ppl.json, ppl.md, ppl.png, ppl_position.png.")
    _common(q, None, "held-out streams (same as --docs)")
    q.add_argument("--lengths", default="256,512,1024,2048,4096", help="evaluation lengths in tokens")
    q.add_argument("--data", default="builtin", help="document source spec (as for training; default builtin)")
    q.add_argument("--val-fraction", type=float, default=0.02,
                   help="held-out part of --data, split like training (default 0.02); 0 = all of --data is held out")
    q.add_argument("--score-tokens", type=int, default=None,
                   help="scored final tokens per stream (default: 256, or half the shortest length if that is less)")
    q.add_argument("--docs", type=int, default=8, help="number of long held-out streams (default 8)")
    q.add_argument("--save-fit", action="store_true",
                   help="with --nope-scale fitted: fit c on the held-out part of --data (the tokens between 2x "
                        "and 4x the training length), also when one is stored, and store it in each checkpoint's "
                        "config.json before evaluating")
    q.set_defaults(_eval=_run_ppl)

    m = sub.add_parser("mqar", help="multi-query associative recall accuracy (token space)",
                       description="MQAR accuracy at value positions vs length and number of pairs. "
                                   "Writes mqar.json, mqar.md, mqar.png.")
    _common(m, 64, "sequences per (length, pairs) cell")
    m.add_argument("--lengths", default="64,128,256,512", help="sequence lengths in tokens")
    m.add_argument("--pairs", default="8,16", help="numbers of key-value pairs")
    m.add_argument("--vocab-size", type=int, default=None, help="token range of the task (default: the model's vocab)")
    m.set_defaults(_eval=_run_mqar)


def _check_common(args) -> None:
    from ..outputs import check_out_dir
    from ..evals.args import model_names, parse_names
    from ..runtime import pick_device, pick_dtype

    check_out_dir(args.out, new=False)  # the evaluation adds its files to the directory
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.samples is not None and args.samples < 1:
        raise ValueError(f"--samples must be >= 1, got {args.samples}")
    model_names(args.ckpt, parse_names(args.names, len(args.ckpt)))
    pick_dtype(args.dtype, pick_device(args.device))
    from ..nope_scale import parse_mode

    mode = parse_mode(args.nope_scale)[0]
    if getattr(args, "save_fit", False) and mode != "fitted":
        raise ValueError("--save-fit needs --nope-scale fitted")


def _load(args, need_tokenizer: bool = True, fit_kw: dict | None = None):
    from ..evals.args import parse_names
    from ..evals.predictor import load_predictors

    return load_predictors(args.ckpt, parse_names(args.names, len(args.ckpt)), device=args.device, dtype=args.dtype,
                           batch_size=args.batch_size, need_tokenizer=need_tokenizer, nope_scale=args.nope_scale,
                           save_fit=getattr(args, "save_fit", False), fit_kw=fit_kw)


def _run_niah(args):
    from ..evals import niah

    from ..data.heldout import load_essay

    auto = args.lengths == "auto"
    lengths, depths = niah.check_settings("1" if auto else args.lengths, args.depths, args.samples, args.haystack,
                                          args.gen_tokens, args.wording)
    if args.essay is not None and args.haystack != "essay":
        raise ValueError("--essay needs --haystack essay")
    essay = load_essay(args.essay) if args.essay is not None else None
    models = _load(args)
    if auto:
        lengths = niah.auto_lengths(models, haystack=args.haystack, essay=essay, wording=args.wording)
        print(f"lengths: {', '.join(map(str, lengths))} (--lengths auto: 1x-8x the training length from the first "
              f"multiple the {args.wording} template fits)", file=sys.stderr)
    doc = niah.evaluate(models, lengths=lengths, depths=depths, samples=args.samples, seed=args.seed,
                        haystack=args.haystack, batch_size=args.batch_size, gen_tokens=args.gen_tokens,
                        wording=args.wording, essay=essay)
    return niah.outputs(doc)


def _run_ruler(args):
    from ..evals import ruler
    from ..evals.args import parse_lengths

    parse_lengths(args.lengths)
    ruler.parse_tasks(args.tasks)
    if args.gen_tokens is not None and args.gen_tokens < 1:
        raise ValueError(f"--gen-tokens must be >= 1, got {args.gen_tokens}")
    from ..data.heldout import load_essay

    essay = load_essay(args.essay) if args.essay is not None else None
    models = _load(args)
    doc = ruler.evaluate(models, lengths=args.lengths, tasks=args.tasks, samples=args.samples, seed=args.seed,
                         batch_size=args.batch_size, gen_tokens=args.gen_tokens, essay=essay)
    return ruler.outputs(doc)


def _run_ppl(args):
    from ..evals import ppl
    from ..evals.args import parse_lengths

    lengths = parse_lengths(args.lengths)
    if args.score_tokens is None:
        args.score_tokens = ppl.default_score_tokens(lengths)
    if args.score_tokens < 1 or args.score_tokens >= lengths[0]:
        raise ValueError(f"--score-tokens {args.score_tokens} must be in [1, {lengths[0]}) "
                         f"(below the shortest length {lengths[0]}, so each scored token has context)")
    if args.samples is not None:
        args.docs = args.samples
    if args.docs < 1:
        raise ValueError(f"--docs must be >= 1, got {args.docs}")
    texts = ppl.heldout_documents(args.data, args.val_fraction)
    models = _load(args, fit_kw={"data": args.data, "val_fraction": args.val_fraction})
    doc = ppl.evaluate(models, lengths=lengths, score_tokens=args.score_tokens, streams=args.docs, seed=args.seed,
                       docs=texts)
    doc["settings"].update(data=args.data, val_fraction=args.val_fraction)
    return ppl.outputs(doc)


def _run_mqar(args):
    from ..evals import mqar
    from ..evals.args import parse_lengths

    parse_lengths(args.lengths)
    parse_lengths(args.pairs, "--pairs")
    models = _load(args, need_tokenizer=False)
    doc = mqar.evaluate(models, lengths=args.lengths, pairs=args.pairs, samples=args.samples, seed=args.seed,
                        vocab_size=args.vocab_size)
    return mqar.outputs(doc)


def run(args) -> int:
    from ..evals.report import write_outputs

    _check_common(args)
    files = args._eval(args)
    paths = write_outputs(args.out, files)
    print(f"wrote {', '.join(p.name for p in paths)} to {args.out}", file=sys.stderr)
    return 0
