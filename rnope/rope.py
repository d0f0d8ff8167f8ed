"""Rotary position embedding (Su et al. 2021, arXiv 2104.09864) and its extension methods.

Layout: Cohere / HF ``cohere`` & ``cohere2`` rotate **interleaved** pairs ``(x[2i], x[2i+1])``
(GPT-J style); Llama-family models rotate **halves** ``(x[i], x[i+D/2])``. The rotation is done in
fp32 and cast back. Base frequencies ``ω_i = θ^(-2i/d)``.

Extension methods (``RopeOptions.scaling``; ``s`` = ``factor``, ``L`` = ``original_len``; ``rnope.config.RopeOptions``):

* ``linear`` — Position Interpolation (Chen et al. 2023, arXiv 2306.15595): ``ω_i / s``.
* ``ntk`` — NTK-aware scaling (bloc97 2023; HF "dynamic" at a fixed length):
  ``θ' = θ · s^(d/(d-2))``.
* ``yarn`` — YaRN (Peng et al. 2023, arXiv 2309.00071): per-pair ramp between interpolation
  and extrapolation, ``ω'_i = ω_i/s · (1-γ_i) + ω_i · γ_i`` with ``γ`` a linear ramp over the
  pairs whose wavelength lies between ``L/β_fast`` and ``L/β_slow`` (β = 32, 1), and the
  attention factor ``0.1·ln(s) + 1`` multiplying cos and sin (so logits scale by its square).
* ``resonance`` — Resonance RoPE (Wang et al. 2024, arXiv 2403.00071): wavelengths shorter than
  ``L`` rounded to integers, ``ω'_i = 2π / round(2π/ω_i)``.
* ``fope`` — Fourier Position Embedding (Hua et al. 2024, arXiv 2412.17739): frequencies whose
  period exceeds ``L`` are clipped to zero (undertrained), and every pair is a Fourier series
  over all frequencies, ``cos'(n) = Σ_j A_ij cos(ω_j n)`` (likewise sin) with a fixed
  ``A = I + σ·N(0,1)`` off-diagonal (``σ = fope_sigma``, seeded by the layer).

Partial RoPE (p-RoPE, Barbero et al. 2024, arXiv 2410.06205): ``fraction = p`` keeps the
``p`` highest-frequency pairs and zeroes the rest (those pairs carry no position).
Theta scaling / ABF (Xiong et al. 2023, arXiv 2309.16039) is a larger ``theta``.
"""

from __future__ import annotations

import math

import torch

SCALINGS = ("none", "linear", "ntk", "yarn", "resonance", "fope")


def inv_frequencies(head_dim: int, theta: float, device: torch.device | str | None = None) -> torch.Tensor:
    """``theta^(-2i/head_dim)`` for i in [0, head_dim/2), fp32."""
    exponent = torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim
    return 1.0 / (theta**exponent)


def yarn_ramp(head_dim: int, theta: float, original_len: int, beta_fast: float = 32.0, beta_slow: float = 1.0) -> torch.Tensor:
    """γ_i ∈ [0, 1]: 1 = extrapolate (keep ω_i), 0 = interpolate (ω_i / s) — YaRN's correction range."""

    def dim_for(rotations: float) -> float:  # the pair index whose wavelength fits `rotations` times in L
        return head_dim * math.log(original_len / (rotations * 2 * math.pi)) / (2 * math.log(theta))

    low = max(math.floor(dim_for(beta_fast)), 0)
    high = min(math.ceil(dim_for(beta_slow)), head_dim - 1)
    if low == high:
        high += 0.001
    ramp = ((torch.arange(head_dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    return 1.0 - ramp


def rope_tables(opts, head_dim: int, *, layer_idx: int = 0) -> tuple[torch.Tensor, float, torch.Tensor | None]:
    """(inv_freq (D/2,), attention factor, FoPE mixing matrix (D/2, D/2) or None) of a layer whose
    ``LayerSpec.rope_options`` are ``opts`` (a :class:`rnope.config.RopeOptions`, ``original_len`` resolved)."""
    theta, s, L = opts.theta, opts.factor, opts.original_len
    kind = opts.scaling
    if kind == "ntk":
        theta = theta * s ** (head_dim / (head_dim - 2))
    inv = inv_frequencies(head_dim, theta)
    factor, mix = 1.0, None
    if kind == "linear":
        inv = inv / s
    elif kind == "yarn":
        g = yarn_ramp(head_dim, theta, L)
        inv = inv / s * (1 - g) + inv * g
        factor = 0.1 * math.log(s) + 1.0 if s > 1 else 1.0
    elif kind == "resonance":
        wavelength = 2 * math.pi / inv
        rounded = torch.where(wavelength < L, wavelength.round().clamp(min=1), wavelength)
        inv = 2 * math.pi / rounded
    elif kind == "fope":
        inv = torch.where(2 * math.pi / inv > L, torch.zeros_like(inv), inv)
        g = torch.Generator().manual_seed(1009 + layer_idx)
        n = head_dim // 2
        noise = torch.randn(n, n, generator=g) * opts.fope_sigma
        mix = torch.eye(n) + noise * (1 - torch.eye(n))
    if opts.fraction < 1.0:
        keep = round(opts.fraction * inv.numel())  # highest frequencies come first
        inv = torch.cat((inv[:keep], torch.zeros(inv.numel() - keep)))
    return inv, factor, mix


def rotary_angles(
    positions: torch.Tensor, inv_freq: torch.Tensor, factor: float = 1.0, mix: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables in fp32: positions (B, T) -> two (B, T, head_dim/2)."""
    angles = positions.to(torch.float32)[..., None] * inv_freq
    cos, sin = angles.cos(), angles.sin()
    if mix is not None:
        cos, sin = cos @ mix.T, sin @ mix.T
    if factor != 1.0:
        cos, sin = cos * factor, sin * factor
    return cos, sin


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, layout: str = "interleaved") -> torch.Tensor:
    """Rotate pairs of ``x`` (B, H, T, D) by angles (B, T, D/2); fp32 math, dtype kept."""
    dtype = x.dtype
    c, s = cos[:, None], sin[:, None]  # (B, 1, T, D/2)
    if layout == "half":
        x0, x1 = x.float().chunk(2, dim=-1)
        return torch.cat((x0 * c - x1 * s, x1 * c + x0 * s), dim=-1).to(dtype)
    xf = x.float().unflatten(-1, (-1, 2))  # (B, H, T, D/2, 2)
    x0, x1 = xf[..., 0], xf[..., 1]
    out = torch.stack((x0 * c - x1 * s, x1 * c + x0 * s), dim=-1)
    return out.flatten(-2).to(dtype)


def llama4_temperature(positions: torch.Tensor, attn_scale: float = 0.1, floor_scale: int = 8192) -> torch.Tensor:
    """Llama 4's NoPE query scale ``1 + attn_scale·ln(floor((pos+1)/floor_scale) + 1)``.

    Exactly 1 for pos < floor_scale - 1 (Llama 4 reference, ``attn_temperature_tuning``).
    """
    return 1.0 + attn_scale * torch.log(torch.floor((positions.to(torch.float32) + 1.0) / floor_scale) + 1.0)
