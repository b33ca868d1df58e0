"""The tolerance gate of the fast path: a speed-up is acceptable only if it leaves results as they are.

    python -m videoshop.gate                                   tiny models on the sample track, speed=fast vs eager
    python -m videoshop.gate models=svd device=cuda --full-size     full-size SVD (random weights) on a GPU
    python -m videoshop.gate speed.compile=aot_eager speed.channels_last=true    any speed settings

Edits `--samples` fixed inputs (the dataset's first samples, or with `--full-size` random clips at the working
size) with the reference path (`speed=eager`) and with the configured speed settings (`speed=fast` unless the
command line sets `speed...`), same seed, and compares them: decoded frames must agree within `--pixel-levels`
(2 of 255) on at least `--pixel-share` (99.9%) of the values, and every score of the metric suite within
`--metric-atol` + `--metric-rtol`·|reference|. Prints the figures as JSON and exits 1 when a check fails.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field

import numpy as np

PIXEL_LEVELS = 2  # |Δ| in uint8 levels a pixel may differ by...
PIXEL_SHARE = 0.999  # ...on at least this share of the values
METRIC_ATOL, METRIC_RTOL = 1e-3, 1e-2  # every score: |fast − reference| ≤ atol + rtol·|reference|


@dataclass
class GateResult:
    """Per-sample figures and the verdict."""

    speed: str = ""
    samples: list[dict] = field(default_factory=list)
    passed: bool = True

    def as_dict(self) -> dict:
        return {"passed": self.passed, "speed": self.speed, "samples": self.samples}


def compare(ref: np.ndarray, fast: np.ndarray, levels: int = PIXEL_LEVELS) -> dict:
    """Pixel agreement of two uint8 videos: the share of values within `levels`, and the largest difference."""
    diff = np.abs(ref.astype(np.int16) - fast.astype(np.int16))
    return {"share_within": float((diff <= levels).mean()), "max_abs": int(diff.max()), "mean_abs": float(diff.mean())}


def scores_agree(ref: dict[str, float], fast: dict[str, float], atol: float, rtol: float) -> dict[str, dict]:
    """Each score of either side: both values, and whether they agree (NaN agrees only with NaN)."""
    out = {}
    for k in sorted(set(ref) | set(fast)):
        a, b = ref.get(k), fast.get(k)
        ok = a is not None and b is not None and (
            (np.isnan(a) and np.isnan(b)) or abs(b - a) <= atol + rtol * abs(a))
        out[k] = {"reference": a, "fast": b, "ok": bool(ok)}
    return out


def _samples(cfg, n: int, full_size: bool, method):
    """The first `n` samples of the configured dataset, or random clips at the method's working size."""
    from hydra.utils import instantiate

    from harness.types import EditSample

    if full_size:
        rng = np.random.default_rng(0)
        (h, w), t = method.size, method.num_frames
        return [EditSample(f"random{i}", rng.integers(0, 256, (t, h, w, 3), dtype=np.uint8),
                           rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for i in range(n)]
    dataset = instantiate(cfg.dataset)
    return [dataset.load(sid) for sid in dataset.ids()[:n]]


def run_gate(overrides: list[str], n: int = 2, full_size: bool = False, levels: int = PIXEL_LEVELS,
             share: float = PIXEL_SHARE, atol: float = METRIC_ATOL, rtol: float = METRIC_RTOL) -> GateResult:
    """Edit `n` inputs on the reference and the fast path; the figures and whether every check passed."""
    from hydra.utils import instantiate

    import run
    from harness.runner import load_suite, resolve_device, score_one
    from videoshop.models import SVD_FULL

    sets_speed = any(o.split("=")[0].lstrip("+~").split(".")[0] == "speed" for o in overrides)
    cfg = run.compose("method=videoshop", *([] if sets_speed else ["speed=fast"]), *overrides)
    device = resolve_device(cfg.device)
    extra = {"device": device}
    if full_size:
        from omegaconf import OmegaConf

        entry = OmegaConf.to_container(cfg.models.svd_backbone, resolve=True)
        extra["backbone"] = {"tiny": True, "seed": 0, "dtype": entry["dtype"], "num_frames": entry["num_frames"], **SVD_FULL}
    reference = instantiate(cfg.method, **{**extra, "speed": None})  # the eager reference path
    fast = instantiate(cfg.method, **extra)
    if reference.svd is fast.svd:
        raise SystemExit("the gate needs speed settings that differ from the reference's (speed=eager)")
    cfg.device = device
    suite = load_suite(cfg)
    result = GateResult(speed=repr(fast.svd.speed))
    for sample in _samples(cfg, n, full_size, reference):
        a = reference.edit(sample, int(cfg.seed)).frames
        b = fast.edit(sample, int(cfg.seed)).frames
        pixels = compare(a, b, levels)
        scores = scores_agree(score_one(suite, sample, a)[0], score_one(suite, sample, b)[0], atol, rtol)
        ok = pixels["share_within"] >= share and all(s["ok"] for s in scores.values())
        result.samples.append({"sample": sample.id, "pixels": pixels, "scores": scores, "passed": ok})
        result.passed &= ok
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--samples", type=int, default=2, help="inputs to edit on both paths")
    p.add_argument("--full-size", action="store_true", help="random clips on full-size SVD with random weights")
    p.add_argument("--pixel-levels", type=int, default=PIXEL_LEVELS)
    p.add_argument("--pixel-share", type=float, default=PIXEL_SHARE)
    p.add_argument("--metric-atol", type=float, default=METRIC_ATOL)
    p.add_argument("--metric-rtol", type=float, default=METRIC_RTOL)
    p.add_argument("overrides", nargs="*", help="config overrides, e.g. models=svd device=cuda speed.sdpa=[flash]")
    a = p.parse_args(argv)
    result = run_gate(list(a.overrides), a.samples, a.full_size, a.pixel_levels, a.pixel_share, a.metric_atol,
                      a.metric_rtol)
    print(json.dumps({**result.as_dict(), "tolerance": {"pixel_levels": a.pixel_levels, "pixel_share": a.pixel_share,
                                                         "metric_atol": a.metric_atol, "metric_rtol": a.metric_rtol}},
                     indent=2))
    return 0 if result.passed else 1


if __name__ == "__main__":
    sys.exit(main())
