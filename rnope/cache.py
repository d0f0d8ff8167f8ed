"""Hybrid KV cache: every position for global layers, a ring of W slots for sliding layers.

Created by :meth:`rnope.Transformer.new_cache` and passed to ``forward`` (the cache is an object,
not state hidden in modules). For L cached tokens it holds K and V for
``n_global·L + Σ_local min(slots, L)`` positions, where ``slots`` is the window (sliding) or the
chunk (chunked) — the paper's 0.25 + 0.75·W/L of a full-attention cache for RNoPE-SWA.

Times vs positions: ``seen`` counts tokens written (the stream time, shared by all rows); a row's
position is ``time - start[row]`` where ``start`` is its left padding. Positions continue from the
number of tokens ever seen, never from the size of a capped ring (transformers#38156).
"""

from __future__ import annotations

import torch

from .config import LayerSpec, ModelConfig


class LayerCache:
    """K/V store of one layer. ``slots`` = None keeps every position; otherwise a ring buffer."""

    def __init__(self, spec: LayerSpec, batch: int, n_kv_head: int, head_dim: int, max_len: int, dtype, device):
        self.spec = spec
        ring = spec.kv_slots
        self.size = max_len if ring is None else min(ring, max_len)
        self.ring = ring is not None and ring < max_len
        shape = (batch, n_kv_head, self.size, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        # stream time held by each slot (-1 = empty); only rings need it
        self.time = torch.full((self.size,), -1, dtype=torch.long, device=device)

    def write(self, k: torch.Tensor, v: torch.Tensor, times: torch.Tensor) -> None:
        """The one cache write: keys/values (B, Hkv, T, D) at stream ``times`` (T,) go to slots
        ``times % size``, in place (a ring keeps the last ``size`` of them; a full layer's buffer
        holds every position, so its slot is the time itself). The slot comes from a tensor, never
        a Python int, so a compiled decode step traces one graph for every token."""
        keep = min(k.shape[2], self.size)
        if keep < k.shape[2]:
            k, v, times = k[:, :, -keep:], v[:, :, -keep:], times[-keep:]
        slots = times % self.size
        self.k.index_copy_(2, slots, k.to(self.k.dtype))
        self.v.index_copy_(2, slots, v.to(self.v.dtype))
        self.time.index_copy_(0, slots, times)

    def update(self, k: torch.Tensor, v: torch.Tensor, times: torch.Tensor, seen: int | None):
        """Store new keys at ``times``; return (keys, values, key_times) for the new queries to attend.

        ``seen`` None (static shapes, the decode step): write, then return the whole fixed-size
        buffers; unwritten and out-of-window slots are masked by their times. Otherwise ``times`` =
        seen..seen+T-1 and the returned keys are everything the new queries may need: for a global
        layer the prefix up to the newest token; for a ring the old slots followed by the new keys
        (so a chunk longer than W still sees its own window), or just the ring for one token.
        """
        T = k.shape[2]
        if seen is None or (self.ring and T == 1):
            self.write(k, v, times)
            return self.k, self.v, self.time
        if not self.ring:
            self.write(k, v, times)
            return self.k[:, :, : seen + T], self.v[:, :, : seen + T], self.time[: seen + T]
        keys = torch.cat((self.k, k.to(self.k.dtype)), dim=2)
        vals = torch.cat((self.v, v.to(self.v.dtype)), dim=2)
        key_times = torch.cat((self.time, times))
        self.write(k, v, times)
        return keys, vals, key_times

    @property
    def nbytes(self) -> int:
        return self.k.nbytes + self.v.nbytes


class HybridCache:
    """One :class:`LayerCache` per layer plus the stream time ``seen`` and per-row ``start``."""

    def __init__(self, config: ModelConfig, batch_size: int, max_seq_len: int, *, dtype=torch.float32, device=None):
        if batch_size < 1:
            raise ValueError(f"cache batch_size must be >= 1, got {batch_size}")
        if max_seq_len < 1:
            raise ValueError(f"cache max_seq_len must be >= 1, got {max_seq_len}")
        self.config = config
        self.batch_size = batch_size
        self.max_seq_len = max_seq_len
        self.layers = [
            LayerCache(spec, batch_size, config.n_kv_head, config.head_dim, max_seq_len, dtype, device)
            for spec in config.layers
        ]
        self.seen = 0
        self.start: torch.Tensor | None = None  # (B,) left padding, set by the first forward

    def check(self, batch: int, new_tokens: int) -> None:
        if batch != self.batch_size:
            raise ValueError(f"cache was made for batch_size {self.batch_size}, got a batch of {batch}")
        if self.seen + new_tokens > self.max_seq_len:
            raise ValueError(
                f"cache full: {self.seen} tokens cached + {new_tokens} new > max_seq_len {self.max_seq_len}"
            )

    def advance(self, new_tokens: int) -> None:
        """The one place the stream time moves forward (called by the model after all layers)."""
        self.seen += new_tokens

    @property
    def nbytes(self) -> int:
        """Bytes of K and V held (the time bookkeeping is not counted)."""
        return sum(layer.nbytes for layer in self.layers)

    def __len__(self) -> int:
        return self.seen
