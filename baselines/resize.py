"""Mapping benchmark frames to a method's working size and back.

The working size follows the clip's shape (`working_size`): among a method's published sizes the one
nearest the clip's aspect (TokenFlow: 512×512 for square clips, 384×672 for 16:9), or, optionally, that
size's pixel area reshaped to the clip's aspect. The whole frame is then resized (no crop), so the method
sees all of the source and its output covers every pixel the metrics score; what aspect mismatch remains
is stretched there and un-stretched on the way back, paid identically by every frame.
"""
from __future__ import annotations

import math
from typing import Iterable

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


def to_working_crop(frames: np.ndarray, side: int, device, dtype=torch.float32) -> torch.Tensor:
    """uint8 T×H×W×3 → float T×3×side×side in [-1, 1]: the short side scaled to `side`, then the centre square
    (FateZero's loader: `short_size_scale`, antialiased bilinear, then `center_crop`). `to_benchmark` then
    stretches the result to the clip's size."""
    h, w = frames.shape[-3:-1]
    scale = side / min(h, w)
    height, width = (side, int(w * scale)) if h < w else (int(h * scale), side)  # int(): the loader truncates
    x = to_working(frames, height, width, device, dtype)
    top, left = (height - side) // 2, (width - side) // 2
    return x[..., top:top + side, left:left + side]


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


def candidates(sizes: Iterable[Iterable[int]], name: str) -> list[tuple[int, int]]:
    """A config's candidate working sizes as plain (height, width) pairs, each a multiple of the VAE's factor 8."""
    out = [(int(h), int(w)) for h, w in sizes]
    if not out:
        raise ValueError(f"{name}: no working size given")
    for h, w in out:
        check_multiple(h, w, 8, name)
    return out


def working_size(clip_hw: tuple[int, int], sizes: Iterable[Iterable[int]], keep_aspect: bool = False,
                 multiple: int = 64) -> tuple[int, int]:
    """(height, width) to run a clip of size `clip_hw` at.

    `sizes`: candidate (height, width) pairs; the one whose aspect is nearest the clip's (in log ratio) is
    taken. With `keep_aspect`, its pixel area is kept and its shape set to the clip's aspect, each side
    rounded to a multiple of `multiple` (at least one multiple).
    """
    ratio = clip_hw[1] / clip_hw[0]
    h, w = min(((int(h), int(w)) for h, w in sizes), key=lambda s: abs(math.log(s[1] / s[0] / ratio)))
    if not keep_aspect:
        return h, w
    height = math.sqrt(h * w / ratio)

    def snap(x: float) -> int:
        return max(multiple, round(x / multiple) * multiple)

    return snap(height), snap(height * ratio)
