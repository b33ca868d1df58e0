"""stage=report on damaged or hostile results folders: the report is always written, every bad item is named
with its path, the other runs keep their exact numbers, gallery URLs resolve, and nothing lands outside
results_dir. Also: means over the samples that have a column, with their counts shown."""
from __future__ import annotations

import html
import logging
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pandas as pd
import pytest

import run
from data.video_io import write_image, write_video_viewable
from harness.files import read_json, write_json
from harness.results import RunDir
from harness.types import Costs, ScoreRow
from reports.tables import write_report

COLUMNS = {"clip_tgt": {"percent": True, "higher_is_better": True}, "flow": {"percent": False, "higher_is_better": False},
           "clip_tgt_plus": {"percent": True, "higher_is_better": True}}
FRAMES = np.random.default_rng(0).integers(0, 255, (4, 16, 16, 3), dtype=np.uint8)
ALPHA = {"a": (0.8, 2.0), "b": (0.6, 4.0), "c": (0.4, 6.0)}  # sample id -> (clip_tgt, flow)
BETA = {"a": (0.5, 1.0), "b": (0.7, 3.0)}
ODD_ID = "we#ird? 100% sure"


@dataclass
class World:
    tmp: Path
    results: Path
    data: Path  # the folder dataset's root
    alpha: RunDir
    beta: RunDir


def write_sample(root: Path, sid: str) -> None:
    """One sample of a `data.folder.FolderDataset`: a 4-frame source, its edited first frame and a mask."""
    write_video_viewable(root / sid / "source.mp4", FRAMES, 7.0)
    write_image(root / sid / "edited.png", FRAMES[0])
    mask = np.zeros((16, 16), np.uint8)
    mask[4:12, 4:12] = 255
    write_image(root / sid / "mask.png", mask)


def make_run(results: Path, data: Path, dataset: str, method: str, scores: dict[str, tuple[float, float]]) -> RunDir:
    rd = RunDir(results / dataset / "tiny" / method)
    rd.claim({"dataset": dataset, "method": method, "method_name": method, "models": "tiny", "tiny_models": True,
              "fingerprint": "x", "fingerprint_config": {},
              "config": {"dataset": {"_target_": "data.folder.FolderDataset", "root": str(data), "name": dataset, "num_frames": 4}}})
    for sid, (clip, flow) in scores.items():
        rd.write_row(ScoreRow(sid, "ok", {"clip_tgt": clip, "flow": flow}, Costs(seconds=1.0)))
        write_video_viewable(rd.sample_dir(sid) / "edited.mp4", FRAMES, 7.0)
    rd.write_summary({"tiny": True, "columns": COLUMNS, "scores": {}})
    return rd


def build(tmp: Path, dataset: str = "folder", alpha: str = "alpha", extra: dict | None = None) -> World:
    """Two runs on one folder dataset: alpha on samples a, b, c and beta on a, b (plus `extra`: id -> (alpha's, beta's))."""
    extra = extra or {}
    data = tmp / "data" / dataset
    for sid in [*ALPHA, *extra]:
        write_sample(data, sid)
    results = tmp / "results"
    return World(tmp, results, data,
                 make_run(results, data, dataset, alpha, ALPHA | {k: v[0] for k, v in extra.items()}),
                 make_run(results, data, dataset, "beta", BETA | {k: v[1] for k, v in extra.items()}))


def snapshot(tmp: Path, results: Path) -> dict[str, tuple[int, int]]:
    """Every file under `tmp` outside `results` (symlinks not followed), with its size and mtime."""
    out = {}
    for root, dirs, files in os.walk(tmp):
        dirs[:] = [d for d in dirs if Path(root, d) != results]
        for f in files:
            st = os.lstat(Path(root, f))
            out[str(Path(root, f))] = (st.st_size, st.st_mtime_ns)
    return out


def urls(page: str) -> list[str]:
    return [html.unescape(u) for u in re.findall(r'(?:src|href)="([^"]+)"', page)]


# Each case: what it does to the results, the runs left in the table (method -> (CLIP_tgt ×100, flow, n) computed by
# hand), and what the report must say about it (a path relative to results_dir, or the problem's words).
def truncate_row(w):
    p = w.alpha.root / "samples" / "c" / "row.json"
    p.write_text(p.read_text()[:25])


def row_not_json(w):
    (w.alpha.root / "samples" / "c" / "row.json").write_text("this is not JSON\n")


def row_json_list(w):
    (w.alpha.root / "samples" / "c" / "row.json").write_text("[1, 2, 3]")


def row_scores_string(w):
    write_json(w.alpha.root / "samples" / "c" / "row.json", {"sample_id": "c", "status": "ok", "scores": "high"})


def row_status_weird(w):
    write_json(w.alpha.root / "samples" / "c" / "row.json", {"sample_id": "c", "status": "weird", "scores": {"clip_tgt": 0.1}})


def row_id_mismatch(w):
    write_json(w.alpha.root / "samples" / "c" / "row.json", {"sample_id": "b", "status": "ok", "scores": {"clip_tgt": 0.1}})


def run_json_damaged(w):
    p = w.beta.root / "run.json"
    p.write_text(p.read_text()[:40])


def run_json_missing(w):
    (w.beta.root / "run.json").unlink()


def summary_damaged(w):
    (w.beta.root / "summary.json").write_text('{"tiny": true, "columns": ')


def summary_wrong_types(w):
    write_json(w.beta.root / "summary.json", {"tiny": True, "columns": "clip_tgt", "scores": []})


def dataset_moved(w):
    w.data.rename(w.data.with_name("moved_away"))


def source_unreadable(w):
    (w.data / "b" / "source.mp4").write_bytes(b"not a video at all")


def dataset_evil(name: str):
    def mutate(w):
        info = read_json(w.alpha.root / "run.json")
        write_json(w.alpha.root / "run.json", info | {"dataset": name})
    return mutate


def gallery_escapes(w):
    (w.tmp / "outside").mkdir()
    w.results.joinpath("gallery").symlink_to(w.tmp / "outside", target_is_directory=True)


def control_char_id(w):
    sid = "bell\x07id"
    (w.alpha.root / "samples" / sid).mkdir()
    write_json(w.alpha.root / "samples" / sid / "row.json", {"sample_id": sid, "status": "ok", "scores": {"clip_tgt": 0.0, "flow": 0.0}})


FULL_ALPHA, FULL_BETA = ("alpha", 60.0, 4.0, 3), ("beta", 60.0, 2.0, 2)  # (80+60+40)/3, (2+4+6)/3; (50+70)/2, (1+3)/2
ALPHA_AB = ("alpha", 70.0, 3.0, 2)  # sample c's row damaged: (80+60)/2, (2+4)/2
ROW_PATH = "folder/tiny/alpha/samples/c/row.json"
CASES = {
    "row truncated": (truncate_row, [ALPHA_AB, FULL_BETA], ROW_PATH),
    "row not JSON": (row_not_json, [ALPHA_AB, FULL_BETA], ROW_PATH),
    "row a JSON list": (row_json_list, [ALPHA_AB, FULL_BETA], ROW_PATH),
    "row scores a string": (row_scores_string, [ALPHA_AB, FULL_BETA], ROW_PATH),
    "row status weird": (row_status_weird, [ALPHA_AB, FULL_BETA], ROW_PATH),
    "row sample_id not its folder": (row_id_mismatch, [ALPHA_AB, FULL_BETA], ROW_PATH),
    "run.json truncated": (run_json_damaged, [FULL_ALPHA], "folder/tiny/beta/run.json"),
    "run.json missing": (run_json_missing, [FULL_ALPHA], "folder/tiny/beta/run.json"),
    "summary.json truncated": (summary_damaged, [FULL_ALPHA, FULL_BETA], "folder/tiny/beta/summary.json"),
    "summary.json wrong types": (summary_wrong_types, [FULL_ALPHA, FULL_BETA], "folder/tiny/beta/summary.json"),
    "dataset folder moved": (dataset_moved, [FULL_ALPHA, FULL_BETA], "source unavailable"),
    "source video unreadable": (source_unreadable, [FULL_ALPHA, FULL_BETA], "b/source.mp4"),
    "dataset ../evil in run.json": (dataset_evil("../evil"), [FULL_BETA], "folder/tiny/alpha/run.json"),
    "dataset ../../evil in run.json": (dataset_evil("../../evil"), [FULL_BETA], "folder/tiny/alpha/run.json"),
    "gallery folder links outside": (gallery_escapes, [FULL_ALPHA, FULL_BETA], "resolves outside"),
    "sample id with a control character": (control_char_id, [("alpha", 45.0, 3.0, 4), FULL_BETA], "'bell\\x07id'"),  # (80+60+40+0)/4
}


def check_report(w: World, expected: list[tuple[str, float, float, int]], caplog) -> str:
    """Write the report; check table.csv's numbers, that every URL on index.html resolves, and that nothing outside
    results_dir changed. Returns index.html's text."""
    before = snapshot(w.tmp, w.results)
    with caplog.at_level(logging.WARNING):
        write_report(w.results)
    assert snapshot(w.tmp, w.results) == before, "the report wrote outside results_dir"
    table = pd.read_csv(w.results / "table.csv")
    assert sorted(table["method"]) == sorted(m for m, *_ in expected)
    for method, clip, flow, n in expected:
        row = table[table["method"] == method].iloc[0]
        assert (row["clip_tgt"], row["flow"], row["n"]) == (pytest.approx(clip), pytest.approx(flow), n), method
    page = (w.results / "index.html").read_text()
    for u in urls(page):
        assert not u.startswith(("/", "file:")) and "://" not in u, u
        target = (w.results / unquote(u)).resolve()
        assert target.is_file() and target.is_relative_to(w.results.resolve()), u
    return page


@pytest.mark.parametrize("case", list(CASES))
def test_a_damaged_or_hostile_item_is_named_and_the_rest_reported(case, tmp_path, caplog):
    mutate, expected, said = CASES[case]
    w = build(tmp_path)
    mutate(w)
    page = html.unescape(check_report(w, expected, caplog))
    assert said in page, f"index.html does not mention {said!r}"
    assert said in caplog.text
    if said.endswith("row.json"):  # the damaged row is counted in the diagnostics and left out of the means
        table = pd.read_csv(w.results / "table.csv")
        assert table.loc[table["method"] == "alpha", "n_damaged"].item() == 1
        assert said in (w.results / "table.md").read_text()
        assert "damaged: row.json skipped" in page  # the sample's figure says so too
    exported = {"dataset folder moved": [], "source video unreadable": ["a", "c"], "gallery folder links outside": [],
                "dataset ../evil in run.json": ["a", "b"], "dataset ../../evil in run.json": ["a", "b"]}.get(case, ["a", "b", "c"])
    assert sorted(p.parent.name for p in (w.results / "gallery").rglob("source.mp4")) == exported
    assert not (tmp_path / "evil").exists() and not (w.results / "evil").exists()


def test_odd_sample_id_is_percent_encoded_and_resolves(tmp_path, caplog):
    # alpha: (80+60+40+20)/4 = 50, (2+4+6+8)/4 = 5; beta: (50+70+90)/3 = 70, (1+3+5)/3 = 3
    w = build(tmp_path, extra={ODD_ID: ((0.2, 8.0), (0.9, 5.0))})
    page = check_report(w, [("alpha", 50.0, 5.0, 4), ("beta", 70.0, 3.0, 3)], caplog)
    encoded = "we%23ird%3F%20100%25%20sure"
    for name in ("source.mp4", "edited.png", "mask.png"):
        assert f'src="gallery/folder/{encoded}/{name}"' in page
    assert f'src="folder/tiny/alpha/samples/{encoded}/edited.mp4"' in page
    assert (w.results / "gallery" / "folder" / ODD_ID / "source.mp4").is_file()


def test_odd_dataset_and_method_names_are_percent_encoded(tmp_path, caplog):
    dataset, method = "café 'q\"", "m#1?%[x=1]"
    w = build(tmp_path, dataset=dataset, alpha=method)
    page = check_report(w, [(method, 60.0, 4.0, 3), FULL_BETA], caplog)
    assert 'src="gallery/caf%C3%A9%20%27q%22/a/source.mp4"' in page
    assert 'src="caf%C3%A9%20%27q%22/tiny/m%231%3F%25%5Bx%3D1%5D/samples/a/edited.mp4"' in page
    assert any(u.startswith("plots/metrics_caf%C3%A9") for u in urls(page))


def test_stage_report_survives_a_damaged_row(tmp_path):
    from hydra import compose, initialize_config_dir

    w = build(tmp_path)
    truncate_row(w)
    with initialize_config_dir(config_dir=str(Path(run.__file__).resolve().parent / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["stage=report", f"results_dir={w.results}"])
    run.main(cfg)
    table = pd.read_csv(w.results / "table.csv").set_index("method")
    assert table.loc["alpha", "clip_tgt"] == pytest.approx(70.0) and table.loc["alpha", "n_damaged"] == 1
    assert ROW_PATH in (w.results / "index.html").read_text()


def plus_run(results: Path, method: str, rows: list[ScoreRow]) -> None:
    rd = RunDir(results / "sample" / "svd" / method)
    rd.claim({"dataset": "sample", "method": method, "method_name": method, "models": "svd", "tiny_models": False,
              "fingerprint": "x", "fingerprint_config": {}, "config": {}})
    for r in rows:
        rd.write_row(r)
    rd.write_summary({"tiny": False, "columns": COLUMNS, "scores": {}})


def test_means_cover_the_samples_that_have_the_column(tmp_path):
    res = tmp_path / "results"
    masked = lambda sid, plus: ScoreRow(sid, "ok", {"clip_tgt": 0.5, "clip_tgt_plus": plus}, suite="s1")  # noqa: E731
    plus_run(res, "videoshop", [masked("a", 0.6), masked("b", 0.7), ScoreRow("c", "ok", {"clip_tgt": 0.8}, suite="s1")])
    plus_run(res, "bdia", [masked("a", 0.6), masked("b", 0.7), ScoreRow("c", "nan", {"clip_tgt": math.nan}, suite="s1")])
    plus_run(res, "static", [ScoreRow("a", "ok", {"clip_tgt": 0.4}, suite="s1")])  # no sample has a mask
    write_report(res)
    table = pd.read_csv(res / "table.csv").set_index("method")
    vs, bd = table.loc["videoshop"], table.loc["bdia"]
    assert vs["clip_tgt_plus"] == pytest.approx(65.0) and vs["n_clip_tgt_plus"] == 2  # (60+70)/2: c has no mask
    assert vs["clip_tgt"] == pytest.approx(60.0) and vs["n_clip_tgt"] == 3  # (50+50+80)/3
    assert math.isnan(bd["clip_tgt_plus"]) and bd["n_clip_tgt_plus"] == 3  # a NaN edit counts, NaN in every column
    md = (res / "table.md").read_text()
    main = md.split("### Diagnostics")[0]
    videoshop = next(line for line in main.splitlines() if "| videoshop" in line)
    assert "65.00 (n=2)" in videoshop and "60.00 (n=" not in videoshop
    assert "(n=" not in next(line for line in main.splitlines() if "| bdia" in line)
    assert "n_clip_tgt_plus" in md.split("### Diagnostics")[1]
    st = table.loc["static"]
    assert math.isnan(st["clip_tgt_plus"]) and pd.isna(st["n_clip_tgt_plus"]) and st["n_clip_tgt"] == 1
    assert "<NA>" not in md and next(line for line in main.splitlines() if "| static" in line).count("—") == 1
    assert "65.00 (n=2)" in (res / "table.tex").read_text() and "65.00 (n=2)" in (res / "index.html").read_text()
    t2 = (res / "paper" / "table2.md").read_text()  # the paper's layout marks the partial mean too
    assert "65.00 (n=2)" in t2 and "60.00 (n=" not in t2
    assert pd.read_csv(res / "paper" / "table2.csv")["n_clip_tgt_plus"].dropna().tolist() == [2]


def test_rows_of_mixed_metric_suites_are_reported(tmp_path, caplog):
    res = tmp_path / "results"
    plus_run(res, "videoshop", [ScoreRow("a", "ok", {"clip_tgt": 0.5}, suite="paper-1"), ScoreRow("b", "ok", {"clip_tgt": 0.7}, suite="paper-1"),
                                ScoreRow("c", "ok", {"clip_tgt": 0.9}, suite=None)])
    with caplog.at_level(logging.WARNING):
        write_report(res)
    said = "run sample/svd/videoshop: its rows were scored by 2 different metric suites (None: 1, paper-1: 2 rows)"
    assert said in caplog.text and said in html.unescape((res / "index.html").read_text())
    assert "python run.py stage=score dataset=sample models=svd method=videoshop" in caplog.text
    assert pd.read_csv(res / "table.csv")["n_suites"].tolist() == [2]


def test_gallery_without_media_still_lists_the_samples(tmp_path, caplog):
    """Writing the gallery's media fails (a file where its folder should be): each sample says why, the page is written."""
    w = build(tmp_path)
    (w.results / "gallery").write_text("a file, not a folder")
    page = html.unescape(check_report(w, [FULL_ALPHA, FULL_BETA], caplog))
    assert page.count("cannot write gallery/folder/") == 3


def test_a_sample_view_that_raises_is_shown_with_its_error(tmp_path, caplog, monkeypatch):
    import reports.gallery as gallery

    real = gallery._edit

    def edit(run, sid, results_dir):
        if sid == "b":
            raise RuntimeError("boom while drawing b")
        return real(run, sid, results_dir)

    monkeypatch.setattr(gallery, "_edit", edit)
    w = build(tmp_path)
    page = html.unescape(check_report(w, [FULL_ALPHA, FULL_BETA], caplog))
    assert "folder / b" in page and "cannot be shown: RuntimeError: boom while drawing b" in page
    assert page.count('class="sample"') == 3 and "boom while drawing b" in caplog.text


def test_a_summary_that_misses_finished_rows_is_flagged(tmp_path):
    """A shard that finished after the last summary was written: the report says the set metrics are stale."""
    from harness.results import RunDir
    from harness.types import Costs, ScoreRow
    from reports.runs import read_runs

    rd = RunDir(tmp_path / "sample" / "tiny" / "identity")
    rd.claim({"dataset": "sample", "method": "identity", "method_name": "identity", "models": "tiny",
              "fingerprint": "x", "fingerprint_config": {}, "config": {}})
    for sid in ("a", "b", "c"):
        rd.write_row(ScoreRow(sid, "ok", {"ssim": 0.5}, Costs(seconds=1.0)))
    rd.write_summary({"n": 2, "tiny": True, "columns": {}, "scores": {"fvd": 10.0}})
    runs, problems = read_runs(tmp_path)
    assert len(runs) == 1 and "covers 2 of the run's 3 rows" in problems.files[rd.root / "summary.json"]
    rd.write_summary({"n": 3, "tiny": True, "columns": {}, "scores": {"fvd": 10.0}})
    assert not read_runs(tmp_path)[1].files
