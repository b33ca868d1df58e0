"""Seconds of the metric suite for one 14-frame 576×1024 edit on the device present.

    python -m metrics.benchmark                          # metrics=paper, models=tiny (CPU-friendly)
    python -m metrics.benchmark --full-size device=cuda  # the real backbones' sizes, random weights
    python -m metrics.benchmark models=svd device=cuda   # the real weights

`--full-size` builds every backbone at its real size with seeded random weights (models=tiny with ViT-L-14
CLIP, RAFT large with 12 updates at 320×576, I3D width 1, BLIP VQA in blip-vqa-capfilt-large's layout
(ViT-B/16), an MPNet-base sentence encoder), so the suite's time can be measured where the weights are not on
disk: speed does not depend on weight values (except TIFA's answers, which random weights drag out to
`max_new_tokens` tokens: an upper bound).

The clip is a sample-track clip resized to 576×1024; the "edit" is its ground-truth edited video. Models
load first (timed apart); then each metric scores the edit twice: cold (with the per-sample work: region
tracking, which the first "+" metric pays, and source features) and warm (what every further method on
the same sample costs). Seconds are printed per metric and in total.
"""
from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F


#: Overrides of models=tiny that give every metric backbone its real architecture (random weights).
FULL_SIZE = ["models=tiny", "models.clip.model=ViT-L-14", "models.flow.kind=raft", "models.flow.raft.arch=raft_large",
             "models.flow.raft.num_flow_updates=12", "models.flow.raft.batch_size=8", "models.flow_size=[320,576]",
             "models.i3d.width=1.0", "models.vqa.arch=blip-vqa-capfilt-large", "models.text_embed.arch=all-mpnet-base-v2"]


def _resize(video: np.ndarray, size: tuple[int, int], mode: str = "bilinear") -> np.ndarray:
    x = torch.from_numpy(video).permute(0, 3, 1, 2).float()
    y = F.interpolate(x, size=size, mode=mode, **({"align_corners": False} if mode == "bilinear" else {}))
    return y.round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--full-size", action="store_true", help="real backbone sizes with random weights")
    args, overrides = ap.parse_known_args(argv)
    import run
    from data.sample_track import SampleTrack, build
    from harness.runner import load_suite, resolve_device

    cfg = run.compose("metrics=paper", *(FULL_SIZE if args.full_size else []), *overrides)
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
    metrics = {**suite.video, **suite.sets}
    seconds: dict[str, list[float]] = {k: [] for k in metrics}
    scores: dict[str, float] = {}
    for _ in range(2):  # cold, then warm
        for key, m in metrics.items():
            t0 = time.perf_counter()
            out = m.features(sample, edited) if key in suite.sets else m.score(sample, edited)
            sync()
            seconds[key].append(time.perf_counter() - t0)
            if key in suite.video:
                scores.update(out)
    device = torch.cuda.get_device_name() if cfg.device.startswith("cuda") else "cpu"
    size_note = "full-size random weights" if args.full_size else f"tiny={suite.tiny}"
    print(f"device: {device} | models={cfg.models.name} ({size_note}) | edit: {edited.shape[0]}x{size[0]}x{size[1]}")
    print(f"model loading: {t_load:.1f} s")
    print(f"{'metric':<14}{'cold s':>9}{'warm s':>9}")
    for key, (cold, warm) in seconds.items():
        print(f"{key:<14}{cold:9.2f}{warm:9.2f}")
    print(f"{'full suite':<14}{sum(v[0] for v in seconds.values()):9.2f}{sum(v[1] for v in seconds.values()):9.2f}")
    print("scores: " + ", ".join(f"{k}={v:.4g}" for k, v in sorted(scores.items())))


if __name__ == "__main__":
    main()
