"""Frames to tensors and back, batched, in the precision a device should use (fp16 on CUDA)."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def model_dtype(device: str) -> torch.dtype:
    return torch.float16 if str(device).startswith("cuda") else torch.float32


def to_tensor(frames: np.ndarray, device: str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 N×H×W×3 -> float N×3×H×W in [0, 1] on `device`."""
    t = torch.from_numpy(np.ascontiguousarray(frames)).to(device)
    return t.permute(0, 3, 1, 2).to(dtype) / 255.0


def resize(x: torch.Tensor, size: tuple[int, int], mode: str = "bilinear") -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode=mode, align_corners=False, antialias=mode in ("bilinear", "bicubic"))


def batches(n: int, size: int):
    for i in range(0, n, size):
        yield slice(i, min(n, i + size))
