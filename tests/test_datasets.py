"""Datasets: bad input fails one sample with a clear error, resampling and sharding rules, the HD-VILA builder."""
from __future__ import annotations

import json
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest

import run
from data.folder import FolderDataset, resample_frames
from data.video_io import write_video_lossless, write_video_viewable
from harness.results import RunDir


def _good(root: Path, sid: str, frames: int = 14, size=(64, 112)) -> Path:
    rng = np.random.default_rng(abs(hash(sid)) % 2**32)
    video = rng.integers(0, 256, (frames, *size, 3), dtype=np.uint8)
    d = root / sid
    write_video_lossless(d / "source.mkv", video)
    iio.imwrite(d / "edited.png", video[0][::-1].copy())
    mask = np.zeros(size, np.uint8)
    mask[10:30, 20:50] = 255
    iio.imwrite(d / "mask.png", mask)
    (d / "meta.json").write_text(json.dumps({"instruction": "flip it"}))
    return d


def _cut(path: Path, keep: float) -> None:
    """Truncate a file to the first `keep` fraction of its bytes (an interrupted download or copy)."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def _long_cut_mp4(d: Path) -> None:
    """A 40-frame H.264 source cut to 70%: what is left still decodes to more than 14 frames."""
    (d / "source.mkv").unlink()
    write_video_viewable(d / "source.mp4", np.random.default_rng(1).integers(0, 256, (40, 64, 112, 3), dtype=np.uint8))
    _cut(d / "source.mp4", 0.7)


#: Each defect, applied to one sample: the file its error must name, and words its problem must contain.
DEFECTS = {
    "missing_source": (lambda d: (d / "source.mkv").unlink(), "source", "missing source video"),
    "missing_edit": (lambda d: (d / "edited.png").unlink(), "edited.png", "missing edited"),
    "truncated_video": (lambda d: _cut(d / "source.mkv", 0.1), "source.mkv", "truncated"),
    "truncated_long_video": (lambda d: (write_video_lossless(d / "source.mkv", np.zeros((40, 64, 112, 3), np.uint8) + 7),
                                        _cut(d / "source.mkv", 0.7)), "source.mkv", "truncated: decoded"),
    "truncated_short_video": (lambda d: _cut(d / "source.mkv", 0.4), "source.mkv", "truncated: decoded"),
    "truncated_mp4": (_long_cut_mp4, "source.mp4", "truncated: decoded"),
    "unreadable_video": (lambda d: (d / "source.mkv").write_bytes(b"\x00" * 500), "source.mkv", "cannot open"),
    "too_few_frames": (lambda d: write_video_lossless(d / "source.mkv", np.zeros((9, 64, 112, 3), np.uint8)), "source.mkv",
                       "has 9 frames, needs at least 14"),
    "mask_wrong_size": (lambda d: iio.imwrite(d / "mask.png", np.full((32, 32), 255, np.uint8)), "mask.png", "is 32×32"),
    "mask_empty": (lambda d: iio.imwrite(d / "mask.png", np.zeros((64, 112), np.uint8)), "mask.png", "mask is empty"),
    "edit_grayscale": (lambda d: iio.imwrite(d / "edited.png", np.zeros((64, 112), np.uint8)), "edited.png", "grayscale"),
    "edit_rgba": (lambda d: iio.imwrite(d / "edited.png", np.zeros((64, 112, 4), np.uint8)), "edited.png", "RGBA"),
    "edit_wrong_size": (lambda d: iio.imwrite(d / "edited.png", np.zeros((60, 100, 3), np.uint8)), "edited.png", "is 60×100"),
    "bad_meta": (lambda d: (d / "meta.json").write_text("{not json"), "meta.json", "invalid JSON"),
}


def test_each_bad_input_fails_alone_with_its_file_named(compose, tmp_path):
    root = tmp_path / "mine"
    _good(root, "fine_a")
    _good(root, "fine_b")
    for name, (damage, *_) in DEFECTS.items():
        damage(_good(root, name))
    summary = run.main(compose("metrics=basic", "method=identity", "dataset=folder", f"dataset.root={root}"))
    rows = {r.sample_id: r for r in RunDir(tmp_path / "results" / "folder" / "tiny" / "identity").rows()}
    assert summary["n_failed"] == len(DEFECTS) and summary["n_ok"] == 2
    assert rows["fine_a"].status == rows["fine_b"].status == "ok"
    for name, (_, file, problem) in DEFECTS.items():
        assert rows[name].status == "failed", name
        first_line = rows[name].error.splitlines()[0]
        assert first_line.startswith(f"SampleError: sample {name!r}: ") and first_line.count("sample ") == 1, first_line
        assert f"/{name}/{file}" in first_line and problem in first_line, (name, first_line)


def test_long_videos_are_resampled_evenly(tmp_path):
    root = tmp_path / "d"
    d = _good(root, "long", frames=27)
    ds = FolderDataset(root)
    s = ds.load("long")
    from data.video_io import read_video

    full = read_video(d / "source.mkv")
    idx = np.round(np.linspace(0, 26, 14)).astype(int)
    np.testing.assert_array_equal(s.source, full[idx])
    assert idx[0] == 0 and idx[-1] == 26
    np.testing.assert_array_equal(resample_frames(full, 14), full[idx])


def test_shards_cover_every_sample_exactly_once(sample_track):
    from data.sample_track import SampleTrack

    all_ids = sample_track.ids()
    for k in (1, 2, 3, 4):
        parts = [SampleTrack(data_dir=sample_track._data_dir, shard=i, num_shards=k).ids() for i in range(k)]
        flat = [sid for p in parts for sid in p]
        assert sorted(flat) == sorted(all_ids) and len(flat) == len(set(flat))
    with pytest.raises(ValueError, match="shard"):
        SampleTrack(data_dir=sample_track._data_dir, shard=2, num_shards=2)


def test_missing_folders_say_what_to_give(tmp_path):
    from data.hdvila import HDVILAExpert

    with pytest.raises(FileNotFoundError, match=f"dataset.root={tmp_path / 'nothing'}: no such folder"):
        FolderDataset(tmp_path / "nothing").ids()
    with pytest.raises(FileNotFoundError, match="give dataset.manifest=FILE"):
        HDVILAExpert(tmp_path).ids()
    (tmp_path / "empty").mkdir()
    assert FolderDataset(tmp_path / "empty").ids() == []


# --- HD-VILA expert manifest builder -------------------------------------------------------------------


def _counting_video(path: Path, frames: int, size=(90, 120), fps: int = 10) -> None:
    """A 4:3 video whose frame i is flat grey level 4·i (so kept frames can be identified)."""
    video = np.stack([np.full((*size, 3), 4 * i, np.uint8) for i in range(frames)])
    write_video_viewable(path, video, fps)


def test_hdvila_manifest_builds_cut_cropped_16_9_clips(tmp_path, compose):
    raw = tmp_path / "raw"
    raw.mkdir()
    _counting_video(raw / "a.mp4", 50)
    _counting_video(raw / "b.mp4", 50)
    edited = np.zeros((90, 120, 3), np.uint8)
    edited[:, :60] = 255  # left half white: after the 16:9 crop (rows 11..78) still the left half
    iio.imwrite(raw / "a_edit.png", edited)
    iio.imwrite(raw / "b_edit.png", np.zeros((36, 64, 3), np.uint8))  # already 16:9: only resized
    mask = np.zeros((90, 120), np.uint8)
    mask[:, 60:] = 255
    iio.imwrite(raw / "a_mask.png", mask)
    (raw / "m.csv").write_text(
        "clip_id,video,url,start,end,frames,edited,mask,instruction,edit_type\n"
        "a,a.mp4,https://example.invalid/a,1.0,4.0,,a_edit.png,a_mask.png,make it white,change_color\n"
        "b,b.mp4,,,,,b_edit.png,,add a cat,add_object\n"
        "c,missing.mp4,,,,,b_edit.png,,add a dog,add_object\n"
    )
    cfg = compose("metrics=basic", "stage=build", "dataset=hdvila_expert", f"dataset.manifest={raw / 'm.csv'}", "dataset.size=[36,64]")
    run.main(cfg)
    root = Path(cfg.data_dir) / "hdvila_expert"
    ds = FolderDataset(root, name="hdvila_expert")
    assert ds.ids() == ["a", "b"]  # c's video is missing: reported, not built
    a = ds.load("a")
    assert a.source.shape == (14, 36, 64, 3)
    # Span 1.0..4.0 s at 10 fps = frames 10..40 (31 frames); 14 kept at round(linspace(0, 30, 14)).
    expected = 4 * (10 + np.round(np.linspace(0, 30, 14)).astype(int))
    np.testing.assert_allclose(a.source[:, 18, 32, 0].astype(int), expected, atol=3)
    assert a.edited_frame[:, :30].min() > 200 and a.edited_frame[:, 34:].max() < 50
    assert a.mask[:, 34:].all() and not a.mask[:, :30].any()
    assert a.edit_type == "change_color" and json.loads((root / "a" / "meta.json").read_text())["provenance"]["url"]
    from data.hdvila import edit_type_mix

    assert edit_type_mix(root).to_dict() == {"change_color": 50.0, "add_object": 50.0}
    stamp = (root / "a" / "source.mkv").stat().st_mtime_ns
    run.main(cfg)  # a rerun builds nothing new
    assert (root / "a" / "source.mkv").stat().st_mtime_ns == stamp


def test_hdvila_bad_clips_fail_alone_naming_the_clip_and_the_file(tmp_path, compose):
    raw = tmp_path / "raw"
    raw.mkdir()
    for name, frames in (("good", 30), ("short", 9), ("cut", 60), ("cut_short", 30)):
        _counting_video(raw / f"{name}.mp4", frames)
    # noise frames: the mp4 is mostly frame data, so a cut keeps its index and what precedes the cut decodes
    write_video_viewable(raw / "cut.mp4", np.random.default_rng(0).integers(0, 256, (60, 90, 120, 3), dtype=np.uint8), 10)
    _cut(raw / "cut.mp4", 0.6)
    write_video_viewable(raw / "cut_short.mp4", np.random.default_rng(1).integers(0, 256, (30, 90, 120, 3), dtype=np.uint8), 10)
    _cut(raw / "cut_short.mp4", 0.3)
    (raw / "junk.mp4").write_bytes(b"\x00" * 700)
    iio.imwrite(raw / "edit.png", np.zeros((90, 120, 3), np.uint8))
    iio.imwrite(raw / "gray.png", np.zeros((90, 120), np.uint8))
    iio.imwrite(raw / "rgba.png", np.zeros((90, 120, 4), np.uint8))
    mask = np.zeros((90, 120), np.uint8)
    mask[30:60, 40:80] = 255
    iio.imwrite(raw / "mask.png", mask)
    iio.imwrite(raw / "mask_empty.png", np.zeros((90, 120), np.uint8))
    iio.imwrite(raw / "mask_small.png", np.full((30, 30), 255, np.uint8))
    outside = np.zeros((90, 120), np.uint8)
    outside[:5] = 255  # only in the rows the 16:9 crop removes
    iio.imwrite(raw / "mask_outside.png", outside)
    #: clip -> (video, edited, mask, the file its error must name, words of its problem)
    clips = {
        "good": ("good.mp4", "edit.png", "mask.png", None, None),
        "missing_video": ("nowhere.mp4", "edit.png", "mask.png", "nowhere.mp4", "missing video file"),
        "unreadable": ("junk.mp4", "edit.png", "mask.png", "junk.mp4", "cannot open"),
        "truncated": ("cut.mp4", "edit.png", "mask.png", "cut.mp4", "truncated: decoded"),
        "truncated_short": ("cut_short.mp4", "edit.png", "mask.png", "cut_short.mp4", "truncated: decoded"),
        "too_few_frames": ("short.mp4", "edit.png", "mask.png", "short.mp4", "span has 9 frames, needs at least 14"),
        "missing_edit": ("good.mp4", "no_edit.png", "mask.png", "no_edit.png", "no such file"),
        "edit_grayscale": ("good.mp4", "gray.png", "mask.png", "gray.png", "grayscale"),
        "edit_rgba": ("good.mp4", "rgba.png", "mask.png", "rgba.png", "RGBA"),
        "missing_mask": ("good.mp4", "edit.png", "no_mask.png", "no_mask.png", "no such file"),
        "mask_wrong_size": ("good.mp4", "edit.png", "mask_small.png", "mask_small.png", "is 30×30"),
        "mask_empty": ("good.mp4", "edit.png", "mask_empty.png", "mask_empty.png", "mask is empty"),
        "mask_outside_crop": ("good.mp4", "edit.png", "mask_outside.png", "mask_outside.png", "empty after the 16:9"),
    }
    rows = [{"clip_id": c, "video": v, "edited": e, "mask": m, "instruction": "x"} for c, (v, e, m, *_) in clips.items()]
    # spans of the cut file: one reaching past the cut (an error), one ending before it (intact, so built)
    clips["truncated_span"] = (None, None, None, "cut.mp4", "truncated: decoded")
    rows.append({"clip_id": "truncated_span", "video": "cut.mp4", "start": 1.0, "end": 5.5, "edited": "edit.png", "instruction": "x"})
    clips["span_before_cut"] = (None, None, None, None, None)
    rows.append({"clip_id": "span_before_cut", "video": "cut.mp4", "start": 0.2, "end": 1.8, "edited": "edit.png", "instruction": "x"})
    (raw / "m.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    cfg = compose("stage=build", "dataset=hdvila_expert", f"dataset.manifest={raw / 'm.jsonl'}", "dataset.size=[36,64]",
                  f"data_dir={tmp_path / 'data'}")
    summary = run.main(cfg)
    assert summary["n_built"] == 2 and summary["n_failed"] == len(clips) - 2
    for clip, (*_, file, problem) in clips.items():
        if file is None:
            continue
        error = summary["failed"][clip]
        assert error.startswith(f"sample {clip!r}: {raw / file}: ") and error.count("sample ") == 1, error
        assert problem in error, error
    assert FolderDataset(tmp_path / "data" / "hdvila_expert", name="hdvila_expert").ids() == ["good", "span_before_cut"]
    again = run.main(cfg)  # a rerun skips what was built and reports the bad clips again
    assert again["n_skipped"] == 2 and again["n_built"] == 0 and again["failed"] == summary["failed"]
