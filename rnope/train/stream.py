"""The training stream: packed corpus sequences mixed with synthetic retrieval documents.

Tiny models learn retrieval only if retrieval is in the training mix (docs/study.md), so a
fraction ``ratio`` of the training *sequences* are synthetic passkey / NIAH / multi-key documents from :func:`rnope.tasks.synthetic_documents` (split ``"train"``: templates,
filler, keys and values disjoint from evaluation).

Everything is a pure function of ``(seed, length, index)``, so a run resumes exactly from a few
counters (:attr:`TrainStream.positions`):

* Sequence ``i`` of the stream at length ``L`` is synthetic iff ``floor((i+1)·r) > floor(i·r)``
  (exactly ``r`` of the sequences, evenly spread); otherwise it is the next corpus sample.
* Corpus sample ``c``: epoch ``c // n`` of the packed samples (:class:`rnope.data.PackedDataset`),
  each epoch in its own seeded order.
* Synthetic sequence ``s``: documents drawn with seeds ``(seed, L, s, j)``, each ``doc + <eos>``,
  filling the ``L + 1`` tokens; the few tokens left over are ``<pad>`` and excluded from the loss.

Distributed runs read disjoint slices of every global micro-batch (:meth:`TrainStream.take`), so
N processes see exactly the samples one process sees with the same global batch.

Long/short mixing (the long-context stage, :class:`~rnope.train.runconfig.Stage`): micro-batches
hold the same number of tokens — ``B`` rows of ``L`` or ``B·L/S`` rows of ``S`` — and global
micro-batch ``j`` is long iff ``floor((j+1)·p) > floor(j·p)`` with ``p`` from :func:`long_fraction`,
so that ``long_ratio`` of all sequences are long (the paper's 3:1 short:long mix is
``long_ratio=0.25``).
"""

from __future__ import annotations

import re
from fractions import Fraction
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..data import PackedDataset, TokenShards
from ..model import IGNORE_INDEX
from ..tasks import stable_seed, synthetic_documents
from ..tasks.haystack import split_sentences

__all__ = ["IGNORE", "TrainStream", "check_synthetic", "evenly", "long_fraction", "micro_is_long", "synthetic_row"]

IGNORE = IGNORE_INDEX  # target id excluded from the loss (the model's)
_ESSAY_CHARS = 60_000  # training prose for the essay haystacks
_MIN_FILL = 64  # don't try to fit another document into fewer tokens


def _frac(x: float) -> Fraction:
    return Fraction(x).limit_denominator(1_000_000)


def evenly(i: int, ratio: Fraction) -> bool:
    """Is element ``i`` of an evenly spread ``ratio`` selection chosen? (Bresenham)."""
    return (i + 1) * ratio.numerator // ratio.denominator > i * ratio.numerator // ratio.denominator


def long_fraction(long_ratio: float, seq_len: int, short_seq_len: int) -> Fraction:
    """Fraction ``p`` of equal-token micro-batches that must be long so ``long_ratio`` of sequences are.

    A long micro-batch holds ``B`` sequences, a short one ``k·B`` (``k = seq_len / short_seq_len``):
    ``r = p / (p + (1-p)·k)``, so ``p = r·k / (1 - r + r·k)`` (r=1/4, k=4 → p=4/7).
    """
    r, k = _frac(long_ratio), Fraction(seq_len, short_seq_len)
    return r * k / (1 - r + r * k)


def micro_is_long(j: int, p: Fraction) -> bool:
    """Whether global micro-batch ``j`` of a mixed stage is a long one."""
    return evenly(j, p)


def synthetic_row(tok, *, seed: int, kinds: Sequence[str], essay: list[str], L: int, s: int) -> tuple[np.ndarray, int]:
    """Synthetic sequence ``s`` of length ``L``: ``(L + 1 tokens, number of real tokens)``.

    Documents (``doc + <eos>``) are drawn with seeds ``(seed, L, s, j)`` until fewer than 64 tokens
    are left or no document fits what is left; the rest is ``<pad>``. Raises ValueError if not even
    the first document fits ``L + 1`` tokens.
    """
    out: list[int] = []
    remaining, j = L + 1, 0
    while remaining >= _MIN_FILL or j == 0:
        doc_seed = stable_seed("rnope-train-synthetic", seed, L, s, j)
        try:
            doc = next(synthetic_documents(doc_seed, 1, encode=tok.encode, lengths=[remaining], kinds=kinds, essay=essay))
        except ValueError as e:
            if j == 0 or "too short" not in str(e):
                raise
            break
        ids = (tok.encode(doc) + [tok.eos_id])[:remaining]
        out.extend(ids)
        remaining -= len(ids)
        j += 1
    row = np.full(L + 1, tok.pad_id, dtype=np.int64)
    row[: len(out)] = out
    return row, len(out)


def check_synthetic(tok, *, kinds: Sequence[str], L: int, ratio: float) -> None:
    """Raise a one-line ValueError if synthetic documents cannot fill sequences of ``L`` tokens."""
    if ratio <= 0:
        return
    essay = ["The river runs past the old mill. Nobody remembers who built it."]
    try:
        synthetic_row(tok, seed=0, kinds=kinds, essay=essay, L=L, s=0)
    except ValueError as e:
        if "too short" not in str(e):
            raise ValueError(f"synthetic_kinds: {e}") from None
        m = re.search(r"needs (\d+) tokens", str(e))
        why = f"the smallest needs {int(m.group(1)) - 1}" if m else str(e)
        raise ValueError(
            f"synthetic_ratio {ratio:g} needs retrieval documents, but sequences of {L} tokens cannot hold one "
            f"({why}); use a longer seq_len or --synthetic-ratio 0"
        ) from None


class TrainStream:
    """Rows of ``L + 1`` tokens (inputs + shifted targets) from corpus shards and synthetic documents."""

    def __init__(
        self,
        train_dir: str | Path,
        tokenizer,
        *,
        seed: int,
        kinds: Sequence[str],
        positions: dict | None = None,
    ):
        self.shards = TokenShards(train_dir)
        self.tok = tokenizer
        self.seed = int(seed)
        self.kinds = tuple(kinds)
        self.positions: dict[str, dict[str, int]] = {k: dict(v) for k, v in (positions or {}).items()}
        self._packed: dict[tuple[int, int], PackedDataset] = {}
        self._essay: list[str] | None = None

    # ---- one row ------------------------------------------------------------------------------
    def essay(self) -> list[str]:
        """Sentences of the first training documents (the essay haystack; train split only)."""
        if self._essay is None:
            n = min(len(self.shards), _ESSAY_CHARS)
            ids = self.shards.get(0, n).astype(np.int64)
            docs = [self.tok.decode(part) for part in np.split(ids, np.flatnonzero(ids == self.tok.eos_id))]
            self._essay = split_sentences([d for d in docs if d.strip()]) or ["The text is plain."]
        return self._essay

    def corpus_row(self, L: int, c: int) -> np.ndarray:
        key_n = (len(self.shards) - 1) // L
        if key_n < 1:
            raise ValueError(f"the training split has {len(self.shards)} tokens, too few for one sequence of {L}")
        epoch, i = divmod(c, key_n)
        ds = self._packed.get((L, epoch))
        if ds is None:
            if len(self._packed) > 8:
                self._packed.clear()
            ds = self._packed[(L, epoch)] = PackedDataset(
                self.shards, L, seed=stable_seed("rnope-train-corpus", self.seed, L, epoch) % 2**63
            )
        j = ds.sample_index(i)
        return self.shards.get(j * L, L + 1).astype(np.int64)

    def synthetic_row(self, L: int, s: int, kinds: Sequence[str] | None = None) -> tuple[np.ndarray, int]:
        return synthetic_row(self.tok, seed=self.seed, kinds=kinds or self.kinds, essay=self.essay(), L=L, s=s)

    # ---- batches ------------------------------------------------------------------------------
    def take(
        self, L: int, rows: int, ratio: float, rank: int = 0, world: int = 1, kinds: Sequence[str] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's slice of the next global micro-batch of ``rows · world`` sequences of length ``L``.

        Returns ``x`` (rows, L) and ``y`` (rows, L) with ``IGNORE`` on padding targets; advances the
        stream's position for ``L`` by the whole global micro-batch (every rank calls this identically).
        """
        pos = self.positions.setdefault(str(L), {"rows": 0, "corpus": 0, "synthetic": 0})
        r = _frac(ratio)
        x = np.empty((rows, L), dtype=np.int64)
        y = np.empty((rows, L), dtype=np.int64)
        lo, hi = rank * rows, (rank + 1) * rows
        for g in range(rows * world):
            synth = evenly(pos["rows"], r)
            idx = pos["synthetic" if synth else "corpus"]
            if lo <= g < hi:
                if synth:
                    row, used = self.synthetic_row(L, idx, kinds)
                else:
                    row, used = self.corpus_row(L, idx), L + 1
                x[g - lo], y[g - lo] = row[:-1], row[1:]
                if used < L + 1:
                    y[g - lo, max(used - 1, 0) :] = IGNORE
            pos["rows"] += 1
            pos["synthetic" if synth else "corpus"] += 1
        return torch.from_numpy(x), torch.from_numpy(y)


# ---- per-step batches -------------------------------------------------------------------------------
def micro_shape(stage, batch_size: int, step_in_stage: int, m: int, grad_accum: int) -> tuple[int, int]:
    """(sequence length, rows per process) of micro-batch ``m`` of a step in ``stage``."""
    if not stage.mixed:
        return stage.seq_len, batch_size
    p = long_fraction(stage.long_ratio, stage.seq_len, stage.short_seq_len)
    if micro_is_long(step_in_stage * grad_accum + m, p):
        return stage.seq_len, batch_size
    return stage.short_seq_len, batch_size * (stage.seq_len // stage.short_seq_len)


def step_batches(stream: TrainStream, stages, starts: Sequence[int], *, batch_size: int, grad_accum: int,
                 default_ratio: float, rank: int, world: int, start: int, stop: int):
    """Yield ``(step, [(x, y, n_targets), ...], positions)`` for steps ``start..stop-1``.

    ``positions`` is the stream position after the step (what a checkpoint at ``step + 1`` stores).
    """
    import bisect
    import copy

    for step in range(start, stop):
        i = bisect.bisect_right(starts, step) - 1
        st = stages[i]
        ratio = default_ratio if st.synthetic_ratio is None else st.synthetic_ratio
        micros = []
        for m in range(grad_accum):
            L, rows = micro_shape(st, batch_size, step - starts[i], m, grad_accum)
            x, y = stream.take(L, rows, ratio, rank, world, kinds=st.synthetic_kinds)
            micros.append((x, y, int((y != IGNORE).sum())))
        yield step, micros, copy.deepcopy(stream.positions)


def prefetch(gen, depth: int = 2):
    """Run generator ``gen`` in a background thread, ``depth`` items ahead (same items, same order)."""
    import queue
    import threading

    q: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def work():
        try:
            for item in gen:
                while not stop.is_set():
                    try:
                        q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(done)
        except BaseException as e:  # re-raised in the consumer
            q.put(e)

    t = threading.Thread(target=work, daemon=True, name="rnope-prefetch")
    t.start()
    try:
        while True:
            item = q.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
