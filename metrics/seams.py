"""Seams of block-edited long videos: per-pair scores split at the block boundaries, so drift across blocks shows.

A clip of T frames edited in blocks of L frames that overlap by one frame (`videoshop.pipeline.block_starts`) has
its seam frames at L−1, 2(L−1), …: frame s is the previous block's last output and the next block's first. The pair
(s, s+1) is where the next block's own frames begin; every other consecutive pair lies inside one block. For a
per-pair score (flow error, CLIP consistency) the diagnostic is its mean over seam pairs, over inner pairs, and
their ratio (seam / inner: above 1 for an error that grows at the seams, below 1 for a consistency that drops).
It is computed for every method at the same positions (a method without blocks reads ≈ 1), and only for clips
longer than one block.
"""
from __future__ import annotations

import numpy as np

from harness.metric import Column


def seam_pairs(num_frames: int, block: int) -> np.ndarray:
    """bool (T−1,): True for the pairs (s, s+1) that start at a seam frame s = k(L−1), k ≥ 1, s < T−1."""
    pairs = np.zeros(max(num_frames - 1, 0), bool)
    pairs[block - 1 :: block - 1] = True
    return pairs


def seam_scores(name: str, per_pair: np.ndarray, block: int | None) -> dict[str, float]:
    """`<name>_seam`, `<name>_inner` and `seam_<name>_ratio` of per-pair values (T−1,), or {} when the clip is
    no longer than one block (or `block` is None)."""
    if block is None or len(per_pair) + 1 <= block:
        return {}
    at = seam_pairs(len(per_pair) + 1, block)
    seam, inner = float(per_pair[at].mean()), float(per_pair[~at].mean())
    return {f"{name}_seam": seam, f"{name}_inner": inner, f"seam_{name}_ratio": seam / inner if inner else float("nan")}


def seam_columns(name: str, percent: bool, higher_is_better: bool) -> dict[str, Column]:
    """The three columns `seam_scores` gives for `name`."""
    return {f"{name}_seam": Column(percent=percent, higher_is_better=higher_is_better, group="seams"),
            f"{name}_inner": Column(percent=percent, higher_is_better=higher_is_better, group="seams"),
            f"seam_{name}_ratio": Column(percent=False, higher_is_better=higher_is_better, group="seams")}
