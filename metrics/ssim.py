"""SSIM between the edited and the source frames (paper: source faithfulness), as scikit-image computes it."""
from __future__ import annotations

import numpy as np
from skimage.metrics import structural_similarity

from harness.metric import Column, VideoMetric
from harness.types import EditSample


def video_ssim(a: np.ndarray, b: np.ndarray, sigma: float = 1.5) -> float:
    """Mean over frames of Gaussian-weighted SSIM (Wang et al. 2004: σ = 1.5) on uint8 RGB frames."""
    vals = [
        structural_similarity(x, y, channel_axis=-1, data_range=255, gaussian_weights=True, sigma=sigma, use_sample_covariance=False)
        for x, y in zip(a, b)
    ]
    return float(np.mean(vals))


class SSIM(VideoMetric):
    columns = {"ssim": Column(percent=True, higher_is_better=True, group="source faithfulness")}

    def __init__(self, sigma: float = 1.5):
        self.sigma = sigma

    def score(self, sample: EditSample, edited: np.ndarray) -> dict[str, float]:
        return {"ssim": video_ssim(edited, sample.source, self.sigma)}
