"""Edited regions for the "+" metrics: the frame-0 edit mask tracked through the *source* video, so every
method is scored on the same regions. Computed once per sample and process, shared by all "+" metrics.

Both trackers make frame t's mask by warping the frame-0 mask with an affine map fitted with RANSAC
(inlier threshold `ransac_px`, in pixels):
- CoTracker (torch.hub `facebookresearch/co-tracker`, entry `cotracker3_offline`) tracks points sampled
  inside the frame-0 mask; frame t's map is fitted to the visible points' frame-0 -> frame-t motion.
- The flow tracker (the offline fallback) fits, at each step t -> t+1, an affine map to the forward optical
  flow of frame t's mask pixels, and composes those maps from frame 0.
`kind: auto` takes CoTracker when its code and weights are on disk, else the flow tracker; the tracker used
travels with the masks (`Regions.tracker`) into the score rows.
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from harness.cache import cache_key, cached
from harness.metric import Column
from harness.types import EditSample

log = logging.getLogger(__name__)


def sample_key(sample: EditSample) -> str:
    """The sample's id plus a digest of its source and mask (ids may repeat across datasets)."""
    h = hashlib.blake2b(digest_size=12)
    h.update(np.ascontiguousarray(sample.source).data)
    if sample.mask is not None:
        h.update(np.packbits(sample.mask).data)
    return f"{sample.id}:{sample.source.shape}:{h.hexdigest()}"


class SampleCache:
    """Per-sample values computed once in this process, keyed by the sample's content, so a sweep that runs
    method after method over a dataset computes each source's values once.

    `max_mb` bounds the memory kept (None: unbounded). Once full, new values are computed but not kept: a
    method-by-method sweep visits the samples in a cycle, where evicting the oldest (LRU) would never hit,
    while keeping the first ones hits for each of them in every later method.
    """

    def __init__(self, max_mb: float | None = None):
        self.max_bytes = None if max_mb is None else float(max_mb) * 2**20
        self.nbytes = 0
        self._d: dict[tuple[str, str], Any] = {}

    def get(self, sample: EditSample, name: str, factory: Callable[[], Any]) -> Any:
        key = (sample_key(sample), name)
        if key in self._d:
            return self._d[key]
        value = factory()
        size = _nbytes(value)
        if self.max_bytes is None or self.nbytes + size <= self.max_bytes:
            self._d[key] = value
            self.nbytes += size
        return value

    def __len__(self) -> int:
        return len(self._d)


def _nbytes(value: Any) -> int:
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    return int(getattr(value, "nbytes", 0))


@dataclass
class Regions:
    masks: np.ndarray  # bool T×H×W, the edited region of every frame
    tracker: str  # which tracker made them

    @property
    def by_cotracker(self) -> float:
        """The row's record of the tracker: 1 for CoTracker, 0 for the flow tracker."""
        return float(self.tracker.startswith("cotracker"))


#: The column every "+" metric adds, so each row says which tracker made its regions.
TRACKER_COLUMN = {"region_cotracker": Column(percent=False, higher_is_better=True, group="regions")}


class _PackedRegions:
    """Masks bit-packed (1 MB per 14×576×1024 sample), so every sample of a dataset can stay cached."""

    def __init__(self, regions: Regions):
        self.shape, self.tracker = regions.masks.shape, regions.tracker
        self.bits = np.packbits(regions.masks)

    @property
    def nbytes(self) -> int:
        return self.bits.nbytes

    def unpack(self) -> Regions:
        n = int(np.prod(self.shape))
        return Regions(np.unpackbits(self.bits, count=n).astype(bool).reshape(self.shape), self.tracker)


_REGIONS = SampleCache()  # unbounded: 1 MB per 14×576×1024 sample


def regions_for(sample: EditSample, tracker_cfg: dict, device: str = "cpu") -> Regions:
    """The tracked edit regions of `sample` (cached per sample and tracker config in this process)."""
    if sample.mask is None:
        raise ValueError(f"sample {sample.id!r} has no frame-0 mask; the '+' metrics need one")
    tracker = cached(cache_key("tracker", tracker_cfg, device), lambda: make_tracker(tracker_cfg, device))
    packed = _REGIONS.get(sample, cache_key(tracker_cfg),
                          lambda: _PackedRegions(Regions(tracker(sample.source, sample.mask), tracker.name)))
    return packed.unpack()


def resize_masks(masks: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    if tuple(masks.shape[1:]) == tuple(size):
        return masks
    t = torch.from_numpy(masks.astype(np.float32))[:, None]
    return F.interpolate(t, size=tuple(size), mode="nearest")[:, 0].numpy() > 0.5


def usable_frames(masks: np.ndarray, min_region: float) -> np.ndarray:
    """Indices of the frames whose edited region and its complement each cover at least `min_region` of the
    frame; the "+" metrics skip the others (region lost by the tracker, or tiny) and count them."""
    frac = masks.reshape(len(masks), -1).mean(1)
    return np.flatnonzero((frac >= min_region) & (1 - frac >= min_region))


def blank(video: np.ndarray, masks: np.ndarray, fill: int) -> np.ndarray:
    """`video` with the masked pixels of each frame set to one constant."""
    out = video.copy()
    out[masks] = fill
    return out


class FlowTracker:
    """Follows the region with optical flow: each step fits an affine map (RANSAC) to the forward flow of
    the current mask's pixels, composes it with the maps so far, and warps the frame-0 mask by the result.
    A region-wide affine fit is robust where per-pixel flow fails (textureless or fast objects)."""

    def __init__(self, estimator: dict, ransac_px: float = 1.0, device: str = "cpu"):
        from metrics.flow import make_flow

        self.flow = make_flow(estimator, device)
        self.ransac_px = ransac_px
        self.name = f"flow-affine({self.flow.name})"

    def __call__(self, video: np.ndarray, mask0: np.ndarray) -> np.ndarray:
        h, w = mask0.shape
        m0 = mask0.astype(np.uint8)
        total = np.eye(3)
        masks = [mask0.astype(bool)]
        for f in self.flow(video[:-1], video[1:]):
            ys, xs = np.nonzero(masks[-1])
            step = None
            if len(xs) >= 3:
                p0 = np.stack([xs, ys], 1).astype(np.float32)
                step, _ = cv2.estimateAffine2D(p0, p0 + f[ys, xs], method=cv2.RANSAC, ransacReprojThreshold=self.ransac_px)
            if step is None:  # region gone: an empty mask, skipped by the metrics
                masks.append(np.zeros((h, w), bool))
                continue
            total = np.vstack([step, [0, 0, 1]]) @ total
            masks.append(cv2.warpAffine(m0, total[:2], (w, h), flags=cv2.INTER_NEAREST) > 0)
        return np.stack(masks)


#: CoTracker's offline hub entries and the checkpoint each downloads into the torch hub cache
#: (`<hub dir>/checkpoints/<file>`, the file name of the entry's URL in the repo's hubconf.py).
COTRACKER_CHECKPOINTS = {"cotracker3_offline": "scaled_offline.pth", "cotracker2v1": "cotracker2v1.pth",
                         "cotracker2": "cotracker2.pth"}


def cotracker_checkpoint(entry: str, checkpoint: str | None = None) -> Path:
    """The weight file for `entry`: the configured one, else the hub cache's file for that entry."""
    if checkpoint:
        return Path(checkpoint).expanduser()
    if entry not in COTRACKER_CHECKPOINTS:
        raise ValueError(f"CoTracker entry {entry!r}: no known checkpoint (known: {', '.join(COTRACKER_CHECKPOINTS)}); "
                         "set models.tracker.cotracker.checkpoint=FILE")
    return Path(torch.hub.get_dir()) / "checkpoints" / COTRACKER_CHECKPOINTS[entry]


class CoTracker:
    """CoTracker through torch.hub on `points` points sampled inside the frame-0 mask. The hub entry is built
    with pretrained=False and its weights are loaded here as tensors only (weights_only=True or safetensors)."""

    def __init__(self, repo: str = "facebookresearch/co-tracker", entry: str = "cotracker3_offline", source: str = "github",
                 checkpoint: str | None = None, points: int = 256, min_visible: int = 6, ransac_px: float = 3.0,
                 seed: int = 0, device: str = "cpu"):
        from harness.weights import MissingWeights
        from metrics.checkpoints import load_state_dict

        self.points, self.min_visible, self.ransac_px, self.seed, self.device = points, min_visible, ransac_px, seed, device
        self.name = entry
        path = cotracker_checkpoint(entry, checkpoint)
        if not path.is_file():
            raise MissingWeights(f"CoTracker {entry}: no weights at {path}; set models.tracker.cotracker.checkpoint=FILE "
                                 "or use models.tracker.kind=flow")
        model = torch.hub.load(repo, entry, source=source, trust_repo=True, pretrained=False)
        model.model.load_state_dict(load_state_dict(path))
        self.checkpoint = str(path)
        self.model = model.eval().to(device)

    @torch.no_grad()
    def __call__(self, video: np.ndarray, mask0: np.ndarray) -> np.ndarray:
        h, w = mask0.shape
        ys, xs = np.nonzero(mask0)
        pick = np.random.default_rng(self.seed).choice(len(xs), size=min(self.points, len(xs)), replace=False)
        pts0 = np.stack([xs[pick], ys[pick]], 1).astype(np.float32)
        queries = torch.from_numpy(np.concatenate([np.zeros((len(pts0), 1), np.float32), pts0], 1))[None].to(self.device)
        v = torch.from_numpy(video).permute(0, 3, 1, 2)[None].float().to(self.device)  # B×T×3×H×W in 0..255
        tracks, visible = self.model(v, queries=queries)
        tracks, visible = tracks[0].float().cpu().numpy(), visible[0].cpu().numpy().astype(bool)
        masks = [mask0.astype(bool)]
        for t in range(1, len(video)):
            keep = visible[t]
            A = None
            if keep.sum() >= self.min_visible:
                A, _ = cv2.estimateAffine2D(pts0[keep], tracks[t][keep], method=cv2.RANSAC, ransacReprojThreshold=self.ransac_px)
            if A is None:  # the region left the frame or is hidden: an empty mask, skipped by the metrics
                masks.append(np.zeros((h, w), bool))
                continue
            masks.append(cv2.warpAffine(mask0.astype(np.uint8), A, (w, h), flags=cv2.INTER_NEAREST) > 0)
        return np.stack(masks)


def cotracker_on_disk(repo: str, source: str, checkpoint: str | None, entry: str = "cotracker3_offline") -> bool:
    """Whether CoTracker can load without the network: a local checkout (or the torch hub cache's copy of the
    repo) and the entry's weights (the configured file, or the hub cache's file for that entry)."""
    hub = Path(torch.hub.get_dir())
    if source == "local":
        code = (Path(repo).expanduser() / "hubconf.py").is_file()
    else:
        owner, name = repo.split(":")[0].split("/")
        refs = [repo.split(":")[1]] if ":" in repo else ["main", "master"]
        code = any((hub / f"{owner}_{name}_{ref}").is_dir() for ref in refs)
    try:
        weights = cotracker_checkpoint(entry, checkpoint).is_file()
    except ValueError:
        return False
    return code and weights


def make_tracker(cfg: dict, device: str = "cpu"):
    """`kind: cotracker | flow | auto` (auto: CoTracker when on disk, else the flow tracker, with a warning)."""
    cfg = dict(cfg)
    kind, co, flow = cfg["kind"], dict(cfg.get("cotracker") or {}), dict(cfg.get("flow") or {})
    if kind == "auto":
        on_disk = co and cotracker_on_disk(co.get("repo", "facebookresearch/co-tracker"), co.get("source", "github"),
                                           co.get("checkpoint"), co.get("entry", "cotracker3_offline"))
        kind = "cotracker" if on_disk else "flow"
        if kind == "flow":
            log.warning("CoTracker is not on disk (set models.tracker.cotracker.repo/checkpoint); "
                        "the '+' metrics use the flow tracker, recorded in the rows")
    if kind == "cotracker":
        return CoTracker(**co, device=device)
    if kind == "flow":
        return FlowTracker(**flow, device=device)
    raise ValueError(f"tracker kind must be auto, cotracker or flow; got {kind!r}")
