"""Hostile data: every malformed input fails alone with an error naming its sample or row and its file, the
others finish, nothing is written outside the folders a dataset owns, and finished files stay byte-identical."""
from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import datasets
import imageio.v3 as iio
import numpy as np
import pytest
from PIL import Image

from data.folder import BUILD_MARKER, FolderDataset, read_marker
from data.hdvila import HDVILAExpert
from data.magicbrush import MagicBrush
from data.video_io import write_video_lossless
from harness.types import SampleError

FRAMES, H, W = 14, 32, 56  # 32×56 is close enough to 16:9 that the HD-VILA crop keeps nearly all of it
OUT_SIZE = (18, 32)


def snapshot(root: Path) -> dict[str, object]:
    """Every path under `root` -> its bytes, its link target, or its kind; FIFOs are never opened."""
    out: dict[str, object] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = f"link -> {os.readlink(p)}"
            elif p.is_dir():
                out[rel] = "dir"
            elif p.is_file():
                out[rel] = p.read_bytes()
            else:
                out[rel] = "special"
    return out


def changes(before: dict, after: dict) -> set[str]:
    """Paths added, removed or changed."""
    return {p for p in before.keys() | after.keys() if before.get(p) != after.get(p)}


def _video(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (FRAMES, H, W, 3), dtype=np.uint8)


def _mask() -> np.ndarray:
    m = np.zeros((H, W), np.uint8)
    m[8:24, 16:40] = 255
    return m


def _sample(root: Path, sid: str, meta: object = None, seed: int = 0) -> Path:
    """A good sample in the common layout; `meta` (any JSON value) replaces its meta.json."""
    d = root / sid
    video = _video(seed)
    write_video_lossless(d / "source.mkv", video)
    iio.imwrite(d / "edited.png", video[0][::-1].copy())
    iio.imwrite(d / "mask.png", _mask())
    body = {"instruction": "flip it", "edit_type": "change_color", "fps": 7, "provenance": {"by": "test"}}
    (d / "meta.json").write_text(json.dumps(body if meta is None else meta))
    return d


# --- dataset=folder: reading a hostile folder -----------------------------------------------------------


def _meta(value: object):
    return lambda root, outside: _sample(root, "bad", meta=value)


def _meta_file(write):
    def make(root, outside):
        d = _sample(root, "bad")
        (d / "meta.json").unlink()
        write(d / "meta.json")
    return make


def _link_outside(root, outside):
    _sample(outside, "stolen")
    (root / "bad").symlink_to(outside / "stolen", target_is_directory=True)


def _link_up(root, outside):
    (root / "bad").symlink_to("..", target_is_directory=True)


def _case_twin(root, outside):
    _sample(root, "Bad", seed=3)
    _sample(root, "bad", seed=4)


#: case -> (make the hostile sample `bad` in root, the file its error names (relative to root), its problem)
FOLDER_CASES = {
    "link_outside_root": (_link_outside, "bad", "outside the dataset folder"),
    "link_to_parent": (_link_up, "bad", "outside the dataset folder"),
    "case_twin": (_case_twin, "bad", "differs only in case from sample 'Bad'"),
    "meta_not_json": (_meta_file(lambda p: p.write_text("{not json")), "bad/meta.json", "invalid JSON"),
    "meta_not_utf8": (_meta_file(lambda p: p.write_bytes(b'{"instruction": "\xff\xfe"}')), "bad/meta.json", "invalid JSON"),
    "meta_list": (_meta([1, 2]), "bad/meta.json", "must be a JSON object, got list"),
    "meta_string": (_meta("hello"), "bad/meta.json", "must be a JSON object, got str"),
    "meta_fifo": (_meta_file(os.mkfifo), "bad/meta.json", "is not a regular file"),
    "meta_folder": (_meta_file(lambda p: p.mkdir()), "bad/meta.json", "is not a regular file"),
    "fps_zero": (_meta({"fps": 0}), "bad/meta.json", "key 'fps': must be a number in (0, 240]"),
    "fps_negative": (_meta({"fps": -1}), "bad/meta.json", "key 'fps': must be a number in (0, 240], got int -1"),
    "fps_too_high": (_meta({"fps": 300}), "bad/meta.json", "key 'fps': must be a number in (0, 240], got int 300"),
    "fps_text": (_meta({"fps": "fast"}), "bad/meta.json", "key 'fps': must be a number in (0, 240], got str 'fast'"),
    "fps_bool": (_meta({"fps": True}), "bad/meta.json", "key 'fps'"),
    "fps_nan": (_meta_file(lambda p: p.write_text('{"fps": NaN}')), "bad/meta.json", "key 'fps'"),
    "edit_type_unknown": (_meta({"edit_type": "explode"}), "bad/meta.json", "key 'edit_type': must be one of add_object"),
    "instruction_number": (_meta({"instruction": 5}), "bad/meta.json", "key 'instruction': must be a string or null, got int 5"),
    "target_prompt_list": (_meta({"target_prompt": ["a", "b"]}), "bad/meta.json", "key 'target_prompt': must be a string"),
    "source_prompt_object": (_meta({"source_prompt": {"a": 1}}), "bad/meta.json", "key 'source_prompt': must be a string"),
}


@pytest.mark.parametrize("case", FOLDER_CASES)
def test_folder_sample_fails_alone_and_nothing_is_written(tmp_path, case):
    make, file, problem = FOLDER_CASES[case]
    root, outside = tmp_path / "mine", tmp_path / "outside"
    _sample(root, "a_good", seed=1)
    _sample(root, "z_good", seed=2, meta={"instruction": None, "edit_type": None, "provenance": [1]})  # nulls, extra keys
    make(root, outside)
    before = snapshot(tmp_path)
    ds = FolderDataset(root)
    ids = ds.ids()
    assert "bad" in ids and "a_good" in ids and "z_good" in ids
    with pytest.raises(SampleError) as err:
        ds.load("bad")
    assert err.value.sample_id == "bad" and err.value.path == str(root / file), str(err.value)
    assert problem in err.value.problem, str(err.value)
    for sid in set(ids) - {"bad"}:
        assert ds.load(sid).source.shape == (FRAMES, H, W, 3)
    assert ds.load("z_good").instruction == "" and ds.load("z_good").fps == 7.0
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("name", ["back\\slash", "new\nline", "trailing ", "tab\tname", "x" * 201])
def test_folder_names_that_cannot_be_result_folders_are_left_out_and_named(tmp_path, name, caplog):
    root = tmp_path / "mine"
    _sample(root, "good")
    (root / name).mkdir()
    ds = FolderDataset(root)
    with caplog.at_level(logging.ERROR):
        assert ds.ids() == ["good"]
    assert list(ds.unlisted) == [name] and f"sample folder {name!r} in {root} left out" in caplog.text
    with pytest.raises(SampleError, match="cannot be a folder name"):
        ds.load(name)


# --- HD-VILA manifests ----------------------------------------------------------------------------------


def _raw(tmp_path: Path) -> Path:
    raw = tmp_path / "raw"
    write_video_lossless(raw / "good.mkv", _video(5))
    iio.imwrite(raw / "edit.png", _video(6)[0])
    iio.imwrite(raw / "mask.png", _mask())
    os.mkfifo(raw / "pipe.mkv")
    os.mkfifo(raw / "pipe.png")
    (raw / "folder.png").mkdir()
    (tmp_path / "outside").mkdir()
    return raw


def _row(clip_id: object, **kw) -> dict:
    return {"clip_id": clip_id, "video": "good.mkv", "edited": "edit.png", "mask": "mask.png",
            "instruction": "paint it", "edit_type": "change_color", **kw}


def _without(key: str) -> dict:
    row = _row("bad")
    del row[key]
    return row


#: case -> (the hostile line(s) after the first good row, the `failed` key, the file named, words of the error).
#: The file is "MANIFEST:N" for a row error at line N (the manifest's path, " line N"), else a path under raw/.
JSONL_CASES = {
    "clip_dotdot_path": ([_row("../evil")], "line 2", "MANIFEST:2", "clip_id '../evil' contains a path separator"),
    "clip_absolute": ([_row("/abs")], "line 2", "MANIFEST:2", "clip_id '/abs' contains a path separator"),
    "clip_nested": ([_row("a/b")], "line 2", "MANIFEST:2", "clip_id 'a/b' contains a path separator"),
    "clip_empty": ([_row("")], "line 2", "MANIFEST:2", "clip_id '' is empty"),
    "clip_dotdot": ([_row("..")], "line 2", "MANIFEST:2", "clip_id '..' is a relative path component"),
    "clip_backslash": ([_row("..\\evil")], "line 2", "MANIFEST:2", "contains a path separator"),
    "clip_number": ([_row(7)], "line 2", "MANIFEST:2", "clip_id 7 is a int, not a string"),
    "clip_missing": ([_without("clip_id")], "line 2", "MANIFEST:2", "clip_id None is a NoneType"),
    "clip_duplicate": ([_row("good")], "line 2", "MANIFEST:2", "duplicate clip_id 'good' on line 1 (its row is kept)"),
    "clip_case_twin": ([_row("GOOD")], "line 2", "MANIFEST:2", "clip_id differs only in case from 'good' on line 1"),
    "bad_json": (['{"clip_id": "bad", '], "line 2", "MANIFEST:2", "invalid JSON"),
    "bad_json_after_blanks": (["", "   ", '{"clip_id": oops}'], "line 4", "MANIFEST:4", "invalid JSON"),
    "bad_json_after_u2028": ([json.dumps(_row("sep", instruction="a\u2028b\u2029c\x85d"), ensure_ascii=False), "{"],
                             "line 3", "MANIFEST:3", "invalid JSON"),
    "not_utf8": ([b'{"clip_id": "\xff"}'], "line 2", "MANIFEST:2", "invalid JSON"),
    "not_object": (["[1, 2]"], "line 2", "MANIFEST:2", "must be a JSON object, got list"),
    "bare_string": (['"good"'], "line 2", "MANIFEST:2", "must be a JSON object, got str"),
    "no_instruction": ([_without("instruction")], "bad", "MANIFEST:2", "key 'instruction': missing or empty"),
    "blank_instruction": ([_row("bad", instruction="  ")], "bad", "MANIFEST:2", "key 'instruction': missing or empty"),
    "instruction_number": ([_row("bad", instruction=5)], "bad", "MANIFEST:2", "key 'instruction': must be a string"),
    "edit_type_unknown": ([_row("bad", edit_type="explode")], "bad", "MANIFEST:2", "key 'edit_type': must be one of"),
    "no_video": ([_without("video")], "bad", "MANIFEST:2", "key 'video': must be a path"),
    "no_edited": ([_without("edited")], "bad", "MANIFEST:2", "key 'edited': must be a path"),
    "video_number": ([_row("bad", video=3)], "bad", "MANIFEST:2", "key 'video': must be a path"),
    "start_text": ([_row("bad", start="soon")], "bad", "MANIFEST:2", "key 'start': must be a number of seconds"),
    "end_before_start": ([_row("bad", start=1.0, end=0.5)], "bad", "MANIFEST:2", "key 'end': must be after start"),
    "frames_text": ([_row("bad", frames="a b c")], "bad", "MANIFEST:2", "key 'frames': must be frame indices"),
    "video_fifo": ([_row("bad", video="pipe.mkv")], "bad", "pipe.mkv", "is not a regular file"),
    "edited_fifo": ([_row("bad", edited="pipe.png")], "bad", "pipe.png", "is not a regular file"),
    "mask_folder": ([_row("bad", mask="folder.png")], "bad", "folder.png", "is not a regular file"),
    "video_missing": ([_row("bad", video="../nowhere.mkv")], "bad", "../nowhere.mkv", "missing video file"),
}


def _jsonl(lines: list) -> bytes:
    return b"\n".join(line if isinstance(line, bytes) else (line if isinstance(line, str) else json.dumps(line)).encode()
                      for line in lines) + b"\n"


def _build_hostile(tmp_path: Path, manifest_name: str, content: bytes, prepare=None):
    """Build `good` alone, then the hostile manifest (good, hostile rows, good2): the summary and what changed."""
    raw, data = _raw(tmp_path), tmp_path / "data"
    (raw / "first.jsonl").write_bytes(_jsonl([_row("good")]))
    HDVILAExpert(data, manifest=str(raw / "first.jsonl"), size=OUT_SIZE).build(data)
    if prepare:
        prepare(tmp_path)
    (raw / manifest_name).write_bytes(content)
    before = snapshot(tmp_path)
    summary = HDVILAExpert(data, manifest=str(raw / manifest_name), size=OUT_SIZE).build(data)
    return raw, data, summary, changes(before, snapshot(tmp_path))


def _expect_one_failure(raw, data, summary, changed, key, file, words, manifest, listed=("good", "good2")):
    assert summary["n_skipped"] == 1 and summary["n_built"] == 1 and summary["n_failed"] == 1, summary
    assert list(summary["failed"]) == [key]
    error = summary["failed"][key]
    if file.startswith("MANIFEST:"):
        where = f"{manifest} line {file.split(':')[1]}: "
        assert error.startswith(where if key.startswith("line ") else f"sample {key!r}: {where}"), error
    else:
        path = file if Path(file).is_absolute() else (raw / file).resolve()
        assert error.startswith(f"sample {key!r}: {path}: "), error
    assert words in error, error
    # Only the new clip and the marker were written; the finished clip is byte-identical.
    assert changed == {"data/hdvila_expert/good2", f"data/hdvila_expert/{BUILD_MARKER}",
                       *(f"data/hdvila_expert/good2/{f}" for f in ("source.mkv", "edited.png", "mask.png", "meta.json"))}
    assert FolderDataset(data / "hdvila_expert").ids() == list(listed)


@pytest.mark.parametrize("case", JSONL_CASES)
def test_hdvila_jsonl_row_fails_alone(tmp_path, case):
    lines, key, file, words = JSONL_CASES[case]
    content = _jsonl([_row("good"), *lines, _row("good2")])
    raw, data, summary, changed = _build_hostile(tmp_path, "m.jsonl", content)
    if case == "bad_json_after_u2028":  # the row with U+2028 inside a string is fine: it builds too
        summary["n_built"] -= 1
        changed = {c for c in changed if not c.startswith("data/hdvila_expert/sep")}
    listed = ("good", "good2", "sep") if case == "bad_json_after_u2028" else ("good", "good2")
    _expect_one_failure(raw, data, summary, changed, key, file, words, raw / "m.jsonl", listed)


CSV_HEADER = "clip_id,video,edited,mask,instruction,edit_type,start,end\n"
GOOD_CSV = "good,good.mkv,edit.png,mask.png,paint it,change_color,,\n"
GOOD2_CSV = "good2,good.mkv,edit.png,mask.png,paint it,,,\n"
#: case -> (CSV lines between the good rows, the `failed` key, line of the error, words of the error)
CSV_CASES = {
    "extra_field": ("bad,good.mkv,edit.png,,x,,,,surplus\n", "line 3", 3, "has 1 more field(s) than the header"),
    "clip_escape_after_multiline": ('sep,good.mkv,edit.png,,"two\nlines",,,\n../x,good.mkv,edit.png,,x,,,\n',
                                    "line 5", 5, "clip_id '../x' contains a path separator"),
    "duplicate": ("good,good.mkv,edit.png,,x,,,\n", "line 3", 3, "duplicate clip_id 'good' on line 2"),
    "empty_clip_id": (",good.mkv,edit.png,,x,,,\n", "line 3", 3, "clip_id None is a NoneType"),
    "edit_type_unknown": ("bad,good.mkv,edit.png,,x,explode,,\n", "bad", 3, "key 'edit_type': must be one of"),
    "no_instruction": ("bad,good.mkv,edit.png,,,,,\n", "bad", 3, "key 'instruction': missing or empty"),
    "no_video": ("bad,,edit.png,,x,,,\n", "bad", 3, "key 'video': must be a path"),
    "start_nan": ("bad,good.mkv,edit.png,,x,,nan,\n", "bad", 3, "key 'start': must be a number of seconds"),
}


@pytest.mark.parametrize("case", CSV_CASES)
def test_hdvila_csv_row_fails_alone_with_its_line(tmp_path, case):
    lines, key, line, words = CSV_CASES[case]
    content = (CSV_HEADER + GOOD_CSV + lines + GOOD2_CSV).encode()
    raw, data, summary, changed = _build_hostile(tmp_path, "m.csv", content)
    if case == "clip_escape_after_multiline":
        summary["n_built"] -= 1
        changed = {c for c in changed if not c.startswith("data/hdvila_expert/sep")}
    listed = ("good", "good2", "sep") if case == "clip_escape_after_multiline" else ("good", "good2")
    _expect_one_failure(raw, data, summary, changed, key, f"MANIFEST:{line}", words, raw / "m.csv", listed)


def test_hdvila_never_writes_through_a_link_in_its_folder(tmp_path):
    """A clip folder that is a link to somewhere outside data_dir is refused, and the target stays untouched."""
    def plant(tmp: Path):
        (tmp / "data" / "hdvila_expert" / "evil").symlink_to(tmp / "outside", target_is_directory=True)

    content = _jsonl([_row("good"), _row("evil"), _row("good2")])
    raw, data, summary, changed = _build_hostile(tmp_path, "m.jsonl", content, prepare=plant)
    _expect_one_failure(raw, data, summary, changed, "evil", str(data / "hdvila_expert" / "evil"),
                        "outside the dataset folder", raw / "m.jsonl", listed=("evil", "good", "good2"))
    with pytest.raises(SampleError, match="outside the dataset folder"):
        FolderDataset(data / "hdvila_expert").load("evil")
    assert not any((tmp_path / "outside").iterdir())


def test_hdvila_every_row_failing_is_logged_and_no_marker_is_written(tmp_path, caplog):
    raw, data = _raw(tmp_path), tmp_path / "data"
    (raw / "m.jsonl").write_bytes(_jsonl([_row("../a"), "[]", _row("b", video="pipe.mkv")]))
    with caplog.at_level(logging.ERROR):
        summary = HDVILAExpert(data, manifest=str(raw / "m.jsonl"), size=OUT_SIZE).build(data)
    assert (summary["n_built"], summary["n_skipped"], summary["n_failed"]) == (0, 0, 3)
    assert list(summary["failed"]) == ["line 1", "line 2", "b"]
    assert "every row failed (3); nothing was built" in caplog.text
    assert read_marker(data / "hdvila_expert") is None
    with pytest.raises(FileNotFoundError, match="every row failed"):
        HDVILAExpert(data, manifest=str(raw / "m.jsonl"), size=OUT_SIZE).ids()


def test_hdvila_builds_on_first_use_when_a_manifest_is_given(tmp_path, monkeypatch):
    raw, data = _raw(tmp_path), tmp_path / "data"
    manifest = raw / "m.jsonl"
    manifest.write_bytes(_jsonl([_row("good"), _row("../x")]))
    ds = HDVILAExpert(data, manifest=str(manifest), size=OUT_SIZE)
    assert ds.ids() == ["good"]
    marker = read_marker(data / "hdvila_expert")
    assert marker["n_built"] == 1 and marker["failed"] == ["line 2"] and marker["manifest"] == str(manifest.resolve())
    monkeypatch.setattr(HDVILAExpert, "build", lambda *a: pytest.fail("a finished build must not run again"))
    assert HDVILAExpert(data, manifest=str(manifest), size=OUT_SIZE).ids() == ["good"]
    assert HDVILAExpert(data, size=OUT_SIZE).ids() == ["good"]  # no manifest: the folder as it is
    monkeypatch.undo()
    manifest.write_bytes(_jsonl([_row("good"), _row("good2")]))  # a changed manifest builds what is missing
    assert HDVILAExpert(data, manifest=str(manifest), size=OUT_SIZE).ids() == ["good", "good2"]
    with pytest.raises(FileNotFoundError, match="dataset.manifest=.*nowhere.jsonl: no such file"):
        HDVILAExpert(data, manifest=str(raw / "nowhere.jsonl")).ids()


# --- dataset.limit / shards -----------------------------------------------------------------------------


@pytest.mark.parametrize("kw, key", [({"limit": 0}, "dataset.limit"), ({"limit": -1}, "dataset.limit"),
                                     ({"limit": "5"}, "dataset.limit"), ({"limit": True}, "dataset.limit"),
                                     ({"shard": "1", "num_shards": 2}, "dataset.shard"),
                                     ({"num_shards": 0}, "dataset.num_shards"), ({"num_shards": 1.5}, "dataset.num_shards")])
@pytest.mark.parametrize("make", [lambda tmp, **kw: FolderDataset(tmp, **kw), lambda tmp, **kw: HDVILAExpert(tmp, **kw),
                                  lambda tmp, **kw: MagicBrush(tmp, **kw)], ids=["folder", "hdvila", "magicbrush"])
def test_bad_limit_or_shard_is_an_error_at_construction(tmp_path, make, kw, key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        make(tmp_path, **kw)


# --- MagicBrush copies ----------------------------------------------------------------------------------


def _magicbrush_copy(path: Path, ids: list[tuple[object, object]], turn_type: str = "int32", rename: dict | None = None,
                     instructions: list | None = None) -> Path:
    """A MagicBrush-schema `save_to_disk` copy with the given (img_id, turn_index) rows; `rename` renames columns."""
    rng = np.random.default_rng(0)
    cols = {"img_id": [], "turn_index": [], "source_img": [], "mask_img": [], "target_img": [], "instruction": []}
    for k, (img_id, turn) in enumerate(ids):
        src = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
        tgt = src.copy()
        tgt[16:32, 20:45] = [255, 0, 0]
        masked = np.dstack([src, np.full((64, 64), 255, np.uint8)])
        masked[16:32, 20:45, 3] = 0
        cols["img_id"].append(img_id)
        cols["turn_index"].append(turn)
        cols["source_img"].append(Image.fromarray(src))
        cols["mask_img"].append(Image.fromarray(masked, "RGBA"))
        cols["target_img"].append(Image.fromarray(tgt))
        cols["instruction"].append("paint a red box" if instructions is None else instructions[k])
    features = datasets.Features({k: datasets.Image() if k.endswith("_img") else datasets.Value("string") for k in cols})
    features["turn_index"] = datasets.Value(turn_type)
    ds = datasets.Dataset.from_dict(cols, features=features)
    for old, new in (rename or {}).items():
        ds = ds.rename_column(old, new) if new else ds.remove_columns(old)
    datasets.DatasetDict({"dev": ds}).save_to_disk(str(path))
    return path


@pytest.fixture
def compose_here(tmp_path):
    """compose(*overrides) -> run.py's config with data_dir and results_dir in tmp_path (no sample track built)."""
    from hydra import compose, initialize_config_dir

    import run  # registers the repo_root resolver  # noqa: F401

    def _compose(*overrides: str):
        with initialize_config_dir(config_dir=str(Path(run.__file__).parent / "conf"), version_base="1.3"):
            return compose(config_name="config", overrides=[f"data_dir={tmp_path / 'data'}", *overrides])

    return _compose


@pytest.fixture
def tiny_backbone(compose_here) -> dict:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(compose_here().models.svd_backbone, resolve=True)


def _magicbrush(tmp_path: Path, raw: Path, backbone: dict, **kw) -> MagicBrush:
    return MagicBrush(tmp_path / "data", raw=str(raw), backbone=backbone, video={"steps": 1, "size": [64, 64]}, **kw)


#: case -> (rows as (img_id, turn_index), turn_index type, instructions, the `failed` key, words of the error)
MAGICBRUSH_CASES = {
    "img_id_escape": ([("100", "1"), ("../x", "1"), ("102", "1")], "string", None, "row 1", "img_id '../x' contains a path separator"),
    "turn_index_path": ([("100", "1"), ("101", "a/b"), ("102", "1")], "string", None, "row 1", "turn_index 'a/b' must be a non-negative integer"),
    "img_id_dotdot": ([("100", 1), ("..", 1), ("102", 1)], "int32", None, "row 1", "img_id '..' is a relative path component"),
    "img_id_empty": ([("100", 1), ("", 1), ("102", 1)], "int32", None, "row 1", "img_id '' is empty"),
    "img_id_missing": ([("100", 1), (None, 1), ("102", 1)], "int32", None, "row 1", "img_id None must be a string or an integer"),
    "repeated_id": ([("100", 1), ("100", 1), ("102", 1)], "int32", None, "row 1", "repeats the sample id '100_1' of row 0"),
    "case_twin_id": ([("ab", 1), ("AB", 1), ("102", 1)], "int32", None, "row 1", "differs only in case from the sample id 'ab_1'"),
    "no_instruction": ([("100", 1), ("101", 1), ("102", 1)], "int32", ["x", None, "y"], "101_1", "instruction: missing or empty"),
}


@pytest.mark.parametrize("case", MAGICBRUSH_CASES)
def test_magicbrush_bad_row_fails_alone_and_writes_nothing_outside(tmp_path, tiny_backbone, case):
    ids, turn_type, instructions, key, words = MAGICBRUSH_CASES[case]
    raw = _magicbrush_copy(tmp_path / "raw", ids, turn_type, instructions=instructions)
    before = snapshot(tmp_path)
    summary = _magicbrush(tmp_path, raw, tiny_backbone).build(tmp_path / "data")
    assert summary["n_built"] == 2 and summary["n_failed"] == 1 and list(summary["failed"]) == [key], summary
    where = f"{raw}[dev] row 1"
    assert summary["failed"][key].startswith(where if key == "row 1" else f"sample {key!r}: {where}"), summary["failed"]
    assert words in summary["failed"][key]
    built = sorted(p.name for p in (tmp_path / "data" / "magicbrush").iterdir() if p.is_dir())
    assert changes(before, snapshot(tmp_path)) == {
        "data", "data/magicbrush", f"data/magicbrush/{BUILD_MARKER}",
        *(f"data/magicbrush/{sid}{f}" for sid in built for f in ("", "/source.mkv", "/edited.png", "/mask.png", "/meta.json"))}
    finished = snapshot(tmp_path / "data" / "magicbrush")
    again = _magicbrush(tmp_path, raw, tiny_backbone).build(tmp_path / "data")  # a rerun: finished files untouched
    assert again["n_skipped"] == 2 and again["failed"].keys() == summary["failed"].keys()
    assert changes(finished, snapshot(tmp_path / "data" / "magicbrush")) <= {BUILD_MARKER}


@pytest.mark.parametrize("rename, words", [({"turn_index": None}, "no turn_index"),
                                           ({"source_img": "src_image"}, "no source_img or input_img"),
                                           ({"target_img": "edited"}, "no target_img or output_img"),
                                           ({"mask_img": None, "img_id": "id"}, "no img_id, mask_img")],
                         ids=["no-turn-index", "source-renamed", "target-renamed", "id-and-mask"])
def test_magicbrush_wrong_columns_are_one_error_before_any_model_loads(tmp_path, tiny_backbone, monkeypatch, rename, words):
    import videoshop.models

    monkeypatch.setattr(videoshop.models, "load_svd", lambda *a, **k: pytest.fail("the model must not be loaded"))
    raw = _magicbrush_copy(tmp_path / "raw", [("100", 1), ("101", 1)], rename=rename)
    with pytest.raises(ValueError, match=f"{raw}\\[dev\\]: not MagicBrush's columns: {words}"):
        _magicbrush(tmp_path, raw, tiny_backbone).build(tmp_path / "data")
    assert not (tmp_path / "data").exists()


def test_magicbrush_hub_unreachable_fails_in_seconds_naming_the_fix(tmp_path, monkeypatch):
    import datasets.config
    import huggingface_hub.constants

    import harness.weights

    monkeypatch.setattr(harness.weights, "hub_reachable", lambda *a, **k: False)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "empty_cache")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty_hub"))
    offline_before = (datasets.config.HF_HUB_OFFLINE, huggingface_hub.constants.HF_HUB_OFFLINE)
    started = time.monotonic()
    with pytest.raises(ConnectionError) as err:
        MagicBrush(tmp_path / "data", hub_id="osunlp/MagicBrush").all_ids()
    assert time.monotonic() - started < 10
    message = str(err.value)
    assert message.startswith("osunlp/MagicBrush: the Hugging Face hub is unreachable") and "dataset.raw=DIR" in message
    assert (datasets.config.HF_HUB_OFFLINE, huggingface_hub.constants.HF_HUB_OFFLINE) == offline_before


def test_magicbrush_run_builds_on_first_use_with_an_estimate(compose_here, tmp_path, monkeypatch, caplog):
    """`python run.py method=... dataset=magicbrush` builds the missing dataset, says what and how long, then runs."""
    import run
    from harness.cache import clear

    raw = _magicbrush_copy(tmp_path / "raw", [("100", 1), ("101", 1), ("102", 1)])
    args = ("method=identity", "metrics=basic", "dataset=magicbrush", f"dataset.raw={raw}", "dataset.video.steps=1",
            "dataset.video.size=[64,64]")
    with caplog.at_level(logging.INFO):
        summary = run.main(compose_here(*args, "dataset.limit=2", f"results_dir={tmp_path / 'results'}"))
    assert summary["n_ok"] == 2
    assert "MagicBrush dev: building 2 of 2 samples into" in caplog.text and "roughly 0.5 s per video" in caplog.text
    assert read_marker(tmp_path / "data" / "magicbrush")["limit"] == 2
    clear()
    monkeypatch.setattr(MagicBrush, "build", lambda *a: pytest.fail("a finished build serves a smaller limit"))
    assert _magicbrush(tmp_path, raw, {}, limit=1).ids() == ["100_1"]
    monkeypatch.undo()
    summary = run.main(compose_here(*args, f"results_dir={tmp_path / 'results2'}"))  # no limit: the rest is built first
    assert summary["n_ok"] == 3 and read_marker(tmp_path / "data" / "magicbrush")["limit"] is None
