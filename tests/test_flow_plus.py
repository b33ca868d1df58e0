"""Flow+ on synthetic clips with known answers: the masked mean EPE of the full-frame flows (an estimator
returning analytic flows), pairs with a lost or tiny region skipped and counted like CLIP+, and the
blank-then-flow reading as an explicit option."""
from __future__ import annotations

import numpy as np
import pytest

import metrics.flow
from harness.types import EditSample
from metrics.flow import FlowError
from metrics.regions import Regions

T, H, W = 8, 64, 96
BOX = 16                         # the moving object: a BOX×BOX square
BG = np.array([2.0, 0.0])        # background motion (dx, dy), px per frame, in both videos
V_SRC = np.array([1.0, 0.0])     # the object's motion in the source
V_EDIT = np.array([-3.0, 3.0])   # ... and in the edited video: |V_EDIT - V_SRC| = 5 inside the region
JITTER = 0.5                     # the edited video's extra background motion (dy) on usable pairs ...
JITTER_SKIPPED = 3.0             # ... and on the pairs whose region is lost or tiny (must not count)
LOST, TINY_FRAME = (3, 4), 5     # the tracker loses the region on frames 3, 4; frame 5's region is one pixel
DIS = {"kind": "dis", "dis": {"preset": "medium"}}


def object_masks() -> np.ndarray:
    m = np.zeros((T, H, W), bool)
    for t in range(T):
        y, x = 20, 10 + 2 * t
        m[t, y:y + BOX, x:x + BOX] = True
    return m


def render(colour: int, rng_seed: int = 0) -> np.ndarray:
    """A textured background panning by BG plus the object (a flat colour) at its true positions."""
    tex = np.random.default_rng(rng_seed).integers(0, 256, (H, W + 2 * T * 2, 3), dtype=np.uint8)
    frames = np.stack([tex[:, 2 * t:2 * t + W] for t in range(T)]).copy()
    frames[object_masks()] = colour
    return frames


class AnalyticFlow:
    """A stand-in estimator with known answers: each registered video's analytic flows, looked up by content."""

    name, tiny = "analytic", False

    def __init__(self):
        self.flows: dict[bytes, np.ndarray] = {}

    def add(self, video: np.ndarray, flows: np.ndarray) -> None:
        self.flows[video[:-1].tobytes()] = flows.astype(np.float32)

    def __call__(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return self.flows[a.tobytes()]


def analytic_flows(inside: np.ndarray, jitter: np.ndarray) -> np.ndarray:
    """(T-1)×H×W×2: BG + (0, jitter[t]) outside the object of frame t, `inside` on it."""
    f = np.broadcast_to(BG, (T - 1, H, W, 2)).copy()
    f[..., 1] += jitter[:, None, None]
    f[object_masks()[:-1]] = inside
    return f


def tracked_masks() -> np.ndarray:
    masks = object_masks()
    masks[list(LOST)] = False
    masks[TINY_FRAME] = False
    masks[TINY_FRAME, 0, 0] = True  # 1 px of 64×96: below min_region = 0.001
    return masks


@pytest.fixture
def clip(monkeypatch):
    source, edited = render(colour=200), render(colour=40)
    sample = EditSample("synthetic", source, edited[0], mask=object_masks()[0])
    skipped = np.array([t in LOST or t == TINY_FRAME for t in range(T - 1)])
    jitter = np.where(skipped, JITTER_SKIPPED, JITTER)
    flow = AnalyticFlow()
    flow.add(source, analytic_flows(V_SRC, np.zeros(T - 1)))
    flow.add(edited, analytic_flows(V_EDIT, jitter))
    regions = {"masks": tracked_masks()}
    monkeypatch.setattr(metrics.flow, "regions_for", lambda s, cfg, device="cpu": Regions(regions["masks"], "flow-affine(test)"))
    return sample, edited, flow, jitter, regions


def metric(estimator=None, **kw) -> FlowError:
    m = FlowError(DIS, tracker={"kind": "flow"}, size=(H, W), **kw)
    if estimator is not None:
        m.estimator = estimator
    return m


def test_flow_plus_is_the_masked_mean_epe_of_the_full_frame_flows(clip):
    sample, edited, flow, jitter, _ = clip
    out = metric(flow).score(sample, edited)
    area = BOX * BOX / (H * W)
    d = np.linalg.norm(V_EDIT - V_SRC)
    assert out["flow"] == pytest.approx(area * d + (1 - area) * jitter.mean(), rel=1e-6)
    # by hand: the usable pairs (0, 1, 2, 6) keep exactly the pixels off the object, whose EPE is JITTER
    assert out["flow_plus"] == pytest.approx(JITTER, rel=1e-6)
    assert out["flow_plus"] <= out["flow"]  # the error sits in the edited region
    assert out["flow_region_skipped"] == 3.0 and out["region_cotracker"] == 0.0


def test_flow_plus_by_hand_over_an_irregular_mask(clip):
    """A mask that is not the object: the masked per-pair means, averaged over the usable pairs."""
    sample, edited, flow, _, regions = clip
    masks = np.zeros((T, H, W), bool)
    masks[:, :, : W // 3] = True  # a band on the left: part background, part object on late frames
    regions["masks"] = masks
    src, out = flow.flows[sample.source[:-1].tobytes()], flow.flows[edited[:-1].tobytes()]
    epe = np.linalg.norm(out - src, axis=-1)
    want = np.mean([epe[t][~masks[t]].mean() for t in range(T - 1)])
    got = metric(flow).score(sample, edited)
    assert got["flow_plus"] == pytest.approx(want, rel=1e-6) and got["flow_region_skipped"] == 0.0


def test_no_usable_pair_leaves_flow_plus_out(clip):
    sample, edited, flow, _, regions = clip
    regions["masks"] = np.zeros((T, H, W), bool)  # the tracker lost the region everywhere
    out = metric(flow).score(sample, edited)
    assert "flow_plus" not in out and out["flow_region_skipped"] == T - 1 and out["flow"] > 0
    regions["masks"] = np.ones((T, H, W), bool)  # ... or it covers every frame
    assert "flow_plus" not in metric(flow).score(sample, edited)


def test_both_readings_with_dis(clip):
    """A real estimator (DIS) on a pan whose edit stays inside the tracked region: blank-then-flow sees two
    identical blanked videos (Flow+ = 0 exactly); the masked EPE of the full-frame flows sees the edit only
    through the estimator's neighbourhood (0 < Flow+ < Flow). Both skip the same pairs."""
    sample, edited, _, _, regions = clip
    regions["masks"] = masks = tracked_masks()
    edited = np.where(masks[..., None], edited, sample.source)  # the edit stays inside the tracked region
    masked = metric(plus_mode="masked_epe").score(sample, edited)
    blanked = metric(plus_mode="blank_then_flow").score(sample, edited)
    assert blanked["flow_plus"] == 0.0
    assert 0.0 < masked["flow_plus"] < masked["flow"]
    assert masked["flow_region_skipped"] == blanked["flow_region_skipped"] == 3.0


def test_plus_mode_and_region_threshold_in_the_config(compose):
    cfg = compose("metrics=paper").metrics
    assert cfg.flow.plus_mode == "masked_epe" and cfg.flow.min_region == cfg.clip.min_region
    with pytest.raises(ValueError, match="plus_mode"):
        FlowError(DIS, size=(H, W), plus_mode="blank")
