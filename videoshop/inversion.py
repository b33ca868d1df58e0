"""Inverting and sampling SVD's probability-flow ODE in σ-space: Videoshop's noise extrapolation, naive, and BDIA.

A model is any callable `F(x, σ) -> model output` (the UNet with its conditioning, or a closed-form denoiser
in tests). Inversion walks σ upward from 0; sampling walks the same levels downward.
"""
from __future__ import annotations

from typing import Callable

import torch

from videoshop.edm import denoised, euler_step, euler_step_inverse

Model = Callable[[torch.Tensor, float], torch.Tensor]


def invert(F: Model, x0: torch.Tensor, sigmas: list[float], *, mode: str = "extrapolate",
           threshold: float | None = 1.0, noise: str = "fixed", generator: torch.Generator | None = None) -> torch.Tensor:
    """Invert the clean latent x0 from σ = sigmas[-1] (0) up to sigmas[0], one Euler-inverse step (Eq. 7) per level.

    `sigmas` is a generation schedule (high to low, ending at 0). The model is evaluated at σ_{t+1} on
    - mode="naive" (Eq. 5): the current state x̂_t;
    - mode="extrapolate" (Eq. 6): x̄_{t+1} = x0 + (σ_{t+1}/σ_t)·(x̂_t − x0) when σ_t > threshold, else x0 plus
      noise at σ_{t+1}: noise="fixed" (release) one ε drawn before the loop, x0 + ε·σ_{t+1}·std(x0);
      noise="fresh" (paper) a new N(0, σ²_{t+1}) draw each step. threshold=None extrapolates at every step,
      starting from σ_0 = 0, which divides by zero: the NaN the paper reports without a threshold.
    """
    if mode not in ("extrapolate", "naive"):
        raise ValueError(f"inversion mode must be extrapolate or naive, got {mode!r}")
    if noise not in ("fixed", "fresh"):
        raise ValueError(f"below-threshold noise must be fixed or fresh, got {noise!r}")
    up = sigmas[::-1]
    eps = torch.randn(x0.shape, generator=generator, dtype=torch.float32).to(x0)
    x = x0
    for s, s_next in zip(up[:-1], up[1:]):
        if mode == "naive":
            x_eval = x
        elif threshold is None or s > threshold:
            x_eval = x0 + (x - x0) / s * s_next  # Eq. 6, tensor division: σ_t = 0 gives NaN, not an exception
        elif noise == "fixed":
            x_eval = x0 + eps * s_next * x0.std()
        else:
            x_eval = x0 + torch.randn(x0.shape, generator=generator, dtype=torch.float32).to(x0) * s_next
        x = euler_step_inverse(x, F(x_eval, s_next), s, s_next)  # Eq. 7
    return x


def sample(F: Model, x: torch.Tensor, sigmas: list[float]) -> torch.Tensor:
    """Plain deterministic Euler sampling from x at sigmas[0] down to sigmas[-1]."""
    for s, s_next in zip(sigmas[:-1], sigmas[1:]):
        x = euler_step(x, F(x, s), s, s_next)
    return x


def _phi(x: torch.Tensor, D: torch.Tensor, sigma: float, sigma_to: float) -> torch.Tensor:
    """BDIA's Φ(x; σ→σ'): one Euler move of x from σ to σ' along the direction (x − D)/σ."""
    return x + (sigma_to - sigma) * (x - D) / sigma


def bdia_invert(F: Model, x0: torch.Tensor, sigmas: list[float], gamma: float = 0.94) -> tuple[torch.Tensor, torch.Tensor]:
    """BDIA inversion (Zhang, Lewis, Kleijn 2023) in σ-space; returns (z at sigmas[0], z at sigmas[1]).

    With generation states z_k at σ_k (σ_0 > … > σ_N = 0): z_N = x0; z_{N−1} by one naive inverse step; then
    z_{k−1} = (z_{k+1} − Φ(z_k; σ_k→σ_{k+1}))/γ + Φ(z_k; σ_k→σ_{k−1}), the sampling recurrence solved for the older state.
    """
    n = len(sigmas) - 1
    z_next = x0  # z_{k+1}
    z = euler_step_inverse(x0, F(x0, sigmas[n - 1]), sigmas[n], sigmas[n - 1])  # z_{N-1}
    for k in range(n - 1, 0, -1):
        D = denoised(z, F(z, sigmas[k]), sigmas[k])
        z_prev = (z_next - _phi(z, D, sigmas[k], sigmas[k + 1])) / gamma + _phi(z, D, sigmas[k], sigmas[k - 1])
        z_next, z = z, z_prev
    return z, z_next


def bdia_sample(F: Model, pair: tuple[torch.Tensor, torch.Tensor], sigmas: list[float], gamma: float = 0.94) -> torch.Tensor:
    """BDIA sampling from the pair (z_0, z_1) that `bdia_invert` returns:
    z_{k+1} = γ·z_{k−1} − γ·Φ(z_k; σ_k→σ_{k−1}) + Φ(z_k; σ_k→σ_{k+1})."""
    z_prev, z = pair
    for k in range(1, len(sigmas) - 1):
        D = denoised(z, F(z, sigmas[k]), sigmas[k])
        z_next = gamma * z_prev - gamma * _phi(z, D, sigmas[k], sigmas[k - 1]) + _phi(z, D, sigmas[k], sigmas[k + 1])
        z_prev, z = z, z_next
    return z
