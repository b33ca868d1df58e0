"""What a metric is to the harness.

Two shapes, in the spirit of torchmetrics' update/compute contract:
- `VideoMetric.score(sample, edited)` gives one or more named per-video numbers (the row's columns);
- `SetMetric` needs the whole dataset (FVD): `features(sample, edited)` per video (cached next to the
  sample's row, so resumed runs need not recompute them), then `compute(all_features)` once per run.
Each declares its columns so reports know how to print them without importing the metric.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass

import numpy as np

from harness.types import EditSample


@dataclass(frozen=True)
class Column:
    """How a metric column is shown: ×100 like the paper, which direction is better, its paper group."""

    percent: bool = False
    higher_is_better: bool = True
    group: str = ""


class VideoMetric(abc.ABC):
    columns: dict[str, Column] = {}
    #: Models are real or tiny; tiny scores are labelled as such by the runner.
    tiny: bool = False

    @abc.abstractmethod
    def score(self, sample: EditSample, edited: np.ndarray) -> dict[str, float]:
        """Per-video scores for `edited` (uint8 T×H×W×3). Omit a column that does not apply (e.g. no ground truth)."""


class SetMetric(abc.ABC):
    columns: dict[str, Column] = {}
    tiny: bool = False

    @abc.abstractmethod
    def features(self, sample: EditSample, edited: np.ndarray) -> dict[str, np.ndarray]:
        """Per-video features that `compute` needs."""

    @abc.abstractmethod
    def compute(self, features: list[dict[str, np.ndarray]]) -> dict[str, float]:
        """One number per column over the whole set of videos."""
