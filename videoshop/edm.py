"""EDM preconditioning for SVD's v-prediction (σ_data = 1), one Euler step, its exact inverse, and the σ schedule.

With F the raw UNet output: c_in = 1/√(σ²+1), c_skip = 1/(σ²+1), c_out = −σ/√(σ²+1), c_noise = ¼·ln σ, and
the denoiser D(x;σ) = c_skip·x + c_out·F(c_in·x; c_noise). σ values are Python floats; tensors stay float32.
"""
from __future__ import annotations

import math

import torch
from diffusers import CMStochasticIterativeScheduler
from diffusers.schedulers.scheduling_utils import SchedulerMixin


def c_in(sigma: float) -> float:
    return 1.0 / math.sqrt(sigma**2 + 1.0)


def c_skip(sigma: float) -> float:
    return 1.0 / (sigma**2 + 1.0)


def c_out(sigma: float) -> float:
    return -sigma / math.sqrt(sigma**2 + 1.0)


def c_noise(sigma: float) -> float:
    """The UNet's timestep input: SVD's continuous timestep ¼·ln σ."""
    return 0.25 * math.log(sigma)


def denoised(x: torch.Tensor, F: torch.Tensor, sigma: float) -> torch.Tensor:
    """D(x;σ) = c_skip·x + c_out·F."""
    return c_skip(sigma) * x + c_out(sigma) * F


def model_output_for(x: torch.Tensor, D: torch.Tensor, sigma: float) -> torch.Tensor:
    """The F that makes D(x;σ) equal D: lets a closed-form denoiser stand in for the UNet."""
    return (D - c_skip(sigma) * x) / c_out(sigma)


def euler_step(x: torch.Tensor, F: torch.Tensor, sigma: float, sigma_next: float) -> torch.Tensor:
    """One deterministic Euler step of the probability-flow ODE dx/dσ = (x − D)/σ, from σ to σ_next < σ."""
    return x + (sigma_next - sigma) * (x - denoised(x, F, sigma)) / sigma


def euler_step_inverse(x: torch.Tensor, F: torch.Tensor, sigma: float, sigma_next: float) -> torch.Tensor:
    """Eq. 7: the state at σ_next > σ from which `euler_step(·, F, σ_next, σ)` lands exactly on x, F held fixed.

    x̂_{t+1} = [σ_{t+1}·x̂_t + (σ_t − σ_{t+1})·c_out(σ_{t+1})·F] / [(σ_t − σ_{t+1})·(1 − c_skip(σ_{t+1})) + σ_{t+1}]
    """
    num = sigma_next * x + (sigma - sigma_next) * c_out(sigma_next) * F
    return num / ((sigma - sigma_next) * (1.0 - c_skip(sigma_next)) + sigma_next)


def schedule(scheduler: SchedulerMixin, steps: int, strength: float = 1.0) -> list[float]:
    """The σ levels a generation visits, high to low and ending at 0.

    `strength` < 1 keeps the last int(steps·strength) steps, as image-to-image pipelines do
    (25 steps, strength 0.55 → 13 steps from index 12, σ ≈ 15.59). SVD's `EulerDiscreteScheduler` gives Karras
    levels; a `CMStochasticIterativeScheduler` configured as AnimateLCM-SVD-xt's (40 training levels, σ in
    [0.002, 700], ρ = 7) gives its few-step levels (4 steps: 700, 128.6, 13.68, 0.497), where AnimateLCM's own
    scheduler ends at 0 (its last step returns the denoised sample) and diffusers' class at σ_min: 0 is used.
    """
    scheduler.set_timesteps(steps)
    sigmas = [float(s) for s in scheduler.sigmas]
    if isinstance(scheduler, CMStochasticIterativeScheduler):
        sigmas[-1] = 0.0
    used = min(int(steps * strength), steps)
    return sigmas[steps - used:]
