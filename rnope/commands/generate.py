"""``rnope generate``: continue prompts with a checkpoint (one --prompt, or JSONL in and out)."""

from __future__ import annotations

import argparse
import json
import sys

NAME = "generate"
HELP = "generate text from a checkpoint (--prompt TEXT, or --input prompts.jsonl --output out.jsonl)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ckpt", required=True, help="checkpoint, run, or Hugging Face directory")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--prompt", help="prompt text (the completion streams to stdout)")
    g.add_argument("--input", help='JSONL file, one {"prompt": ...} per line')
    p.add_argument("--output", help="JSONL output (with --input): each input line plus \"completion\"")
    p.add_argument("--max-new-tokens", type=int, default=128, help="tokens to generate per prompt (default 128)")
    p.add_argument("--temperature", type=float, default=0.0, help="sampling temperature; 0 = greedy (default)")
    p.add_argument("--top-k", type=int, default=None, help="sample among the k most likely tokens (default: all)")
    p.add_argument("--top-p", type=float, default=None,
                   help="sample from the smallest set of tokens whose probability reaches p, in (0, 1] (default: 1)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default 0; greedy decoding ignores it)")
    p.add_argument("--batch-size", type=int, default=8, help="prompts per batch with --input")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:N")
    p.add_argument("--dtype", default="auto", help="auto (bf16 on CUDA, fp32 on CPU), float32, bfloat16, float16")
    p.add_argument("--compile", nargs="?", const="on", default="auto", choices=("auto", "on", "off"),
                   help="compile the decode step with torch.compile: auto (default) compiles when the generation "
                        "decodes enough tokens to repay the compile (rnope.decode.AUTO_COMPILE_TOKENS per prompt "
                        "batch; 10-20 s of compile on a 2-core CPU, then 1.6-3.5x eager per token for one prompt, measured on "
                        "7M-55M models in benchmarks/RESULTS.md); on (or --compile alone) always; off never")
    p.add_argument("--decode-weights", default="float32", choices=("float32", "float16", "bfloat16"),
                   help="dtype the compiled one-prompt CPU decode step reads its weights in: float16 halves the bytes "
                        "read per token (logits move by the weights' rounding, ~1e-3 relative; greedy tokens may differ "
                        "from float32); ignored by the eager and batched paths (default float32, the model's)")
    from .eval import NOPE_SCALE_HELP

    p.add_argument("--nope-scale", default=None, metavar="MODE", help=NOPE_SCALE_HELP)


def _read_prompts(path: str) -> list[dict]:
    rows = []
    try:
        raw = open(path, "rb").read()
    except FileNotFoundError:
        raise ValueError(f"input file '{path}' does not exist") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"input file '{path}' is not valid UTF-8 (byte at offset {e.start})") from None
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            raise ValueError(f"{path} line {n}: not valid JSON") from None
        if not isinstance(row, dict) or not isinstance(row.get("prompt"), str):
            raise ValueError(f"{path} line {n}: no string field 'prompt'")
        if not row["prompt"]:
            raise ValueError(f"{path} line {n}: empty prompt")
        try:
            row["prompt"].encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(f"{path} line {n}: prompt has a lone surrogate (\\ud800-\\udfff), which is not text") from None
        rows.append(row)
    if not rows:
        raise ValueError(f"input file '{path}' has no prompts")
    return rows


def run(args) -> int:
    from pathlib import Path

    from ..checkpoint import load
    from ..runtime import pick_device, pick_dtype
    from ..inference import check_sampling, generate
    from ..nope_scale import apply, check_checkpoint, parse_mode
    from ..outputs import atomic_write_text, check_out_file

    if args.input and not args.output:
        raise ValueError("--input needs --output")
    if args.output and not args.input:
        raise ValueError("--output is only used with --input (a --prompt completion streams to stdout)")
    # the checks rnope.generate() makes, worded with the flags, before the model loads
    check_sampling(args.max_new_tokens, args.temperature, args.top_k, args.top_p, flags=True)
    nope_mode = parse_mode(args.nope_scale)[0]
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.output:
        check_out_file(args.output, label="--output")
    rows = _read_prompts(args.input) if args.input else None
    if args.prompt is not None and not args.prompt:
        raise ValueError("--prompt is empty")
    if args.prompt is not None:
        try:
            args.prompt.encode("utf-8")
        except UnicodeEncodeError as e:
            raise ValueError(f"--prompt is not valid text (lone surrogate at index {e.start}: bytes that are not UTF-8?)") from None
    device = pick_device(args.device)
    dtype = pick_dtype(args.dtype, device)
    check_checkpoint(args.ckpt, nope_mode)
    model, tok = load(args.ckpt, device=device, dtype=dtype)
    if tok is None:
        raise ValueError(f"checkpoint '{args.ckpt}' has no tokenizer.json: cannot encode text prompts")
    apply(model, args.nope_scale, ckpt=args.ckpt, tokenizer=tok)
    kw = dict(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed, stop_ids=[tok.eos_id], pad_id=tok.pad_id,
              compile={"auto": None, "on": True, "off": False}[args.compile],
              decode_weights=None if args.decode_weights == "float32" else args.decode_weights)
    if rows is None:
        ids = tok.encode(args.prompt)
        _warn_length(model, len(ids) + args.max_new_tokens)
        done: list[int] = []

        def stream(step, new):
            if new[0] is not None and new[0] != tok.eos_id:
                done.append(new[0])
                text = tok.decode(done)
                stream.printed = getattr(stream, "printed", "")
                sys.stdout.write(text[len(stream.printed) :])
                sys.stdout.flush()
                stream.printed = text

        generate(model, [ids], args.max_new_tokens, callback=stream, **kw)
        sys.stdout.write("\n")
        return 0
    from tqdm import tqdm

    results = []
    for i in tqdm(range(0, len(rows), args.batch_size), desc="generate", unit="batch", file=sys.stderr):
        chunk = rows[i : i + args.batch_size]
        ids = [tok.encode(r["prompt"]) for r in chunk]
        _warn_length(model, max(map(len, ids)) + args.max_new_tokens)
        outs = generate(model, ids, args.max_new_tokens, **kw)
        for r, o in zip(chunk, outs):
            o = [t for t in o if t != tok.eos_id]
            results.append({**r, "completion": tok.decode(o)})
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in results))
    print(f"wrote {len(results)} completions to {out}", file=sys.stderr)
    return 0


def _warn_length(model, total: int) -> None:
    cfg = model.config
    if total > cfg.max_seq_len and any(s.rope and s.span == "full" for s in cfg.layers):
        print(
            f"rnope: warning: {total} tokens exceed the trained length {cfg.max_seq_len} of a model with full-attention RoPE layers",
            file=sys.stderr,
        )
