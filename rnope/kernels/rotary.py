"""Interleaved rotary embedding as one complex multiply (eager fast path of :func:`rnope.rope.apply_rotary`).

Rotating the interleaved pair ``(x[2i], x[2i+1])`` by angle θ is multiplying the complex number
``x[2i] + i·x[2i+1]`` by ``cos θ + i·sin θ``: the same four products and two sums as
:func:`rnope.rope.apply_rotary`, in fp32, but as one vectorised kernel over a complex view instead
of strided slices, a stack and a flatten (measured ~10× faster eager on CPU, forward and backward,
on the transposed (B, H, T, D) layout the projections produce). ``torch.compile`` does not generate
code for complex ops, so compiled graphs keep the real-valued form (:func:`use_complex`).
"""

from __future__ import annotations

import torch


def use_complex(layout: str) -> bool:
    """The complex path applies to the interleaved layout, outside ``torch.compile``."""
    return layout == "interleaved" and not torch.compiler.is_compiling()


def cis(cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """(B, T, D/2) cos and sin -> (B, 1, T, D/2) complex64 ``cos + i·sin`` (broadcasts over heads)."""
    return torch.complex(cos.float(), sin.float())[:, None]


def apply_rotary_complex(x: torch.Tensor, rot: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved pairs of ``x`` (B, H, T, D) by ``rot`` = :func:`cis`; fp32 math, dtype kept."""
    xf = x.float()
    if xf.stride(-1) != 1 or xf.storage_offset() % 2 or any(s % 2 for s in xf.stride()[:-1]):
        xf = xf.contiguous()  # view_as_complex needs (re, im) adjacent and even strides
    out = torch.view_as_real(torch.view_as_complex(xf.unflatten(-1, (-1, 2))) * rot)
    return out.flatten(-2).to(x.dtype)
