"""Uncertainty in the report: bootstrap intervals cover at the nominal rate, the paired test finds a planted
difference and none between a method and itself, FVD's fast Fréchet distance equals metrics.fvd's, its noise
floor matches the same-distribution distance, and a results folder built by hand gets every column."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from harness.results import RunDir
from harness.types import Costs, ScoreRow
from metrics.fvd import frechet_distance
from reports.tables import write_report
from reports.uncertainty import (UncertaintyConfig, bootstrap_means, frechet_distances, fvd_interval, fvd_noise_floor,
                                 paired_test, percentile_interval, subset_distances)

CFG = UncertaintyConfig()
COLUMNS = {"clip_tgt": {"percent": True, "higher_is_better": True, "group": "edit fidelity"},
           "fvd": {"percent": False, "higher_is_better": False, "group": "source faithfulness"},
           "fvd_n": {"percent": False, "higher_is_better": True, "group": "set size"}}


def test_bootstrap_intervals_cover_the_mean_at_the_nominal_rate():
    """1,000 data sets of n = 100 from N(3, 2²): 950 ± 25 intervals hold 3. (The percentile bootstrap under-covers a
    little at small n: about 942/1000 at n = 50 and 928 at n = 20, so n = 100 is simulated.)"""
    rng = np.random.default_rng(0)
    data = rng.normal(3.0, 2.0, (1000, 100))
    lo, hi = percentile_interval(bootstrap_means(data, CFG.resamples, rng), CFG.confidence)
    covered = int(((lo <= 3.0) & (3.0 <= hi)).sum())
    assert 925 <= covered <= 975, covered


def test_paired_test_finds_a_planted_difference_and_none_between_a_method_and_itself():
    rng = np.random.default_rng(1)
    reference = rng.normal(size=40)
    shifted = reference + rng.normal(0.5, 1.0, 40)  # differences of mean 0.5 sd
    planted = paired_test(shifted, reference, CFG, np.random.default_rng(2))
    assert planted.p < 0.05 and planted.lo > 0 and planted.n == 40
    assert planted.diff == pytest.approx(np.mean(shifted - reference))
    same = paired_test(reference, reference, CFG, np.random.default_rng(2))
    assert (same.diff, same.lo, same.hi, same.p) == (0.0, 0.0, 0.0, 1.0)
    assert math.isnan(paired_test(np.array([1.0, math.nan]), np.array([1.0, 2.0]), CFG, rng).p)  # NaN propagates


@pytest.mark.parametrize("n, d", [(5, 8), (40, 8), (30, 64)])
def test_fast_frechet_distance_is_metrics_fvds(n, d):
    rng = np.random.default_rng(n)
    real, fake = rng.normal(size=(n, d)) + 5, rng.normal(1.0, 1.5, (n, d)) + 5
    expected = frechet_distance(real, fake, "tf")  # covariances normalised by n - 1
    assert float(frechet_distances(real, fake, ddof=0)) == pytest.approx(frechet_distance(real, fake, "stylegan_v"), rel=1e-6)
    assert float(frechet_distances(real, fake)) == pytest.approx(expected, rel=1e-6)
    rows = np.arange(n)[None]
    assert float(subset_distances(np.concatenate([real, fake]), rows, rows + n)[0]) == pytest.approx(expected, rel=1e-6)


def test_fvd_noise_floor_matches_the_same_distribution_distance():
    """Gaussian features with a known covariance: the floor from one source set of N videos (halves of N/2) agrees
    with the Fréchet distance between two independent sets of N/2 from the same distribution (its mean over many
    draws lies within the floor's range, and the two means agree within 20%)."""
    rng = np.random.default_rng(3)
    d, n = 8, 60
    factor = rng.normal(size=(d, d)) / math.sqrt(d) + np.eye(d)

    def draw(*shape):
        return rng.normal(size=(*shape, d)) @ factor.T

    floor, lo, hi = fvd_noise_floor(draw(n), CFG, rng)
    same = frechet_distances(draw(2000, n // 2), draw(2000, n // 2)).mean()
    assert lo <= same <= hi and floor == pytest.approx(same, rel=0.2)
    # An edit that changes nothing (new draws of the same distribution) gives an FVD of that size, and its interval holds it.
    real, fake = draw(n), draw(n)
    fvd = float(frechet_distances(real, fake))
    flo, fhi = fvd_interval(real, fake, CFG, rng)
    assert flo <= fvd <= fhi and flo <= frechet_distances(draw(2000, n), draw(2000, n)).mean() <= fhi


def make_run(results: Path, method: str, clip: np.ndarray, real: np.ndarray, fake: np.ndarray) -> None:
    """A finished run by hand: rows, features.npz as the runner saves FVD's ("fvd.real", "fvd.fake", ...), summary."""
    rd = RunDir(results / "magicbrush" / "svd" / method)
    rd.claim({"dataset": "magicbrush", "method": method, "method_name": method, "models": "svd", "tiny_models": False,
              "fingerprint": "x", "fingerprint_config": {}, "config": {}})
    for i, c in enumerate(clip):
        sid = f"v{i:02d}"
        rd.write_row(ScoreRow(sid, "ok", {"clip_tgt": float(c)}, Costs(seconds=1.0)))
        rd.save_features(sid, {"fvd.real": real[i], "fvd.fake": fake[i], "fvd.frames": np.asarray(14), "fvd.i3d": np.asarray("sha")})
    fvd = frechet_distance(real, fake)  # the default convention, which the summary below does not name
    rd.write_summary({"tiny": False, "columns": COLUMNS, "scores": {"fvd": fvd, "fvd_n": float(len(clip))}})


@pytest.fixture
def results(tmp_path) -> Path:
    rng = np.random.default_rng(4)
    n, d = 30, 16
    real = rng.normal(size=(n, d))
    clip = rng.normal(0.8, 0.05, n)
    make_run(tmp_path, "videoshop", clip, real, real + rng.normal(0, 0.3, (n, d)))
    make_run(tmp_path, "bdia", clip - 0.05 + rng.normal(0, 0.01, n), real, real + rng.normal(0, 1.0, (n, d)))
    return tmp_path


def test_table_has_intervals_tests_and_fvd_floor_and_prints_them(results):
    write_report(results)
    table = pd.read_csv(results / "table.csv").set_index("method")
    for method, row in table.iterrows():
        assert row["clip_tgt_lo"] < row["clip_tgt"] < row["clip_tgt_hi"], method  # ×100, like the mean
        assert row["fvd_lo"] < row["fvd"] < row["fvd_hi"], method  # resampled videos, features from features.npz
        assert row["fvd_floor_lo"] < row["fvd_floor"] < row["fvd_floor_hi"], method
    vs, bd = table.loc["videoshop"], table.loc["bdia"]
    assert bd["clip_tgt_diff"] == pytest.approx(bd["clip_tgt"] - vs["clip_tgt"]) and bd["clip_tgt_p"] < 0.05
    assert bd["clip_tgt_diff_hi"] < 0 and bd["n_clip_tgt_diff"] == 30
    assert bd["fvd_diff"] == pytest.approx(bd["fvd"] - vs["fvd"], rel=1e-6) and bd["fvd_p"] < 0.05 and bd["fvd_diff_lo"] > 0
    assert pd.isna(vs["clip_tgt_p"]) and pd.isna(vs["fvd_p"])  # the reference is not tested against itself
    md = (results / "table.md").read_text()
    line = next(ln for ln in md.splitlines() if "| bdia" in ln)
    assert f"{bd['clip_tgt']:.2f}* [{bd['clip_tgt_lo']:.2f}, {bd['clip_tgt_hi']:.2f}]" in line
    assert f"{bd['fvd']:.2f}* [{bd['fvd_lo']:.2f}, {bd['fvd_hi']:.2f}]" in line and f"{bd['fvd_floor']:.2f}" in line
    assert "FVD noise floor" in md and "N/2 each" in md
    line = next(ln for ln in md.splitlines() if "| videoshop" in ln)
    assert f"{vs['clip_tgt']:.2f} [{vs['clip_tgt_lo']:.2f}, {vs['clip_tgt_hi']:.2f}]" in line
    t2 = pd.read_csv(results / "paper" / "table2.csv")  # the paper's layout keeps them in its CSV ...
    measured = t2[(t2["kind"] == "measured") & (t2["method"] == "bdia")].iloc[0]
    assert measured["clip_tgt_lo"] == pytest.approx(bd["clip_tgt_lo"]) and measured["fvd_p"] == pytest.approx(bd["fvd_p"])
    delta = t2[(t2["kind"] == "Δ") & (t2["method"] == "bdia")].iloc[0]
    paper = t2[(t2["kind"] == "paper") & (t2["method"] == "bdia")].iloc[0]
    assert delta["fvd_hi"] == pytest.approx(bd["fvd_hi"] - paper["fvd"])
    printed = (results / "paper" / "table2.md").read_text()  # ... and prints the mark only
    assert f"{bd['clip_tgt']:.2f}*" in printed and f"[{bd['clip_tgt_lo']:.2f}" not in printed


def test_intervals_are_seeded_per_run(results, tmp_path):
    write_report(results)
    first = pd.read_csv(results / "table.csv")
    make_run(results, "rave", np.full(30, 0.5), np.eye(30, 16), np.eye(30, 16))  # another run must not move the others
    write_report(results)
    again = pd.read_csv(results / "table.csv").set_index("method").loc[first["method"]].reset_index()
    pd.testing.assert_frame_equal(first, again[first.columns], check_dtype=False)


def test_fvd_features_that_do_not_give_the_summarys_fvd_get_no_interval(results):
    from harness.files import read_json, write_json

    path = results / "magicbrush" / "svd" / "bdia" / "summary.json"
    write_json(path, read_json(path) | {"scores": {"fvd": 1.0, "fvd_n": 30.0}})
    write_report(results)
    table = pd.read_csv(results / "table.csv").set_index("method")
    assert pd.isna(table.loc["bdia", "fvd_lo"]) and not pd.isna(table.loc["videoshop", "fvd_lo"])
    assert "fvd_p" not in table  # no run could be tested
    assert "is not its summary's" in (results / "table.md").read_text()
