"""Latent statistics: Videoshop's normalization before inversion (Eq. 8, step 1) and rescaling after generation (step 4).

Latents are B×T×C×H×W.
"""
from __future__ import annotations

import torch

EPS = 1e-6  # the release's guard in the per-frame normalization


def normalize(x: torch.Tensor, axis: str = "frame") -> torch.Tensor:
    """Normalize the source latents before inversion.

    frame (release): per frame, all of C·H·W pooled, (x − mean)/(std + 1e-6).
    channel (paper, Eq. 8): x / σ_in, σ_in per channel over all frames and pixels.
    none: unchanged (the `no_norm` ablation).
    """
    if axis == "frame":
        flat = x.flatten(2)
        mean, std = flat.mean(-1), flat.std(-1)
        return (x - mean[..., None, None, None]) / (std[..., None, None, None] + EPS)
    if axis == "channel":
        std = x.transpose(1, 2).flatten(2).std(-1)  # B×C
        return x / std[:, None, :, None, None]
    if axis == "none":
        return x
    raise ValueError(f"normalization must be frame, channel or none, got {axis!r}")


def standardize(x: torch.Tensor) -> torch.Tensor:
    """One global mean/std over the whole tensor (the release's treatment of the source image latents)."""
    return (x - x.mean()) / (x.std() + EPS)


def rescale(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Eq. 8: x_out = (σ_img/σ₀)·(x − μ₀) + μ_img per channel.

    μ₀, σ₀ are the per-channel statistics of the first frame of x (B×T×C×H×W), μ_img, σ_img those of the
    reference image latent `ref` (B×C×H×W); the same affine map is applied to every frame.
    """
    first = x[:, 0].flatten(2)
    ref = ref.flatten(2)
    mu0, sd0 = first.mean(-1)[:, None, :, None, None], first.std(-1)[:, None, :, None, None]
    mu, sd = ref.mean(-1)[:, None, :, None, None], ref.std(-1)[:, None, :, None, None]
    return (x - mu0) / sd0 * sd + mu
