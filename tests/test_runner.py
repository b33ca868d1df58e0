"""The runner: reference rows, resume, failures, NaN rows, and the report's arithmetic."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

import run
from harness.results import RunDir


def _rows(results, method, dataset="sample", models="tiny"):
    return {r.sample_id: r for r in RunDir(results / dataset / models / method).rows()}


def test_identity_ssim_is_perfect_and_oracle_beats_static(compose, tmp_path):
    for m in ("identity", "static", "oracle"):
        run.main(compose("metrics=basic", f"method={m}", "dataset.limit=3"))
    res = tmp_path / "results"
    ident, static, oracle = (_rows(res, m) for m in ("identity", "static", "oracle"))
    assert len(ident) == 3 and all(r.status == "ok" for r in ident.values())
    for sid in ident:
        assert ident[sid].scores["ssim"] == pytest.approx(1.0)
        assert oracle[sid].scores["gt_ssim"] == pytest.approx(1.0)
        assert oracle[sid].scores["gt_psnr"] > static[sid].scores["gt_psnr"]
        assert oracle[sid].scores["gt_ssim"] > static[sid].scores["gt_ssim"]


def test_resume_edits_nothing_the_second_time(compose, tmp_path):
    cfg = compose("metrics=basic", "method=static", "dataset.limit=2")
    first = run.main(cfg)
    run_dir = RunDir(tmp_path / "results" / "sample" / "tiny" / "static")
    stamps = {p: p.stat().st_mtime_ns for p in run_dir.root.glob("samples/*/*")}
    second = run.main(compose("metrics=basic", "method=static", "dataset.limit=2"))
    assert first["n_ok"] == second["n_ok"] == 2 and second["skipped"] == 2
    assert {p: p.stat().st_mtime_ns for p in run_dir.root.glob("samples/*/*")} == stamps


def test_changed_config_in_same_folder_is_refused(compose):
    run.main(compose("metrics=basic", "method=identity", "dataset.limit=1"))
    from harness.results import ConfigMismatch

    with pytest.raises(ConfigMismatch, match="seed"):
        run.main(compose("metrics=basic", "method=identity", "dataset.limit=1", "seed=7"))


@pytest.mark.parametrize("overlap", [False, True])
def test_corrupt_sample_fails_alone(compose, tmp_path, data_dir, overlap):
    """Also when read ahead (`overlap`): it fails there first, then again in the loop, where its row gets the error."""
    import shutil

    root = tmp_path / "mine"
    ids = sorted(p.name for p in (data_dir / "sample").iterdir() if p.is_dir())[:3]
    for sid in ids:
        shutil.copytree(data_dir / "sample" / sid, root / sid)
    bad = root / ids[1] / "source.mkv"
    bad.write_bytes(bad.read_bytes()[:2000])  # truncated video
    summary = run.main(compose("metrics=basic", "method=identity", "dataset=folder", f"dataset.root={root}",
                               f"overlap={str(overlap).lower()}"))
    rows = _rows(tmp_path / "results", "identity", dataset="folder")
    assert summary["n_failed"] == 1 and summary["n_ok"] == 2
    assert rows[ids[1]].status == "failed"
    assert ids[1] in rows[ids[1]].error and "source.mkv" in rows[ids[1]].error
    assert summary["failures"][ids[1]].startswith("SampleError")


def test_nan_edit_is_recorded_as_nan_and_the_run_goes_on(compose, tmp_path, sample_track):
    ids = sample_track.ids()[:2]
    cfg = compose("metrics=basic", "method=identity", "dataset.limit=2", "+method.nan_ids=[" + ids[0] + "]",
                  "method._target_=tests.fake_methods.Unstable", "tag=unstable")
    summary = run.main(cfg)
    rows = _rows(tmp_path / "results", "unstable")
    assert rows[ids[0]].status == "nan" and math.isnan(rows[ids[0]].scores["ssim"]) and rows[ids[0]].costs.nfe == 3
    assert rows[ids[1]].status == "ok" and rows[ids[1]].scores["ssim"] == pytest.approx(1.0)
    assert summary["n_nan"] == 1 and summary["n_failed"] == 0 and summary["scores"]["ssim"] is None
    table = run.main(compose("metrics=basic", "stage=report"))
    assert math.isnan(table.set_index("method").loc["unstable", "ssim"])


def test_report_is_the_mean_of_the_rows(compose, tmp_path):
    for m in ("identity", "static"):
        run.main(compose("metrics=basic", f"method={m}", "dataset.limit=3"))
    run.main(compose("metrics=basic", "stage=report"))
    table = pd.read_csv(tmp_path / "results" / "table.csv").set_index("method")
    for m in ("identity", "static"):
        rows = _rows(tmp_path / "results", m).values()
        assert table.loc[m, "n"] == 3 and table.loc[m, "n_failed"] == 0
        assert table.loc[m, "ssim"] == pytest.approx(100 * np.mean([r.scores["ssim"] for r in rows]), abs=1e-3)
        assert table.loc[m, "gt_psnr"] == pytest.approx(np.mean([r.scores["gt_psnr"] for r in rows]), abs=1e-3)
    assert (tmp_path / "results" / "table.md").read_text().count("|") > 10
    assert "\\begin{tabular}" in (tmp_path / "results" / "table.tex").read_text()


def test_stage_score_rescores_without_editing(compose, tmp_path):
    run.main(compose("metrics=basic", "method=static", "dataset.limit=1"))
    run_dir = RunDir(tmp_path / "results" / "sample" / "tiny" / "static")
    video = next(run_dir.root.glob("samples/*/edited.mkv"))
    before = video.stat().st_mtime_ns
    row_before = run_dir.rows()[0]
    summary = run.main(compose("metrics=basic", "method=static", "dataset.limit=1", "stage=score"))
    assert video.stat().st_mtime_ns == before
    row_after = run_dir.rows()[0]
    assert row_after.scores == pytest.approx(row_before.scores) and summary["n_ok"] == 1
    assert row_after.costs.seconds == row_before.costs.seconds


def test_ctrl_c_loses_nothing_already_finished(compose, tmp_path, sample_track):
    ids = sample_track.ids()[:3]
    from tests.fake_methods import Interrupting

    cfg = ("method=identity", "dataset.limit=3", "method._target_=tests.fake_methods.Interrupting", "tag=interrupted")
    Interrupting.interrupt_on = ids[1]
    with pytest.raises(KeyboardInterrupt):
        run.main(compose("metrics=basic", *cfg))
    run_dir = RunDir(tmp_path / "results" / "sample" / "tiny" / "interrupted")
    assert [r.sample_id for r in run_dir.rows()] == [ids[0]]
    assert not list(run_dir.root.rglob(".*.tmp.*"))  # no half-written temporary files left behind
    # The rerun (now uninterrupted) resumes: the first sample is skipped, the other two are edited.
    Interrupting.interrupt_on = None
    summary = run.main(compose("metrics=basic", *cfg))
    assert summary["skipped"] == 1 and summary["n_ok"] == 3


def test_oracle_without_ground_truth_fails_clearly(compose, tmp_path, data_dir):
    import shutil

    root = tmp_path / "plain"
    sid = sorted(p.name for p in (data_dir / "sample").iterdir() if p.is_dir())[0]
    shutil.copytree(data_dir / "sample" / sid, root / sid, ignore=shutil.ignore_patterns("truth"))
    summary = run.main(compose("metrics=basic", "method=oracle", "dataset=folder", f"dataset.root={root}"))
    assert summary["n_failed"] == 1
    assert "ground-truth" in summary["failures"][sid] and sid in summary["failures"][sid]


def test_rows_keep_the_methods_plain_info_and_each_edits_own_peak_memory(compose, tmp_path, sample_track):
    ids = sample_track.ids()[:3]
    big = 400
    run.main(compose("metrics=basic", "method=identity", "dataset.limit=3", "method._target_=tests.fake_methods.Reporting",
                     "method.name=reporting", f"+method.allocate_on=[{ids[1]}]", f"+method.allocate_mb={big}"))
    rows = _rows(tmp_path / "results", "reporting")
    info = rows[ids[0]].info
    assert info == {"prompt": f"a photo of {ids[0]}", "size": [8, 16], "nfe_split": {"inv": 1, "gen": 2}, "scale": 0.5}
    peaks = [rows[i].costs.peak_mem_mb for i in ids]
    # The high-water mark is reset before each edit: only the edit that held the block shows it.
    assert peaks[1] > peaks[0] + 0.8 * big and peaks[1] > peaks[2] + 0.8 * big
