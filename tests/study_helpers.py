"""Finished runs made cheaply for the study tests: the reference shows the true edit, the opponents the source
or a frozen frame, stored as the runner stores them."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from harness.results import RunDir
from harness.types import Costs, ScoreRow

SAMPLES = ["astronaut_add_logo", "coffee_remove_cat", "rocket_replace_cat", "chelsea_color_ball"]
#: method label -> (what it shows, its ssim per sample index): videoshop is best on ssim, then bdia, then rave.
METHODS = {
    "videoshop": (lambda s: s.target_video, 0.9),
    "bdia": (lambda s: s.source, 0.6),
    "rave": (lambda s: np.repeat(s.source[:1], len(s.source), 0), 0.3),
}


def make_runs(results: Path, sample_track, data_dir: Path, samples=SAMPLES) -> Path:
    dataset_cfg = {"_target_": "data.sample_track.SampleTrack", "name": "sample", "data_dir": str(data_dir)}
    for method, (make, ssim) in METHODS.items():
        rd = RunDir(results / "sample" / "tiny" / method)
        rd.claim({"dataset": "sample", "method": method, "method_name": method, "models": "tiny", "tiny_models": True,
                  "fingerprint": "x", "fingerprint_config": {}, "config": {"dataset": dataset_cfg}})
        for i, sid in enumerate(samples):
            sample = sample_track.load(sid)
            rd.save_video(sid, make(sample)[:4], sample.fps)  # 4 frames: enough to play, cheap to write
            rd.write_row(ScoreRow(sid, "ok", {"ssim": ssim + 0.01 * i, "flow_err": 1.0 - ssim}, Costs(seconds=1.0)))
        rd.write_summary({"tiny": True, "scores": {}, "columns": {
            "ssim": {"percent": True, "higher_is_better": True}, "flow_err": {"higher_is_better": False}}})
    return results
