"""Scores against the ground-truth edited video, where a dataset has one (the synthetic sample track)."""
from __future__ import annotations

import numpy as np
from skimage.metrics import peak_signal_noise_ratio

from harness.metric import Column, VideoMetric
from harness.types import EditSample
from metrics.ssim import video_ssim


class GroundTruthScores(VideoMetric):
    """`gt_psnr` (dB over the whole video) and `gt_ssim` (mean per-frame SSIM) of edited vs true edited video."""

    columns = {
        "gt_psnr": Column(percent=False, higher_is_better=True, group="ground truth"),
        "gt_ssim": Column(percent=True, higher_is_better=True, group="ground truth"),
    }

    def __init__(self, sigma: float = 1.5, max_psnr: float = 100.0, device: str = "cpu"):
        self.sigma, self.device = sigma, device
        self.max_psnr = max_psnr  # identical videos have infinite PSNR; report this cap instead

    def score(self, sample: EditSample, edited: np.ndarray) -> dict[str, float]:
        truth = sample.target_video
        if truth is None:
            return {}
        if np.array_equal(truth, edited):
            psnr = self.max_psnr
        else:
            psnr = min(self.max_psnr, float(peak_signal_noise_ratio(truth, edited, data_range=255)))
        return {"gt_psnr": psnr, "gt_ssim": video_ssim(edited, truth, self.sigma, self.device)}
