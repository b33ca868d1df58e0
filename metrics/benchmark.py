"""Seconds of the metric suite for one 14-frame 576×1024 edit on the device present.

    python -m metrics.benchmark                      # metrics=paper, models=tiny
    python -m metrics.benchmark models=svd device=cuda

The clip is a sample-track clip resized to 576×1024; the "edit" is its ground-truth edited video. Models
load first (timed apart); then the suite scores the edit twice: cold (per-sample work such as region
tracking and source features) and warm (what every further method on the same sample costs).
"""
from __future__ import annotations

import dataclasses
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir

REPO = Path(__file__).resolve().parents[1]


def _resize(video: np.ndarray, size: tuple[int, int], mode: str = "bilinear") -> np.ndarray:
    x = torch.from_numpy(video).permute(0, 3, 1, 2).float()
    y = F.interpolate(x, size=size, mode=mode, **({"align_corners": False} if mode == "bilinear" else {}))
    return y.round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()


def main(overrides: list[str]) -> None:
    import run  # noqa: F401  (registers the repo_root resolver)
    from data.sample_track import build, SampleTrack
    from harness.runner import load_suite, resolve_device, score_one

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["metrics=paper", *overrides])
    cfg.device = resolve_device(cfg.device)
    with tempfile.TemporaryDirectory() as d:
        build(Path(d) / "sample", only=["chelsea_color_ball"])
        s = SampleTrack(data_dir=d).load("chelsea_color_ball")
    size = (576, 1024)
    sample = dataclasses.replace(
        s, source=_resize(s.source, size), edited_frame=_resize(s.truth.video[:1], size)[0],
        mask=_resize(s.mask[None, ..., None].astype(np.uint8) * 255, size, "nearest")[0, ..., 0] > 127, truth=None)
    edited = _resize(s.truth.video, size)

    def sync():
        if cfg.device.startswith("cuda"):
            torch.cuda.synchronize()

    t0 = time.perf_counter()
    suite = load_suite(cfg)
    sync()
    t_load = time.perf_counter() - t0
    times = []
    for _ in range(2):
        t0 = time.perf_counter()
        scores, feats = score_one(suite, sample, edited)
        sync()
        times.append(time.perf_counter() - t0)
    per_metric = {}
    for key, m in {**suite.video, **suite.sets}.items():
        t0 = time.perf_counter()
        m.features(sample, edited) if key in suite.sets else m.score(sample, edited)
        sync()
        per_metric[key] = time.perf_counter() - t0
    device = torch.cuda.get_device_name() if cfg.device.startswith("cuda") else "cpu"
    print(f"device: {device} | models={cfg.models.name} (tiny={suite.tiny}) | edit: {edited.shape[0]}x{size[0]}x{size[1]}")
    print(f"model loading: {t_load:.1f} s")
    print(f"full suite, first score of the sample: {times[0]:.2f} s; again (per-sample work cached): {times[1]:.2f} s")
    print("warm, per metric: " + ", ".join(f"{k} {v:.2f} s" for k, v in per_metric.items()))
    print("scores: " + ", ".join(f"{k}={v:.4g}" for k, v in sorted(scores.items())))


if __name__ == "__main__":
    main(sys.argv[1:])
