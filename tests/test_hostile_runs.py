"""Hostile inputs to runs: unsafe names in overrides, damaged results folders, mismatched re-scoring, failed starts,
concurrent processes, kills and Ctrl-C. Each test asserts the exact outcome and that nothing escaped its folders."""
from __future__ import annotations

import hashlib
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hydra.errors import InstantiationException

import run
from harness.files import HOST, clean_stale_temps
from harness.names import UnsafeName
from harness.results import ConfigMismatch, RunDir
from harness.runner import EmptyDataset, method_label

REPO = Path(__file__).resolve().parents[1]
BASIC = ("metrics=basic", "~metrics.ground_truth", "method=identity")  # SSIM alone: fast


def snapshot(root: Path, skip: tuple[Path, ...] = ()) -> dict[str, str]:
    """Every path under `root` (links not followed) with a digest of its bytes: what a test compares before/after."""
    out = {}
    for p in sorted(root.rglob("*")):
        if any(p == s or s in p.parents for s in skip):
            continue
        if p.is_symlink():
            out[str(p)] = "link:" + os.readlink(p)
        elif p.is_file():
            out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
        else:
            out[str(p)] = "dir"
    return out


def rows(results: Path, method: str, dataset: str = "sample") -> dict:
    return {r.sample_id: r for r in RunDir(results / dataset / "tiny" / method).rows()}


# 1. Names from overrides never become paths outside results_dir.
@pytest.mark.parametrize("override", [
    "tag=../evil", "tag=/tmp/evil_abs", "tag=a/b", "tag=.hidden", "tag=..", "models.name=../../escape",
    "method.name=../up", "dataset.name=../escape",
])
def test_unsafe_names_in_overrides_are_refused_and_nothing_is_written(compose, tmp_path, override):
    before = snapshot(tmp_path)
    with pytest.raises((UnsafeName, InstantiationException), match=r"cannot be used as a folder name"):
        run.main(compose(*BASIC, "dataset.limit=1", override))
    assert snapshot(tmp_path) == before and not (tmp_path / "results").exists()
    assert not Path("/tmp/evil_abs").exists()


def test_override_values_with_separators_stay_one_folder(compose, tmp_path):
    (tmp_path / "logs").mkdir()
    log = tmp_path / "logs" / "edits.log"
    overrides = ["method._target_=tests.fake_methods.Logging", f"+method.log={log}"]
    label = method_label(compose(*BASIC, *overrides), overrides)
    assert "/" not in label and label.startswith("identity[") and "%2F" in label
    before = snapshot(tmp_path, skip=(tmp_path / "results", tmp_path / "logs"))
    summary = run.main(compose(*BASIC, "dataset.limit=1", *overrides), overrides)
    assert summary["n_ok"] == 1
    assert [p.name for p in (tmp_path / "results" / "sample" / "tiny").iterdir()] == [label]
    assert snapshot(tmp_path, skip=(tmp_path / "results", tmp_path / "logs")) == before


# 2. stage=score checks the run's config, and never shrinks the summary.
@pytest.mark.parametrize("override, changed", [("seed=7", "seed"), ("dataset.num_shards=1", None),
                                               ("method=static", "method._target_, method.name")])
def test_stage_score_refuses_another_config(compose, tmp_path, override, changed):
    run.main(compose(*BASIC, "dataset.limit=2", "tag=same"))
    run_dir = RunDir(tmp_path / "results" / "sample" / "tiny" / "same")
    finished = snapshot(run_dir.root / "samples")
    if changed is None:  # a key that does not change a sample's edit (sharding): allowed
        assert run.main(compose(*BASIC, "dataset.limit=2", "tag=same", "stage=score", override))["n_ok"] == 2
        return
    with pytest.raises(ConfigMismatch, match=rf"changed: {changed}\)"):
        run.main(compose(*BASIC, "dataset.limit=2", "tag=same", "stage=score", override))
    assert snapshot(run_dir.root / "samples") == finished


def test_stage_score_on_part_of_the_data_keeps_the_whole_summary(compose, tmp_path):
    run.main(compose(*BASIC, "dataset.limit=3"))
    summary = run.main(compose(*BASIC, "dataset.limit=1", "stage=score", "metrics.ssim.sigma=1.0"))
    assert summary["n_ok"] == 3 and summary["n_scored"]["ssim"] == 3
    assert len(summary["suites"]) == 2  # one sample rescored with the new suite, two with the old one
    summary = run.main(compose(*BASIC, "dataset.limit=3", "stage=score", "metrics.ssim.sigma=1.0"))
    assert summary["n_ok"] == 3 and len(summary["suites"]) == 1
    history = RunDir(tmp_path / "results" / "sample" / "tiny" / "identity").info()["history"]
    assert [h["stage"] for h in history] == ["edit", "score", "score"]


def test_stage_score_without_edits_says_so(compose, tmp_path):
    with pytest.raises(FileNotFoundError, match="run stage=edit first"):
        run.main(compose(*BASIC, "dataset.limit=1", "stage=score"))
    assert not (tmp_path / "results" / "sample" / "tiny" / "identity" / "run.json").exists()


# 3. A failed start claims nothing.
@pytest.mark.parametrize("root", ["typo_dir", "a_file"])
def test_failed_start_claims_nothing(compose, tmp_path, data_dir, root):
    import shutil

    bad = tmp_path / root
    if root == "a_file":
        bad.write_text("not a folder")
    with pytest.raises(FileNotFoundError, match=str(bad)):
        run.main(compose(*BASIC, "dataset=folder", f"dataset.root={bad}"))
    assert not (tmp_path / "results").exists()
    good = tmp_path / "good"
    sid = sorted(p.name for p in (data_dir / "sample").iterdir() if p.is_dir())[0]
    shutil.copytree(data_dir / "sample" / sid, good / sid)
    assert run.main(compose(*BASIC, "dataset=folder", f"dataset.root={good}"))["n_ok"] == 1


def test_empty_root_is_an_error_before_anything_is_written(compose, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(EmptyDataset, match="no samples"):
        run.main(compose(*BASIC, "dataset=folder", f"dataset.root={tmp_path / 'empty'}"))
    assert not (tmp_path / "results").exists()


# 4. One damaged row never stops a run: it is redone, the others stay byte-identical.
DAMAGED = {
    "truncated": lambda text: text[: len(text) // 2],
    "not_json": lambda text: "this is not JSON",
    "a_list": lambda text: "[1, 2, 3]",
    "scores_string": lambda text: json.dumps({**json.loads(text), "scores": "high"}),
    "score_bool": lambda text: json.dumps({**json.loads(text), "scores": {"ssim": True}}),
    "bad_status": lambda text: json.dumps({**json.loads(text), "status": "weird"}),
    "other_sample_id": lambda text: json.dumps({**json.loads(text), "sample_id": "someone_else"}),
    "costs_list": lambda text: json.dumps({**json.loads(text), "costs": [1, 2]}),
}


@pytest.mark.parametrize("damage", sorted(DAMAGED))
def test_damaged_row_is_redone_and_reported(compose, tmp_path, sample_track, caplog, damage):
    ids = sample_track.ids()[:3]
    run.main(compose(*BASIC, "dataset.limit=3"))
    run_dir = RunDir(tmp_path / "results" / "sample" / "tiny" / "identity")
    bad = run_dir.sample_dir(ids[1]) / "row.json"
    bad.write_bytes(DAMAGED[damage](bad.read_text()).encode("utf-8", "surrogateescape"))
    others = {sid: snapshot(run_dir.sample_dir(sid)) for sid in (ids[0], ids[2])}

    scored = run.main(compose(*BASIC, "dataset.limit=3", "stage=score"))  # cannot rescore it: skipped, named
    assert str(bad.relative_to(run_dir.root)) in scored["damaged"] and scored["n_ok"] == 2
    assert str(bad) in caplog.text
    summary = run.main(compose(*BASIC, "dataset.limit=3"))
    assert summary["n_ok"] == 3 and summary["skipped"] == 2 and summary["damaged"] == {}
    assert run_dir.row(ids[1]).status == "ok" and run_dir.row(ids[1]).scores["ssim"] == pytest.approx(1.0)
    assert {sid: snapshot(run_dir.sample_dir(sid)) for sid in (ids[0], ids[2])} == others


# 5. Not applicable is not NaN; mixed metric suites are reported and fixed by stage=score.
def test_not_applicable_column_is_left_out_and_counted(compose, tmp_path, sample_track):
    ids = sample_track.ids()[:3]
    partial = ("+metrics.partial._target_=tests.fake_methods.PartialMetric", f"+metrics.partial.skip_ids=[{ids[0]}]")
    summary = run.main(compose(*BASIC, "dataset.limit=3", *partial))
    r = rows(tmp_path / "results", "identity")
    assert "partial" not in r[ids[0]].scores
    expected = (r[ids[1]].scores["partial"] + r[ids[2]].scores["partial"]) / 2
    assert summary["scores"]["partial"] == pytest.approx(expected)
    assert summary["n_scored"] == {"partial": 2, "ssim": 3}
    # NaN stays reserved for non-finite edits, and still propagates to the mean.
    unstable = ("method._target_=tests.fake_methods.Unstable", f"+method.nan_ids=[{ids[1]}]", "tag=unstable")
    summary = run.main(compose(*BASIC, "dataset.limit=3", *partial, *unstable))
    assert summary["scores"]["partial"] is None and summary["n_nan"] == 1
    assert math.isnan(rows(tmp_path / "results", "unstable")[ids[1]].scores["partial"])


def test_resumed_run_with_another_suite_is_reported_and_rescored(compose, tmp_path, sample_track, caplog):
    ids = sample_track.ids()[:3]
    run.main(compose(*BASIC, "dataset.limit=2"))
    partial = ("+metrics.partial._target_=tests.fake_methods.PartialMetric",)
    summary = run.main(compose(*BASIC, "dataset.limit=3", *partial))
    assert summary["n_scored"] == {"partial": 1, "ssim": 3} and len(summary["suites"]) == 2
    assert "different metric suites" in caplog.text
    summary = run.main(compose(*BASIC, "dataset.limit=3", "stage=score", *partial))
    assert summary["n_scored"] == {"partial": 3, "ssim": 3} and len(summary["suites"]) == 1
    assert all("partial" in r.scores for r in rows(tmp_path / "results", "identity").values())
    assert set(rows(tmp_path / "results", "identity")) == set(ids)


# 8. Concurrency, kills, temp files.
def _run_py(tmp_path: Path, data_dir: Path, *overrides: str, **kw) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, str(REPO / "run.py"), f"results_dir={tmp_path / 'results'}", f"data_dir={data_dir}",
           "threads=1", *overrides]
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def _logging_method(log: Path, sleep_s: float) -> tuple[str, ...]:
    return (*BASIC, "method._target_=tests.fake_methods.Logging", f"+method.log={log}",
            f"+method.sleep_s={sleep_s}", "tag=logged", "dataset.limit=4")


def _started_with_one_row(tmp_path: Path, data_dir: Path, log: Path, sleep_s: float) -> tuple[subprocess.Popen, RunDir]:
    """A `python run.py` of the logging method, once its first sample is finished."""
    proc = _run_py(tmp_path, data_dir, *_logging_method(log, sleep_s))
    run_dir = RunDir(tmp_path / "results" / "sample" / "tiny" / "logged")
    deadline = time.time() + 120
    while not list(run_dir.root.glob("samples/*/row.json")) and time.time() < deadline:
        time.sleep(0.2)
    return proc, run_dir


@pytest.mark.slow
def test_two_processes_edit_each_sample_exactly_once(tmp_path, data_dir):
    log = tmp_path / "edits.log"
    procs = [_run_py(tmp_path, data_dir, *_logging_method(log, 0.6)) for _ in range(2)]
    outs = [p.communicate(timeout=240) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    edited = [line.split()[0] for line in log.read_text().splitlines()]
    assert sorted(edited) == sorted(set(edited)) and len(edited) == 4  # each sample edited exactly once
    run_dir = RunDir(tmp_path / "results" / "sample" / "tiny" / "logged")
    summary = json.loads((run_dir.root / "summary.json").read_text())
    assert summary["n_ok"] == 4 and summary["n_failed"] == 0
    assert [h["stage"] for h in run_dir.info()["history"]] == ["edit", "edit"]
    assert not list(run_dir.root.rglob(".*.tmp.*"))


@pytest.mark.slow
def test_killed_run_leaves_no_claim_and_its_temp_files_are_cleaned(tmp_path, data_dir, compose):
    log = tmp_path / "edits.log"
    proc, run_dir = _started_with_one_row(tmp_path, data_dir, log, 1.0)
    proc.kill()  # kill -9: its claim on the sample it was editing must not outlive it
    proc.communicate()
    sample = next(run_dir.root.glob("samples/*/row.json")).parent
    stale = sample / f".edited.mkv.tmp.{HOST}.{proc.pid}.abc123.mkv"
    live = sample / f".edited.mkv.tmp.{HOST}.{os.getpid()}.def456.mkv"
    other_host = sample / f".edited.mkv.tmp.otherhost.{proc.pid}.ghi789.mkv"
    for p in (stale, live, other_host):
        p.write_bytes(b"half a video")
    summary = run.main(compose(*_logging_method(log, 1.0)))
    assert summary["n_ok"] == 4
    assert not stale.exists() and live.exists() and other_host.exists()
    assert clean_stale_temps(run_dir.root) == []


# 9. What the user sees at the command line.
@pytest.mark.slow
def test_ctrl_c_prints_one_line_and_exits_130(tmp_path, data_dir):
    log = tmp_path / "edits.log"
    proc, run_dir = _started_with_one_row(tmp_path, data_dir, log, 1.5)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    lines = [line for line in err.splitlines() if "interrupted" in line]
    finished = len(list(run_dir.root.glob("samples/*/row.json")))
    assert lines == [f"interrupted; {finished} samples finished, rerun the same command to resume"]
    assert "Traceback" not in err


@pytest.mark.slow
@pytest.mark.parametrize("overrides, code, message", [
    (("dataset=folder", "dataset.root={tmp}/empty"), 2, "no samples"),
    (("dataset=folder", "dataset.root={tmp}/missing"), 1, "dataset.root={tmp}/missing: no such folder"),
    (("tag=../x",), 1, "tag '../x' contains a path separator"),
    (("dataset.limit=0",), 1, "dataset.limit must be a positive integer"),
])
def test_command_line_mistakes_are_one_line_and_a_non_zero_exit(tmp_path, data_dir, overrides, code, message):
    (tmp_path / "empty").mkdir()
    proc = _run_py(tmp_path, data_dir, *BASIC, *(o.format(tmp=tmp_path) for o in overrides))
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == code and message.format(tmp=tmp_path) in out + err
    assert "Traceback" not in out + err and "Error executing job" not in out + err
    assert not (tmp_path / "results" / "folder").exists() and not (tmp_path / "x").exists()


def test_build_in_which_every_row_failed_is_an_error(compose, tmp_path):
    manifest = tmp_path / "clips.jsonl"
    manifest.write_text("".join(json.dumps({"clip_id": f"c{i}", "video": f"missing{i}.mp4", "edited": "e.png",
                                            "instruction": "add a hat"}) + "\n" for i in range(2)))
    with pytest.raises(run.BuildFailed, match="every one of its 2 samples failed"):
        run.main(compose("stage=build", "dataset=hdvila_expert", f"dataset.manifest={manifest}",
                         f"data_dir={tmp_path / 'prepared'}"))
    assert not list((tmp_path / "prepared").rglob("*/meta.json"))
