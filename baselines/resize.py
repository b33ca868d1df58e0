"""Mapping benchmark frames to a method's working size and back.

The whole frame is resized (no crop), so the method sees all of the source and its output covers every
pixel the metrics score; a clip whose aspect differs from the working size is stretched there and
un-stretched on the way back. The price is some anisotropic blur, paid identically by every frame.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def to_working(frames: np.ndarray, height: int, width: int, device, dtype=torch.float32) -> torch.Tensor:
    """uint8 T×H×W×3 (or H×W×3) → float T×3×height×width in [-1, 1], as the VAE expects."""
    x = torch.from_numpy(np.ascontiguousarray(frames if frames.ndim == 4 else frames[None]))
    x = x.permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
    if x.shape[-2:] != (height, width):
        x = F.interpolate(x, size=(height, width), mode="bilinear", antialias=True, align_corners=False)
    return x.to(device=device, dtype=dtype)


def to_benchmark(video: torch.Tensor, height: int, width: int) -> np.ndarray:
    """float T×3×h×w in [-1, 1] → uint8 T×height×width×3 at the benchmark's size."""
    x = video.float().cpu()
    if x.shape[-2:] != (height, width):
        x = F.interpolate(x, size=(height, width), mode="bilinear", antialias=True, align_corners=False)
    x = x.add(1.0).mul(127.5).round().clamp(0, 255)
    return x.permute(0, 2, 3, 1).to(torch.uint8).numpy()


def check_multiple(height: int, width: int, factor: int, name: str) -> None:
    if height % factor or width % factor:
        raise ValueError(f"{name}: working size {height}×{width} must be a multiple of {factor}")
