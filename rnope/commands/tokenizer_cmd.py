"""``rnope tokenizer train``: train a byte-level BPE ``tokenizer.json`` on a corpus spec.

    rnope tokenizer train --vocab-size 4096 --data builtin --out tok.json

The tokenizer has ``<pad>``, ``<bos>``, ``<eos>`` at ids 0-2 and round-trips any text
(:mod:`rnope.tokenizer`). Use it with ``rnope train --tokenizer tok.json``.

It learns from the training split only: the documents that ``rnope train`` with the same
``--val-fraction`` validates on (the same keyed-hash split, :func:`rnope.data.split_flags`) are left
out, so the validation loss is measured on text the tokenizer never saw. ``--val-fraction 0`` uses
every document.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

NAME = "tokenizer"
HELP = "tokenizer tools: `rnope tokenizer train --vocab-size N --data SPEC --out FILE`"


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    t = sub.add_parser("train", help="train a byte-level BPE tokenizer.json", description="train a byte-level BPE tokenizer.json")
    t.add_argument("--vocab-size", required=True, help="tokens including the 3 specials and 256 bytes (>= 260)")
    t.add_argument("--data", default="builtin", help="corpus spec (see `rnope train --help`; default builtin)")
    t.add_argument("--out", required=True, help="tokenizer.json to write")
    t.add_argument("--text-field", default="text", help="JSONL/parquet field holding the text")
    t.add_argument("--max-chars", default=None, help="train on at most this many characters (default: all)")
    t.add_argument("--digit-pairs", action="store_true",
                   help="no token mixes digits with other text, and every two-digit string is one token "
                        "(numbers split the same way wherever they stand; what `rnope reproduce` uses)")
    t.add_argument("--val-fraction", default="0.02",
                   help="leave out the documents `rnope train --val-fraction` validates on (default 0.02, its default; 0 = none)")


def _int(flag: str, raw: str | None) -> int | None:
    if raw is None:
        return None
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"{flag}: {raw!r} is not a valid integer") from None


def run(args) -> int:
    from ..data import doc_unit, iter_documents, split_flags
    from ..outputs import check_out_file
    from ..tokenizer import Tokenizer, bpe_vocab_floor

    vocab = _int("--vocab-size", args.vocab_size)
    max_chars = _int("--max-chars", args.max_chars)
    try:
        val_fraction = float(args.val_fraction)
    except ValueError:
        raise ValueError(f"--val-fraction: {args.val_fraction!r} is not a number") from None
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"--val-fraction must be in [0, 1), got {args.val_fraction}")
    least, parts = bpe_vocab_floor(args.digit_pairs)
    if vocab < least:
        flag = " with --digit-pairs" if args.digit_pairs else ""
        raise ValueError(f"--vocab-size must be >= {least}{flag} ({parts}), got {vocab}")
    if max_chars is not None and max_chars < 1:
        raise ValueError(f"--max-chars must be >= 1, got {max_chars}")
    out = check_out_file(args.out, label="--out")
    if not args.data.startswith(("builtin", "hf:")):
        p = Path(args.data)
        if not p.exists():
            raise ValueError(f"--data '{args.data}' does not exist")
        if p.is_file() and p.stat().st_size == 0:
            raise ValueError(f"--data '{args.data}' is empty")

    seen = {"docs": 0, "chars": 0}
    # first pass: which documents are validation (streamed, as rnope.data.prepare_dataset does)
    held_out = split_flags([doc_unit(d) for d in iter_documents(args.data, text_field=args.text_field)], val_fraction)

    def texts():
        for doc, val in zip(iter_documents(args.data, text_field=args.text_field), held_out):
            if val:
                continue
            if max_chars is not None and seen["chars"] >= max_chars:
                return
            if max_chars is not None:
                doc = doc[: max_chars - seen["chars"]]
            seen["docs"] += 1
            seen["chars"] += len(doc)
            yield doc

    docs = texts()
    first = next(docs, None)
    if first is None:
        raise ValueError(f"--data '{args.data}' holds no documents")

    def all_docs():
        yield first
        yield from docs

    tok = Tokenizer.train_bpe(all_docs(), vocab, show_progress=sys.stderr.isatty(), digit_pairs=args.digit_pairs)
    tok.save(out)
    print(f"wrote {out}: {tok.vocab_size} tokens from {seen['docs']} documents ({seen['chars']:,} characters; "
          f"{sum(held_out)} validation documents left out)", file=sys.stderr)
    return 0
