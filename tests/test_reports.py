"""Reports: table values from known per-sample rows, the paper's layouts beside them, and the plots."""
from __future__ import annotations

import math
import re
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pandas as pd
import pytest

import run
from harness.results import RunDir
from harness.types import Costs, ScoreRow
from reports.columns import PAPER_COLUMNS, header, metric_order
from reports.gallery import _score_items
from reports.paper_tables import LayoutConfig, all_layouts, paper_layout, table4_layout
from reports.plots import _limits, linearity_title, plotted_columns, read_linearity, write_plots
from reports.tables import build_table, write_report

PAPER_CSV = Path(__file__).resolve().parents[1] / "reports" / "paper_data" / "paper_tables.csv"
PAPER_T4 = Path(__file__).resolve().parents[1] / "reports" / "paper_data" / "paper_table4.csv"
COLUMNS = {
    "clip_tgt": {"percent": True, "higher_is_better": True, "group": "edit fidelity"},
    "flow": {"percent": False, "higher_is_better": False, "group": "source faithfulness"},
    "fvd": {"percent": False, "higher_is_better": False, "group": "source faithfulness"},
    "region_skipped": {"percent": False, "higher_is_better": False, "group": "regions"},
}


def make_run(results, dataset, models, method, rows, *, tiny=False, set_scores=None, dataset_cfg=None):
    """A finished run folder as the runner leaves it: run.json, one row.json per sample, summary.json."""
    rd = RunDir(results / dataset / models / method)
    rd.claim({"dataset": dataset, "method": method, "method_name": method, "models": models, "tiny_models": tiny,
              "fingerprint": "x", "fingerprint_config": {}, "config": {"dataset": dataset_cfg or {"name": dataset}}})
    for r in rows:
        rd.write_row(r)
    rd.write_summary({"tiny": tiny, "columns": COLUMNS, "scores": set_scores or {}})
    return rd


def ok(sid, clip_tgt, flow, seconds):
    return ScoreRow(sid, "ok", {"clip_tgt": clip_tgt, "flow": flow, "region_skipped": 1.0}, Costs(seconds=seconds, nfe=10))


@pytest.fixture
def results(tmp_path) -> Path:
    res = tmp_path / "results"
    make_run(res, "magicbrush", "svd", "videoshop",
             [ok("a", 0.80, 2.0, 10.0), ok("b", 0.90, 4.0, 30.0), ScoreRow("c", "failed", error="SampleError: bad")],
             set_scores={"fvd": 1500.0})
    make_run(res, "magicbrush", "svd", "bdia",
             [ok("a", 0.70, 1.0, 15.0), ScoreRow("b", "nan", {"clip_tgt": math.nan, "flow": math.nan}, Costs(seconds=5.0))],
             set_scores={"fvd": None})
    make_run(res, "sample", "tiny", "videoshop", [ok("a", 0.50, 1.0, 1.0)], tiny=True)
    make_run(res, "magicbrush", "svd", "tokenflow", [ok("a", 0.60, 3.0, 40.0)])
    make_run(res, "sample", "svd", "videoshop", [ok("a", 0.95, 0.5, 2.0)])  # real models, but not the paper's dataset
    make_run(res, "sample", "svd", "svd_no_src", [ok("a", 0.90, 5.0, 1.0)])
    return res


def _row(df, **kw):
    sel = df
    for k, v in kw.items():
        sel = sel[sel[k] == v]
    assert len(sel) == 1, f"expected one row for {kw}, got {len(sel)}"
    return sel.iloc[0]


def test_table_means_counts_and_nan_propagation(results):
    df = build_table(results)
    vs = _row(df, dataset="magicbrush", method="videoshop")
    assert vs["clip_tgt"] == pytest.approx(np.mean([0.80, 0.90]) * 100)  # ×100 since the column is a percentage
    assert vs["flow"] == pytest.approx(3.0)  # not a percentage: as is
    assert vs["fvd"] == pytest.approx(1500.0)  # set-level: from the summary
    assert (vs["n"], vs["n_failed"], vs["n_nan"]) == (3, 1, 0)  # the failed sample is counted and excluded
    assert vs["seconds_per_edit"] == pytest.approx(20.0)
    bd = _row(df, dataset="magicbrush", method="bdia")
    assert math.isnan(bd["clip_tgt"]) and math.isnan(bd["flow"]) and math.isnan(bd["fvd"])  # one NaN video -> NaN mean
    assert (bd["n"], bd["n_failed"], bd["n_nan"]) == (2, 0, 1)
    assert bd["seconds_per_edit"] == pytest.approx(10.0)  # a NaN edit still cost its time
    assert bool(_row(df, dataset="sample", models="tiny")["tiny"]) and not bool(vs["tiny"])


def test_paper_layouts_hold_the_paper_numbers_and_the_differences(results):
    table = build_table(results)
    paper = pd.read_csv(PAPER_CSV, dtype={"table": str})
    layouts = {lay.key: lay for lay in all_layouts(table)}
    for key in ("2", "3", "5"):
        frame = layouts[f"table{key}"].frame
        printed = frame[frame["kind"] == "paper"].set_index("method")
        expected = paper[paper["table"] == key].set_index("method")
        assert list(printed.index) == list(expected.index)  # every row, in the paper's order
        for col in ["clip_tgt", "tifa", "flow", "fvd", "ssim", "clip_tc"]:
            np.testing.assert_allclose(printed[col].to_numpy(float), expected[col].to_numpy(float), equal_nan=True)

    t2 = layouts["table2"].frame
    measured = _row(t2, method="videoshop", kind="measured", dataset="magicbrush")
    delta = _row(t2, method="videoshop", kind="Δ", dataset="magicbrush")
    vs_paper = _row(paper, table="2", method="videoshop")
    assert measured["clip_tgt"] == pytest.approx(85.0)
    assert delta["clip_tgt"] == pytest.approx(85.0 - vs_paper["clip_tgt"])
    assert delta["flow"] == pytest.approx(3.0 - vs_paper["flow"])
    assert "1/3 failed" in measured["note"]
    assert math.isnan(_row(t2, method="bdia", kind="Δ", dataset="magicbrush")["clip_tgt"])
    tiny = _row(t2, method="videoshop", kind="measured", dataset="sample", models="tiny")
    assert "tiny models: not comparable" in tiny["note"]
    assert _row(t2, method="tokenflow", kind="measured")["clip_tgt"] == pytest.approx(60.0)  # not in the paper: appended

    md = layouts["table2"].markdown()
    assert f"{vs_paper['clip_tgt']:.2f}" in md and f"{85.0 - vs_paper['clip_tgt']:+.2f}" in md
    assert "Edit fidelity" in md and "Flow ↓" in md and "CLIP_tgt ↑" in md and "tiny models: not comparable" in md
    # A metric nobody measured prints as "—" in measured rows, not as a NaN result.
    lines = [line.split("|") for line in md.splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0]]
    tokenflow = [c.strip() for c in next(line for line in lines if "TokenFlow" in line[1])]
    assert tokenflow[header.index("TIFA ↑")] == "—" and tokenflow[header.index("CLIP_tgt ↑")] == "60.00"
    bdia = [c.strip() for c in next(line for line in lines if "BDIA" in line[1] and "measured" in line[2])]
    assert bdia[header.index("CLIP_tgt ↑")] == "NaN"  # measured, but NaN

    t5 = layouts["table5"].frame
    assert set(t5.loc[t5["kind"] == "measured", "method"]) == {"videoshop"}  # Table 5 shows Videoshop's variants only


def test_table4_times_are_multiples_of_videoshops_measured_time(results):
    t4 = table4_layout(build_table(results), LayoutConfig()).frame
    paper = pd.read_csv(PAPER_T4).set_index("baseline")
    bdia = _row(t4, method="bdia", kind="measured", dataset="magicbrush")
    assert bdia["time_x"] == pytest.approx(10.0 / 20.0)
    assert _row(t4, method="bdia", kind="Δ", dataset="magicbrush")["time_x"] == pytest.approx(0.5 - paper.loc["bdia", "time_multiple_of_videoshop"])
    assert _row(t4, method="tokenflow", kind="measured")["time_x"] == pytest.approx(40.0 / 20.0)
    assert _row(t4, method="videoshop", kind="measured", dataset="magicbrush")["time_x"] == pytest.approx(1.0)
    assert _row(t4, method="average", kind="paper")["editing_pref"] == pytest.approx(paper.loc["average", "editing_quality_pref_videoshop_pct"])
    assert "n=3" in _row(t4, method="videoshop", kind="measured", dataset="magicbrush")["row"]  # measured rows say their n
    assert not ((t4["method"] == "videoshop") & (t4["kind"] == "Δ")).any()  # the reference's own multiple is 1 by definition


def test_rows_from_another_dataset_are_not_compared_with_the_paper(results):
    table = build_table(results)
    t2 = paper_layout("2", table, LayoutConfig())
    f = t2.frame
    other = _row(f, method="videoshop", kind="measured", dataset="sample", models="svd")
    assert "other dataset: not comparable" in other["note"] and "tiny" not in other["note"] and not other["comparable"]
    delta = _row(f, method="videoshop", kind="Δ", dataset="sample", models="svd")
    assert "no comparison" in delta["row"] and "other dataset: not comparable" in delta["note"]
    assert "not comparable" in _row(f, method="svd_no_src", kind="Δ", dataset="sample")["note"]
    same = _row(f, method="videoshop", kind="measured", dataset="magicbrush")
    same_delta = _row(f, method="videoshop", kind="Δ", dataset="magicbrush")
    assert same["comparable"] and "not comparable" not in same["note"] and "no comparison" not in same_delta["row"]
    assert math.isnan(same_delta["time_x"])  # Videoshop's own time multiple is 1 by definition: no difference shown
    assert not math.isnan(_row(f, method="bdia", kind="Δ", dataset="magicbrush")["time_x"])
    html = t2.html()
    assert '<tr class="delta nc">' in html and '<tr class="measured">' in html and '<tr class="paper">' in html
    assert '<th colspan="3" class="g">Edit fidelity</th>' in html  # groups span their columns, with a rule before
    t5 = paper_layout("5", table, LayoutConfig()).frame  # the ablations' videos are MagicBrush-derived
    assert _row(t5, method="videoshop", kind="measured", dataset="magicbrush")["comparable"]
    assert not _row(t5, method="videoshop", kind="measured", dataset="sample", models="svd")["comparable"]
    t3 = paper_layout("3", table, LayoutConfig()).frame
    assert not t3.loc[t3["kind"] == "measured", "comparable"].any()  # no HD-VILA runs: nothing is comparable


def test_columns_are_ordered_like_the_paper_with_arrows_and_bookkeeping_apart(results):
    df = build_table(results)
    cols = list(df.columns)
    assert cols.index("clip_tgt") < cols.index("flow") < cols.index("fvd") < cols.index("seconds_per_edit")
    assert cols.index("region_skipped") > cols.index("peak_mem_mb")  # bookkeeping after the costs
    assert "region_skipped" not in plotted_columns(df, COLUMNS)
    assert plotted_columns(df, COLUMNS)[:3] == ["clip_tgt", "flow", "fvd"]

    columns = {"clip_tgt": {"percent": True, "higher_is_better": True}, "ssim": {"percent": True, "higher_is_better": True},
               "gt_psnr": {"higher_is_better": True, "group": "ground truth"}, "gt_ssim": {"percent": True, "higher_is_better": True},
               "region_cotracker": {"higher_is_better": True, "group": "regions"}}
    scores = {"gt_ssim": 0.5, "region_cotracker": 1.0, "ssim": 0.25, "gt_psnr": 20.0, "clip_tgt": 0.9, "region_skipped": 0.0}
    metrics, diagnostics = _score_items(scores, columns)
    assert metrics == [("CLIP_tgt ↑", "90.00"), ("SSIM ↑", "25.00"), ("gt_psnr ↑", "20.00"), ("gt_ssim ↑", "50.00")]
    assert diagnostics == [("region_cotracker", "1.00"), ("region_skipped", "0.00")]  # known bookkeeping even without info
    assert metric_order(PAPER_COLUMNS[::-1] + ["gt_psnr"], {}) == PAPER_COLUMNS + ["gt_psnr"]
    assert header("flow", {}) == "Flow ↓" and header("gt_psnr", {"gt_psnr": {"higher_is_better": False}}) == "gt_psnr ↓"


def test_plot_panels_have_their_own_range():
    lo, hi = _limits(np.array([83.5, 99.4, 100.0, np.nan]))  # CLIP-like: 80 and 100 must look different
    assert 75 < lo < 83.5 and hi > 100
    assert _limits(np.array([0.0, 1.7]))[0] == 0.0  # non-negative values never get a negative axis
    assert _limits(np.array([-2.0, 3.0]))[0] < -2.0
    lo, hi = _limits(np.array([1.0, 1.0]))
    assert lo < 1.0 < hi


def test_which_dataset_sits_beside_which_table_is_configurable(results):
    from omegaconf import OmegaConf

    cfg = LayoutConfig.from_config(OmegaConf.create({"tables": {"table5": {"datasets": ["sample"]}}, "aliases": {"tokenflow": "videoshop"}}))
    table = build_table(results)
    t5 = paper_layout("5", table, cfg).frame
    assert set(t5.loc[t5["kind"] == "measured", "dataset"]) == {"sample"}
    t2 = paper_layout("2", table, cfg).frame  # an alias puts a measured method beside another paper row
    beside = t2.loc[(t2["method"] == "videoshop") & (t2["kind"] == "measured") & (t2["dataset"] == "magicbrush"), "row"]
    assert sorted("(tokenflow)" in r for r in beside) == [False, True]
    assert "tokenflow" not in set(t2["method"])


def test_stage_report_writes_tables_layouts_plots_and_page(results):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(Path(run.__file__).resolve().parent / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["stage=report", f"results_dir={results}"])
    run.main(cfg)
    table = pd.read_csv(results / "table.csv")
    assert len(table) == 6 and "time_x_videoshop" in table
    assert _row(table, method="bdia")["time_x_videoshop"] == pytest.approx(0.5)
    for name in ("table2", "table3", "table4", "table5"):
        for ext in ("csv", "md", "tex"):
            assert (results / "paper" / f"{name}.{ext}").stat().st_size > 0
    assert "\\multicolumn" in (results / "paper" / "table2.tex").read_text()  # metric groups over their columns
    for tex in [results / "table.tex", *(results / "paper").glob("*.tex")]:  # pdflatex-safe: escaped, ASCII only
        text = tex.read_text()
        assert not re.search(r"(?<!\\)[_&%#]", text.replace(" & ", " ")), f"{tex.name}: unescaped special character"
        assert text.isascii(), tex.name
    assert "svd\\_no\\_src" in (results / "table.tex").read_text()
    md = (results / "table.md").read_text()
    main, diagnostics = md.split("### Diagnostics")
    assert "region_skipped" not in main and "region_skipped" in diagnostics and "CLIP_tgt ↑" in main and "Flow ↓" in main
    png = iio.imread(results / "plots" / "metrics_magicbrush_svd.png")
    assert png.ndim == 3 and png.shape[0] > 100
    page = (results / "index.html").read_text()
    assert "Table 2: MagicBrush-derived videos" in page and "88.80" in page


def test_report_without_results_shows_the_papers_rows(tmp_path):
    write_report(tmp_path)
    md = (tmp_path / "paper" / "table3.md").read_text()
    paper = pd.read_csv(PAPER_CSV, dtype={"table": str})
    for _, r in paper[paper["table"] == "3"].iterrows():
        assert f"{r['fvd']:.2f}" in md


def test_linearity_matrix_reader_and_plot(tmp_path):
    steps = np.linspace(0, 1, 6)
    m = 1 - 0.1 * np.abs(steps[:, None] - steps[None, :])  # a known symmetric cosine matrix
    (tmp_path / "linearity" / "npy").mkdir(parents=True)
    np.save(tmp_path / "linearity" / "npy" / "cosine.npy", m)
    data = read_linearity(tmp_path / "linearity" / "npy")
    off = m[~np.eye(6, dtype=bool)]
    assert data["all_pairs"] == pytest.approx(off.mean())
    assert data["consecutive_mean"] == pytest.approx(np.mean([m[i, i + 1] for i in range(5)]))
    assert data["consecutive_min"] == pytest.approx(min(m[i, i + 1] for i in range(5)))
    (tmp_path / "linearity" / "json").mkdir()
    (tmp_path / "linearity" / "json" / "linearity.json").write_text('{"matrix": [[1, 0.5], [0.5, 1]], "all_pairs": 0.25}')
    data = read_linearity(tmp_path / "linearity" / "json")
    assert data["all_pairs"] == 0.25 and data["consecutive_min"] == pytest.approx(0.5)  # stored stats win, missing ones computed
    (tmp_path / "linearity" / "bad").mkdir()
    np.save(tmp_path / "linearity" / "bad" / "cosine.npy", np.ones(3))
    with pytest.raises(ValueError, match="square"):
        read_linearity(tmp_path / "linearity" / "bad")
    paths = write_plots(tmp_path, pd.DataFrame())  # the bad folder is logged and skipped
    assert sorted(p.name for p in paths) == ["linearity_json.png", "linearity_npy.png"]


def test_linearity_plot_reads_what_the_analysis_writes(tmp_path):
    """The files as videoshop/linearity.py writes them: cosine.npy, and linearity.json with `videos` and `tiny`."""
    folder = tmp_path / "linearity" / "sample_tiny"
    folder.mkdir(parents=True)
    m = np.array([[1.0, 0.99, 0.9], [0.99, 1.0, 0.95], [0.9, 0.95, 1.0]])
    np.save(folder / "cosine.npy", m)
    (folder / "linearity.json").write_text(
        '{"dataset": "sample", "models": "tiny", "tiny": true, "videos": 3, "steps": 3, "all_pairs": 0.9467, '
        '"consecutive_mean": 0.97, "consecutive_min": 0.95, "per_video": [], "paper": {}}')
    title = linearity_title(read_linearity(folder), "Near-linearity")
    assert "3 videos" in title and "(tiny models: not comparable)" in title and "0.9282" in title
    (folder / "linearity.json").write_text('{"tiny": false, "videos": 100}')
    title = linearity_title(read_linearity(folder), "Near-linearity")
    assert "100 videos" in title and "not comparable" not in title and f"{np.mean([0.99, 0.9, 0.95]):.4f}" in title


@pytest.mark.parametrize("table", ["2", "3", "5"])
def test_experiment_sweeps_run_the_papers_methods(table):
    """Each preset sweeps every implemented method of the paper's table on its dataset, real weights, the paper's metrics."""
    from hydra import compose, initialize_config_dir
    from hydra.utils import get_class

    with initialize_config_dir(config_dir=str(Path(run.__file__).resolve().parent / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"experiment=table{table}"], return_hydra_config=True)
    methods = set(str(cfg.hydra.sweeper.params.method).split(","))
    paper = pd.read_csv(PAPER_CSV, dtype={"table": str})
    implemented = {p.stem for p in (Path(run.__file__).resolve().parent / "conf" / "method").glob("*.yaml")}
    assert methods <= implemented  # every swept method has a config
    assert set(paper.loc[paper["table"] == table, "method"]) & implemented <= methods  # every implemented paper method is swept
    if table in ("2", "3"):
        assert {"anyv2v", "tokenflow"} <= methods  # the related systems: extra measured rows
    else:
        assert methods == set(paper.loc[paper["table"] == "5", "method"])  # Videoshop and its four ablations
        assert cfg.dataset.limit == 10  # the paper's 10-video subset (its ids are not published: the first 10 stand in)
        assert Path(cfg.results_dir).name == "table5"  # apart from Table 2's Videoshop run on every video
    assert cfg.dataset.name == {"2": "magicbrush", "3": "hdvila_expert", "5": "magicbrush"}[table]
    assert cfg.models.name == "svd" and not cfg.models.tiny
    computed = {c for node in cfg.metrics.values() for c in get_class(node["_target_"]).columns}
    assert set(PAPER_COLUMNS) <= computed, f"metrics leave out {set(PAPER_COLUMNS) - computed}"
