"""Rotary position embedding (Su et al. 2021, arXiv 2104.09864), Cohere layout.

Cohere / HF ``cohere`` & ``cohere2`` rotate **interleaved** pairs ``(x[2i], x[2i+1])`` (GPT-J
style), not halves as Llama does; the rotation is computed in fp32 and cast back. Frequencies are
``inv_freq[i] = theta^(-2i/d)``.
"""

from __future__ import annotations

import torch


def inv_frequencies(head_dim: int, theta: float, device: torch.device | str | None = None) -> torch.Tensor:
    """``theta^(-2i/head_dim)`` for i in [0, head_dim/2), fp32."""
    exponent = torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim
    return 1.0 / (theta**exponent)


def rotary_angles(positions: torch.Tensor, inv_freq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin of ``positions[..., None] * inv_freq`` in fp32: (B, T) -> two (B, T, head_dim/2)."""
    angles = positions.to(torch.float32)[..., None] * inv_freq
    return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved pairs of ``x`` (B, H, T, D) by angles (B, T, D/2); fp32 math, dtype kept."""
    dtype = x.dtype
    xf = x.float().unflatten(-1, (-1, 2))  # (B, H, T, D/2, 2)
    x0, x1 = xf[..., 0], xf[..., 1]
    c, s = cos[:, None], sin[:, None]  # (B, 1, T, D/2)
    out = torch.stack((x0 * c - x1 * s, x1 * c + x0 * s), dim=-1)
    return out.flatten(-2).to(dtype)
