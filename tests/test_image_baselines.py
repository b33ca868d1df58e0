"""The paper's text-driven baselines (Pix2Video, RAVE, FateZero, Spacetime) on the whole sample track with tiny
models: every row ok (no NaN, no failure)."""
from __future__ import annotations

import pytest

import run

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.slow
@pytest.mark.parametrize("method", ["pix2video", "rave", "fatezero", "spacetime"])
def test_every_sample_of_the_track_edits_ok(method, compose, sample_track):
    summary = run.main(compose(f"method={method}", "models=tiny", "metrics=basic", "~metrics.ground_truth"))
    assert summary["n"] == len(sample_track.ids()) == summary["n_ok"], summary["failures"]
