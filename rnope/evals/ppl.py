"""Perplexity vs evaluation length on held-out text (docs/evaluation.md).

Held-out documents (``--data SPEC``, split like training does with ``val_fraction`` and split seed
0, keeping only the validation part; ``val_fraction 0`` = the whole SPEC is held out) are shuffled
with ``seed``, tokenized with each model's tokenizer, joined as ``doc + [eos]`` (the training
packing) into one token stream and cut into ``streams`` streams of ``max(lengths)`` tokens.

* **PPL vs length**: for every length L the context is the *last* L tokens of each stream, so all
  contexts end at the same place and the scored tokens -- the last ``score_tokens`` of each stream
  -- are identical across lengths (their sha256 is recorded per length); only the amount of
  context before them changes.
* **NLL by position**: every token of the full streams scored with all of its preceding context;
  the mean over streams per position, averaged in bins, with the training length marked.

Logits exist one chunk at a time (:func:`rnope.inference.score_tokens`), and log-softmax only
over scored positions, so 8k-16k contexts fit memory.

``ppl.json``::

    {"task": "ppl",
     "results": [{"model", "train_seq_len",
                  "points": [{"length", "ppl", "nll", "n_tokens", "scored_sha256"}, ...],
                  "position_nll": {"bin_size", "start": [...], "nll": [...]}}, ...],
     "seed", "versions", "settings", "models"}
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Sequence
from typing import Any

from .report import lines_png, md_table, to_json, versions
from .args import parse_lengths
from .items import predictor_meta, progress_bar

__all__ = ["contexts", "default_score_tokens", "evaluate", "heldout_documents", "make_streams", "outputs"]

MAX_BINS = 256


def default_score_tokens(lengths: Sequence[int]) -> int:
    """256, or half the shortest length when that is smaller."""
    return max(1, min(256, min(lengths) // 2))


def heldout_documents(data: str = "builtin", val_fraction: float = 0.02) -> list[str]:
    """Validation documents of ``data`` (the training split rule), or all of them for ``val_fraction 0``."""
    from ..data import load_documents, split_documents

    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    docs = load_documents(data)
    if val_fraction > 0:
        _, docs = split_documents(docs, val_fraction, 0)
    if not docs:
        raise ValueError(f"--data {data}: no held-out documents")
    return docs


def make_streams(
    docs: Sequence[str], encode, eos_id: int, max_len: int, n_streams: int, seed: int = 0, *, what: str = "model"
) -> list[list[int]]:
    """Up to ``n_streams`` token streams of ``max_len`` tokens: documents shuffled by ``seed``,
    encoded as ``doc + [eos]`` and concatenated (encoding stops once enough tokens exist)."""
    order = list(range(len(docs)))
    random.Random(seed).shuffle(order)
    need = n_streams * max_len
    buf: list[int] = []
    for i in order:
        buf.extend(encode(docs[i]))
        buf.append(eos_id)
        if len(buf) >= need:
            break
    n = min(n_streams, len(buf) // max_len)
    if n == 0:
        raise ValueError(f"the held-out text has {len(buf)} tokens with the tokenizer of {what}, fewer than one "
                         f"stream of {max_len} (the longest --lengths); use --data with more text or shorter --lengths")
    return [buf[k * max_len : (k + 1) * max_len] for k in range(n)]


def contexts(stream: Sequence[int], lengths: Sequence[int]) -> dict[int, list[int]]:
    """``{L: the last L tokens of stream}`` -- every context ends where the stream ends."""
    return {L: list(stream[len(stream) - L :]) for L in lengths}


def _sha(rows: Sequence[Sequence[int]]) -> str:
    h = hashlib.sha256()
    for r in rows:
        h.update(",".join(map(str, r)).encode())
        h.update(b";")
    return h.hexdigest()


def evaluate(
    predictors: Sequence[Any],
    *,
    lengths: Sequence[int] | str,
    score_tokens: int | None = None,
    streams: int = 8,
    data: str = "builtin",
    val_fraction: float = 0.02,
    seed: int = 0,
    docs: Sequence[str] | None = None,
    progress: bool = True,
) -> dict:
    """PPL vs length and NLL by position for every predictor (``encode``, ``tokenizer.eos_id``,
    ``token_logprobs`` -- a :class:`~rnope.evals.predictor.ModelPredictor`)."""
    lengths = parse_lengths(lengths)
    if score_tokens is None:
        score_tokens = default_score_tokens(lengths)
    if score_tokens < 1:
        raise ValueError(f"--score-tokens must be >= 1, got {score_tokens}")
    if score_tokens >= lengths[0]:
        raise ValueError(f"--score-tokens {score_tokens} must be smaller than the shortest length {lengths[0]} "
                         "(each scored token needs context)")
    if streams < 1:
        raise ValueError(f"--docs must be >= 1, got {streams}")
    texts = list(docs) if docs is not None else heldout_documents(data, val_fraction)
    max_len = lengths[-1]
    plans = []
    for p in predictors:
        tok = getattr(p, "tokenizer", None)
        if tok is None:
            raise ValueError(f"model {p.name!r} has no tokenizer: perplexity on text needs one")
        plans.append((p, make_streams(texts, p.encode, tok.eos_id, max_len, streams, seed, what=repr(p.name))))
    results = []
    for p, ss in plans:
        with progress_bar(len(ss) * (len(lengths) + 1), f"ppl {p.name}", progress) as bar:
            # NLL at every position of the full streams (also the max-length point)
            full = []
            for b in range(0, len(ss), p.batch_size):
                full.extend(p.token_logprobs(ss[b : b + p.batch_size], max_len - 1))
                bar.update(len(ss[b : b + p.batch_size]))
            pos_nll = [-math.fsum(f[0][k] for f in full) / len(full) for k in range(max_len - 1)]  # token k+1
            points = []
            for L in lengths:
                rows = [contexts(s, [L])[L] for s in ss]
                if L == max_len:
                    lps = [f[0][-score_tokens:] for f in full]
                    bar.update(len(ss))
                else:
                    lps = []
                    for b in range(0, len(rows), p.batch_size):
                        lps.extend(o[0] for o in p.token_logprobs(rows[b : b + p.batch_size], score_tokens))
                        bar.update(len(rows[b : b + p.batch_size]))
                n = sum(len(x) for x in lps)
                nll = -math.fsum(v for x in lps for v in x) / n
                points.append({"length": L, "ppl": math.exp(nll), "nll": nll, "n_tokens": n,
                               "scored_sha256": _sha([r[-score_tokens:] for r in rows])})
        bin_size = max(1, math.ceil(len(pos_nll) / MAX_BINS))
        starts = list(range(0, len(pos_nll), bin_size))
        binned = [math.fsum(pos_nll[s : s + bin_size]) / len(pos_nll[s : s + bin_size]) for s in starts]
        results.append({
            "model": p.name,
            "train_seq_len": int(p.train_seq_len),
            "points": points,
            "position_nll": {"bin_size": bin_size, "start": [s + 1 for s in starts], "nll": binned},
        })
    return {
        "task": "ppl",
        "results": results,
        "seed": int(seed),
        "versions": versions(),
        "settings": {"lengths": lengths, "score_tokens": score_tokens, "streams": streams,
                     "data": "<documents given>" if docs is not None else data,
                     "val_fraction": None if docs is not None else val_fraction,
                     "streams_used": {p.name: len(ss) for p, ss in plans}},
        "models": predictor_meta(predictors),
    }


def markdown(doc: dict) -> str:
    lengths = doc["settings"]["lengths"]
    s = doc["settings"]
    parts = ["# Perplexity vs evaluation length\n",
             f"The same final {s['score_tokens']} tokens of each held-out stream scored at every length "
             f"(data {s['data']}, streams {s['streams_used']}); `*` = training length.\n"]
    rows = []
    for r in doc["results"]:
        m = {x["length"]: x["ppl"] for x in r["points"]}
        rows.append([r["model"], r["train_seq_len"], *[m.get(L) for L in lengths]])
    head = ["model", "train len", *map(str, lengths)]
    parts.append(md_table(head, rows, digits=3))
    return "\n".join(parts)


def outputs(doc: dict) -> dict[str, str | bytes]:
    """``ppl.json``, ``ppl.md``, ``ppl.png`` (PPL vs length) and ``ppl_position.png``."""
    res = doc["results"]
    ppl_series = [(r["model"], [x["length"] for x in r["points"]], [x["ppl"] for x in r["points"]], r["train_seq_len"])
                  for r in res]
    pos_series = [(r["model"], [s + (r["position_nll"]["bin_size"] - 1) / 2 for s in r["position_nll"]["start"]],
                   r["position_nll"]["nll"], r["train_seq_len"]) for r in res]
    return {
        "ppl.json": to_json(doc),
        "ppl.md": markdown(doc),
        "ppl.png": lines_png(ppl_series, xlabel="evaluation length (tokens)", ylabel="perplexity (exp of mean NLL, same scored tokens)",
                             title="Perplexity vs evaluation length", logx=True, logy=True),
        "ppl_position.png": lines_png(pos_series, xlabel="token position", ylabel="mean NLL (nats)",
                                      title="NLL by token position (held-out streams)"),
    }
