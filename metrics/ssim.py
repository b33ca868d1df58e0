"""SSIM between the edited and the source frames (paper: source faithfulness), as scikit-image computes it.

`structural_similarity(x, y, channel_axis=-1, data_range=255, gaussian_weights=True, sigma=1.5,
use_sample_covariance=False)` (Wang et al. 2004), written in torch so that it runs on the GPU, batched over
frames: the five local moments are one separable Gaussian filter (scipy's kernel, truncated at 3.5 σ),
and only the interior that scikit-image averages (the image less the filter radius on every side) is computed,
so its border mode never matters. float64 throughout, as scikit-image computes uint8 images: equal to it up to
the order of summation (tests/test_metrics.py). On the CPU the metric calls scikit-image itself.
"""
from __future__ import annotations

import numpy as np
import torch
from skimage.metrics import structural_similarity

from harness.metric import Column, VideoMetric
from harness.types import EditSample

TRUNCATE = 3.5  # scikit-image's truncation of the Gaussian: an 11-tap window at σ = 1.5
K1, K2 = 0.01, 0.03  # the stabilizing constants' factors (Wang et al. 2004)
DATA_RANGE = 255.0  # uint8 frames


def gaussian_kernel(sigma: float) -> torch.Tensor:
    """scipy.ndimage's 1-D Gaussian: radius int(truncate·σ + 0.5), normalized to sum 1."""
    radius = int(TRUNCATE * sigma + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    phi = torch.exp(-0.5 * x * x / sigma ** 2)
    return phi / phi.sum()


def _blur(z: torch.Tensor, k: torch.Tensor, dim: int) -> torch.Tensor:
    """Valid (unpadded) 1-D correlation with `k` along `dim`: a weighted sum of shifted views."""
    n = z.shape[dim] - len(k) + 1
    out = k[0] * z.narrow(dim, 0, n)
    for j in range(1, len(k)):
        out += k[j] * z.narrow(dim, j, n)
    return out


def _dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64  # MPS has no float64


def frame_ssim(a: np.ndarray, b: np.ndarray, sigma: float = 1.5, device: str = "cpu", batch: int = 8) -> torch.Tensor:
    """Per-frame SSIM of two uint8 T×H×W×3 videos (mean over channels and the interior pixels), `batch` frames at
    a time; a T-vector on the CPU."""
    if a.shape != b.shape:
        raise ValueError(f"SSIM needs videos of one shape, got {a.shape} and {b.shape}")
    dev = torch.device(device)
    dtype = _dtype(dev)
    k = gaussian_kernel(sigma).to(dev, dtype)
    if min(a.shape[1:3]) < len(k):
        raise ValueError(f"SSIM's {len(k)}×{len(k)} window exceeds the {a.shape[1]}×{a.shape[2]} frames")
    c = a.shape[-1]
    c1, c2 = (K1 * DATA_RANGE) ** 2, (K2 * DATA_RANGE) ** 2
    out = []
    for i in range(0, len(a), batch):
        x = torch.from_numpy(np.ascontiguousarray(a[i:i + batch])).to(dev).permute(0, 3, 1, 2).to(dtype)
        y = torch.from_numpy(np.ascontiguousarray(b[i:i + batch])).to(dev).permute(0, 3, 1, 2).to(dtype)
        moments = _blur(_blur(torch.cat([x, y, x * x, y * y, x * y], 1), k, -2), k, -1)
        ux, uy, uxx, uyy, uxy = moments.split(c, 1)
        vx, vy, vxy = uxx - ux * ux, uyy - uy * uy, uxy - ux * uy
        s = (2 * ux * uy + c1) * (2 * vxy + c2) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
        out.append(s.mean(dim=(2, 3)).mean(dim=1).cpu())
    return torch.cat(out).double()


def video_ssim(a: np.ndarray, b: np.ndarray, sigma: float = 1.5, device: str = "cpu") -> float:
    """Mean over frames of Gaussian-weighted SSIM (σ = 1.5) on uint8 RGB frames: on an accelerator in torch, on
    the CPU with scikit-image itself (scipy's C filters are faster there than torch's)."""
    if torch.device(device).type != "cpu":
        return float(frame_ssim(a, b, sigma, device).mean())
    return float(np.mean([structural_similarity(x, y, channel_axis=-1, data_range=DATA_RANGE, gaussian_weights=True,
                                                sigma=sigma, use_sample_covariance=False) for x, y in zip(a, b)]))


class SSIM(VideoMetric):
    columns = {"ssim": Column(percent=True, higher_is_better=True, group="source faithfulness")}

    def __init__(self, sigma: float = 1.5, device: str = "cpu"):
        self.sigma, self.device = sigma, device

    def score(self, sample: EditSample, edited: np.ndarray) -> dict[str, float]:
        return {"ssim": video_ssim(edited, sample.source, self.sigma, self.device)}
