"""``rnope convert``: give a checkpoint another layer pattern, keeping every weight (:mod:`rnope.convert`).

Everything is checked before anything is written: a bad pattern, preset, window or chunk size, a
source that cannot carry the pattern, or an existing non-empty ``--out`` gives one line
``rnope: error: ...`` (exit 2) and no output. The new directory appears whole or not at all.
"""

from __future__ import annotations

import argparse

NAME = "convert"
HELP = "convert a checkpoint to another layer pattern (e.g. RoPE -> RNoPE-SWA, or --drop-pe), keeping every weight"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ckpt", required=True, help="source: checkpoint, run or Hugging Face directory")
    p.add_argument("--out", required=True, help="new checkpoint directory (must not exist or be empty)")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--pattern", help="new layer pattern, letters S R Q C N W repeated over the layers (e.g. SSSN)")
    g.add_argument("--to", metavar="PRESET", help="the pattern of a pattern preset: rnope-swa, rope, nope, qknorm, rnope, swa")
    g.add_argument("--drop-pe", action="store_true", help="DroPE: every layer NoPE full attention (pattern N)")
    p.add_argument("--window", type=int, default=None,
                   help="window of the sliding layers (default: the source's; required when the source has none)")
    p.add_argument("--chunk-size", type=int, default=None,
                   help="chunk of the 'C' layers (default: the source's; required when the source has none)")


def _describe(cfg) -> str:
    spans = {s.span for s in cfg.layers}
    extra = (f", window {cfg.window}" if "sliding" in spans else "") + (f", chunk {cfg.chunk_size}" if "chunked" in spans else "")
    return f"pattern {cfg.pattern}{extra}"


def run(args) -> int:
    import sys
    from pathlib import Path

    from ..convert import convert
    from ..outputs import check_new_dir
    from ..outlock import OutLock

    out = Path(args.out)
    lock = OutLock(out) if out.parent.is_dir() else None  # one writer per output
    try:
        check_new_dir(out)  # refuse before reading the source
        res = convert(args.ckpt, out, pattern=args.pattern, to=args.to, drop_pe=args.drop_pe,
                      window=args.window, chunk_size=args.chunk_size)
    finally:
        if lock is not None:
            lock.release()
    if res.added:
        kinds = sorted({"QK-norm weights at 1" if n.endswith("norm.weight") else "SSMax scales at 1/ln(max_seq_len)" for n in res.added})
        print(f"rnope: note: {len(res.added)} tensor(s) the source lacks start at their fresh-init values: {', '.join(kinds)}",
              file=sys.stderr)
    print(f"converted {res.source.dir} ({_describe(res.source.config)}) -> {res.out} ({_describe(res.config)}): "
          f"{res.tensors - len(res.added)} tensors kept unchanged, {len(res.added)} added")
    print(f"the conversion changes what the model computes: continue training it with "
          f"'rnope train --init {res.out} --out RUN ...' (docs/convert.md)")
    return 0
