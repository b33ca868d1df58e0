"""Deterministic DDIM inversion that keeps the latent of every step, for methods that replay the source.

Song et al. 2021, eq. 12 with σ = 0 run backwards (x_{t-Δ} → x_t), through diffusers' `DDIMInverseScheduler`.
The sampling pass then looks up the inverted latent at each of its own timesteps; with the same
`steps_offset`, a 50-step schedule is a subset of a 500-step one, and otherwise the nearest kept timestep
is used.
"""
from __future__ import annotations

from typing import Callable

import torch
from diffusers import DDIMInverseScheduler


class Trajectory:
    """Inverted latents by timestep (the clean latent under timestep -1)."""

    def __init__(self):
        self.latents: dict[int, torch.Tensor] = {}

    def add(self, t: int, latent: torch.Tensor) -> None:
        self.latents[int(t)] = latent

    def at(self, t: int | torch.Tensor) -> torch.Tensor:
        """The kept latent whose timestep is nearest to `t`."""
        t = int(t)
        return self.latents[min(self.latents, key=lambda k: abs(k - t))]


@torch.no_grad()
def invert(eps: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x0: torch.Tensor, scheduler_config, steps: int) -> Trajectory:
    """Invert the clean latent `x0` in `steps` DDIM steps; `eps(x_t, t)` is the noise prediction (one UNet call)."""
    inverse = DDIMInverseScheduler.from_config(scheduler_config)
    inverse.set_timesteps(steps, device=x0.device)
    if int(inverse.timesteps.max()) >= inverse.config.num_train_timesteps:  # diffusers would fail at the last step
        raise ValueError(f"{steps} DDIM inversion steps reach timestep {int(inverse.timesteps.max())}, past the "
                         f"scheduler's {inverse.config.num_train_timesteps} training timesteps: use fewer steps")
    traj = Trajectory()
    traj.add(-1, x0)
    x = x0
    for t in inverse.timesteps:
        x = inverse.step(eps(x, t), t, x).prev_sample
        traj.add(int(t), x)
    return traj
