"""`overlap`: the next sample read and the last one written beside the edit, with the results of the plain loop."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest

import run
from data.folder import FolderDataset
from data.video_io import read_video
from harness import overlap, runner
from harness.files import file_lock
from harness.results import RunDir
from harness.runner import Interrupted

pytestmark = pytest.mark.usefixtures("one_thread")

EDIT_S = 0.4  # each edit of the timing tests lasts this long, so that what runs beside it can be seen to


def _run_dir(results, method, dataset="sample"):
    return RunDir(results / dataset / "tiny" / method)


@pytest.fixture
def events(monkeypatch):
    """(what, sample id, thread name, start, end) of every sample read, edit and video write, in start order."""
    seen: list[tuple[str, str, str, float, float]] = []

    def timed(what, fn, sid_of):
        def wrapper(*a, **kw):
            t0 = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                seen.append((what, sid_of(*a), threading.current_thread().name, t0, time.perf_counter()))
        return wrapper

    edit_one = runner.edit_one

    def slow_edit(method, sample, seed, device):
        time.sleep(EDIT_S)
        return edit_one(method, sample, seed, device)

    monkeypatch.setattr(FolderDataset, "load", timed("load", FolderDataset.load, lambda ds, sid: sid))
    monkeypatch.setattr(runner, "edit_one", timed("edit", slow_edit, lambda m, sample, *a: sample.id))
    monkeypatch.setattr(RunDir, "save_video", timed("save", RunDir.save_video, lambda rd, sid, *a: sid))
    return seen


def _of(events, what):
    return {sid: (thread, t0, t1) for w, sid, thread, t0, t1 in events if w == what}


def test_reading_and_writing_run_beside_the_edits(compose, events):
    summary = run.main(compose("metrics=basic", "method=identity", "dataset.limit=4", "overlap=true"))
    assert summary["n_ok"] == 4
    loads, edits, saves = _of(events, "load"), _of(events, "edit"), _of(events, "save")
    ids = sorted(edits, key=lambda s: edits[s][1])
    assert loads[ids[0]][0] == "MainThread"
    for before, sid in zip(ids, ids[1:]):  # read while the sample before it was edited
        assert loads[sid][0].startswith("read-ahead") and loads[sid][1] < edits[before][2]
    for sid, after in zip(ids, ids[1:]):  # written while the sample after it was edited
        assert saves[sid][0].startswith("write-behind") and saves[sid][1] < edits[after][2]
    assert all(edits[s][0] == "MainThread" for s in ids)


def test_without_overlap_everything_is_done_in_turn(compose, events):
    run.main(compose("metrics=basic", "method=identity", "dataset.limit=3", "overlap=false"))
    assert {thread for _, _, thread, _, _ in events} == {"MainThread"}
    spans = sorted((t0, t1) for *_, t0, t1 in events)
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))  # no two of them at once


def test_overlapped_run_equals_the_plain_one(compose, tmp_path):
    """Videoshop (tiny models): the same rows, frames and features, with and without overlap."""
    common = ("metrics=basic", "method=videoshop", "dataset.limit=2")
    run.main(compose(*common, "overlap=false", results_dir=tmp_path / "plain"))
    run.main(compose(*common, "overlap=true", results_dir=tmp_path / "overlap"))
    plain, over = _run_dir(tmp_path / "plain", "videoshop"), _run_dir(tmp_path / "overlap", "videoshop")
    rows_a = {r.sample_id: r for r in plain.rows()}
    rows_b = {r.sample_id: r for r in over.rows()}
    assert rows_a.keys() == rows_b.keys() and len(rows_a) == 2
    for sid, a in rows_a.items():
        b = rows_b[sid]
        assert (a.status, a.scores, a.costs.nfe, a.suite) == (b.status, b.scores, b.costs.nfe, b.suite) == \
            ("ok", a.scores, a.costs.nfe, a.suite)
        assert {k: v for k, v in a.info.items() if k != "phases"} == {k: v for k, v in b.info.items() if k != "phases"}
        np.testing.assert_array_equal(read_video(plain.sample_dir(sid) / "edited.mkv"),
                                      read_video(over.sample_dir(sid) / "edited.mkv"))


def test_a_write_that_fails_behind_fails_its_sample_and_releases_it(compose, tmp_path, monkeypatch, sample_track):
    ids = sample_track.ids()[:3]
    save = RunDir.save_video

    def full_disk(self, sid, frames, fps):
        if sid == ids[1]:
            raise OSError(28, "No space left on device")
        return save(self, sid, frames, fps)

    monkeypatch.setattr(RunDir, "save_video", full_disk)
    summary = run.main(compose("metrics=basic", "method=identity", "dataset.limit=3", "overlap=true"))
    run_dir = _run_dir(tmp_path / "results", "identity")
    rows = {r.sample_id: r for r in run_dir.rows()}
    assert summary["n_ok"] == 2 and summary["n_failed"] == 1
    assert rows[ids[1]].status == "failed" and "No space left on device" in rows[ids[1]].error
    with run_dir.sample_lock(ids[1]) as held:  # nothing holds its claim any more
        assert held
    monkeypatch.setattr(RunDir, "save_video", save)
    again = run.main(compose("metrics=basic", "method=identity", "dataset.limit=3", "overlap=true"))
    assert again["n_ok"] == 3 and again["skipped"] == 2


def test_ctrl_c_finishes_the_sample_being_written(compose, tmp_path, monkeypatch, sample_track):
    from tests.fake_methods import Interrupting

    ids = sample_track.ids()[:3]
    save = RunDir.save_video

    def slow_save(self, sid, frames, fps):
        time.sleep(1.0)  # still writing the second sample when the third one's edit is interrupted
        return save(self, sid, frames, fps)

    monkeypatch.setattr(RunDir, "save_video", slow_save)
    monkeypatch.setattr(Interrupting, "interrupt_on", ids[2])
    with pytest.raises(Interrupted) as e:
        run.main(compose("metrics=basic", "method=identity", "method._target_=tests.fake_methods.Interrupting",
                         "tag=interrupting", "dataset.limit=3", "overlap=true"))
    run_dir = _run_dir(tmp_path / "results", "interrupting")
    rows = {r.sample_id: r for r in run_dir.rows()}
    assert e.value.finished == 2 and set(rows) == set(ids[:2]) and all(r.status == "ok" for r in rows.values())
    assert all((run_dir.sample_dir(s) / "edited.mkv").exists() for s in ids[:2])
    for sid in ids:
        with file_lock(run_dir.root / ".claims" / sid, blocking=False) as held:
            assert held


def test_auto_is_on_for_cuda_with_cores_to_spare(monkeypatch):
    monkeypatch.setattr(overlap, "usable_cores", lambda: overlap.MIN_CORES)
    assert overlap.use_overlap("auto", "cuda") and overlap.use_overlap(None, "cuda:1")
    assert not overlap.use_overlap("auto", "cpu")
    assert overlap.use_overlap(True, "cpu") and not overlap.use_overlap(False, "cuda")
    monkeypatch.setattr(overlap, "usable_cores", lambda: overlap.MIN_CORES - 1)
    assert not overlap.use_overlap("auto", "cuda")
    with pytest.raises(ValueError, match="overlap must be auto, true or false"):
        overlap.use_overlap("sometimes", "cuda")
