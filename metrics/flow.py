"""Flow and Flow+ (paper Table 2, source faithfulness): end-point error between the optical flow of the
source video and that of the edited video, frame t -> t+1, at one fixed evaluation size for every method.

Estimators (`models.flow.kind`): torchvision RAFT large (`raft`: default weights C_T_SKHT_V2, or a local
file) and OpenCV DIS (`dis`: weight-free); each kind's settings sit under its own key.

Flow+ ("the EPE within only unedited regions") has two readings, `plus_mode`:
- `masked_epe` (default, the plain reading): the same full-frame flows as Flow, their EPE averaged over the
  pixels outside frame t's tracked edited region;
- `blank_then_flow`: the region is blanked with `fill` in both videos before their flows are computed, so
  the edited content cannot reach the kept pixels through the estimator's receptive field.
Either way a pair t -> t+1 is skipped when frame t's region (or its complement) is lost or tiny, by the
test CLIP+ uses (`metrics.regions.usable_frames`, `min_region`); skipped pairs are counted in
`flow_region_skipped`, and with no pair left Flow+ does not apply (the column is left out).
"""
from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlparse

import cv2
import numpy as np
import torch

from harness.cache import cache_key, cached
from harness.metric import Column, VideoMetric
from harness.types import EditSample
from harness.weights import MissingWeights, hub_reachable
from metrics.checkpoints import load_state_dict
from metrics.regions import TRACKER_COLUMN, SampleCache, blank, regions_for, resize_masks, usable_frames
from metrics.seams import seam_columns, seam_scores
from metrics.tensors import batches, resize, to_tensor


class DISFlow:
    """OpenCV's Dense Inverse Search flow: no weights, CPU, a few ms per pair."""

    name = "dis"
    tiny = False

    def __init__(self, preset: str = "medium"):
        presets = {"ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST, "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
                   "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM}
        self.dis = cv2.DISOpticalFlow_create(presets[preset])

    def __call__(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Forward flow (dx, dy) from each frame of `a` to the same-index frame of `b`: float32 N×H×W×2."""
        gray = lambda f: cv2.cvtColor(f, cv2.COLOR_RGB2GRAY)  # noqa: E731
        return np.stack([self.dis.calc(gray(x), gray(y), None) for x, y in zip(a, b)]).astype(np.float32)


class RAFTFlow:
    """torchvision RAFT (large by default). Runs in fp32: its iterative refinement is not fp16-safe."""

    name = "raft"

    def __init__(self, arch: str = "raft_large", weights: str | None = "C_T_SKHT_V2", checkpoint: str | None = None,
                 num_flow_updates: int = 12, batch_size: int = 8, tiny: bool = False, seed: int = 0, device: str = "cpu"):
        self.device, self.num_flow_updates, self.batch_size, self.tiny = device, num_flow_updates, batch_size, tiny
        self.model = cached(cache_key("raft", arch, weights, checkpoint, tiny, seed, device),
                            lambda: load_raft(arch, weights, checkpoint, tiny, seed, device))

    @torch.no_grad()
    def __call__(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        h, w = a.shape[1:3]
        if h % 8 or w % 8 or min(h, w) < 128:
            raise ValueError(f"RAFT needs H, W divisible by 8 and >= 128; got {h}x{w} (set the metric's size)")
        out = []
        for s in batches(len(a), self.batch_size):
            x = to_tensor(a[s], self.device) * 2 - 1
            y = to_tensor(b[s], self.device) * 2 - 1
            out.append(self.model(x, y, num_flow_updates=self.num_flow_updates)[-1].permute(0, 2, 3, 1).float().cpu())
        return torch.cat(out).numpy()


def load_raft(arch: str, weights: str | None, checkpoint: str | None, tiny: bool, seed: int, device: str) -> torch.nn.Module:
    """RAFT with real weights (torchvision's enum from the torch hub cache, or a local state-dict file; both
    read with weights_only=True), or seeded random weights when `tiny`. Missing real weights are an error,
    never random weights."""
    from torchvision.models import optical_flow

    build = getattr(optical_flow, arch)
    if tiny:
        torch.manual_seed(seed)
        return build(weights=None).eval().to(device)
    if checkpoint:
        if not Path(checkpoint).is_file():
            raise MissingWeights(f"RAFT checkpoint {checkpoint} does not exist")
        state = load_state_dict(checkpoint)
    else:
        enum = getattr(optical_flow, {"raft_large": "Raft_Large_Weights", "raft_small": "Raft_Small_Weights"}[arch])[weights]
        cached_file = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(enum.url)
        if not cached_file.exists() and not hub_reachable(enum.url):
            raise MissingWeights(f"RAFT weights {weights}: not in the torch hub cache ({cached_file}) and "
                                 f"{urlparse(enum.url).hostname} cannot be reached; set models.flow.raft.checkpoint=FILE "
                                 "or run with models=tiny")
        state = enum.get_state_dict(progress=False, check_hash=True, weights_only=True, map_location="cpu")
    model = build(weights=None)
    model.load_state_dict(state)
    return model.eval().to(device)


FLOW_KINDS = {"dis": DISFlow, "raft": RAFTFlow}


def make_flow(cfg: dict, device: str = "cpu"):
    """A flow estimator from its config: `kind` (raft | dis) picks it, the section named by `kind` holds its
    settings (the other kinds' sections are alternatives, unused)."""
    kind = cfg["kind"]
    if kind not in FLOW_KINDS:
        raise ValueError(f"flow estimator kind must be one of {', '.join(FLOW_KINDS)}; got {kind!r}")
    settings = dict(cfg.get(kind) or {})
    return RAFTFlow(**settings, device=device) if kind == "raft" else DISFlow(**settings)


#: Flow+ readings (see the module docstring); the first is the default.
PLUS_MODES = ("masked_epe", "blank_then_flow")


class FlowError(VideoMetric):
    """`flow`: mean EPE over all pixels and all T−1 consecutive pairs (any length); `flow_plus`: mean over usable
    pairs of the EPE averaged over the pixels outside the tracked edited region; `flow_region_skipped`: pairs
    skipped for a lost or tiny region; with `block_length`, the seam diagnostic (`metrics.seams`)."""

    columns = {
        "flow": Column(percent=False, higher_is_better=False, group="source faithfulness"),
        "flow_plus": Column(percent=False, higher_is_better=False, group="source faithfulness"),
        "flow_region_skipped": Column(percent=False, higher_is_better=False, group="regions"),
        **TRACKER_COLUMN,
        **seam_columns("flow", percent=False, higher_is_better=False),
    }

    def __init__(self, estimator: dict, tracker: dict | None = None, size: tuple[int, int] = (320, 576),
                 plus_mode: str = "masked_epe", min_region: float = 0.001, fill: int = 127,
                 source_cache_mb: float | None = 4096, block_length: int | None = None, device: str = "cpu"):
        if plus_mode not in PLUS_MODES:
            raise ValueError(f"metrics.flow.plus_mode must be one of {', '.join(PLUS_MODES)}; got {plus_mode!r}")
        self.estimator = make_flow(estimator, device)
        self.tiny = bool(getattr(self.estimator, "tiny", False))
        self.tracker, self.size, self.device = tracker, tuple(size), device
        self.plus_mode, self.min_region, self.fill = plus_mode, min_region, fill
        self.block_length = block_length  # seam diagnostic (metrics.seams) for clips longer than one block
        # the source's flows are the same for every method: kept for as many sources as `source_cache_mb` holds
        self._source = SampleCache(source_cache_mb)

    def _resized(self, video: np.ndarray) -> np.ndarray:
        return (resize(to_tensor(video, "cpu"), self.size).clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).numpy()

    def _flows(self, video: np.ndarray) -> np.ndarray:
        return self.estimator(video[:-1], video[1:])

    def score(self, sample: EditSample, edited: np.ndarray) -> dict[str, float]:
        src_flow = self._source.get(sample, "flow", lambda: self._flows(self._resized(sample.source)))
        epe = np.linalg.norm(self._flows(self._resized(edited)) - src_flow, axis=-1)
        scores = {"flow": float(epe.mean()), **seam_scores("flow", epe.mean(axis=(1, 2)), self.block_length)}
        if self.tracker is not None and sample.mask is not None:
            scores.update(self._plus(sample, edited, epe))
        return scores

    def _plus(self, sample: EditSample, edited: np.ndarray, epe: np.ndarray) -> dict[str, float]:
        regions = regions_for(sample, self.tracker, self.device)
        keep = ~resize_masks(regions.masks, self.size)[:-1]  # pair t -> t+1: the pixels of frame t outside its region
        pairs = [t for t in usable_frames(regions.masks, self.min_region) if t < len(keep) and keep[t].any()]
        out = {"flow_region_skipped": float(len(keep) - len(pairs)), "region_cotracker": regions.by_cotracker}
        if not pairs:  # the region is lost (or covers the frame) in every pair: Flow+ does not apply
            return out
        if self.plus_mode == "blank_then_flow":
            # blank at the native size, then resize: no edited pixel can bleed into the kept ones
            blanked = lambda v: self._flows(self._resized(blank(v, regions.masks, self.fill)))  # noqa: E731
            src_b = self._source.get(sample, "flow_blanked", lambda: blanked(sample.source))
            epe = np.linalg.norm(blanked(edited) - src_b, axis=-1)
        out["flow_plus"] = float(np.mean([epe[t][keep[t]].mean() for t in pairs]))
        return out
