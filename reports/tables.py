"""Everything under `results_dir` -> one table (one row per dataset × models × method), as CSV, Markdown and LaTeX,
plus the paper's layouts (`paper/`), plots (`plots/`) and the gallery (`index.html`).

Values are means over a run's finished samples (NaN propagates, as in the paper's Table 5), and
set-level metrics (FVD) come from the run's summary. CLIP, TIFA and SSIM columns are ×100 as the paper
prints them; each metric says so itself in the run's recorded column info. Columns run: ids, metrics
in the paper's order, costs, then the bookkeeping columns (region tracker, skipped frames, FVD's set
size), which the printed tables show apart as diagnostics.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd

from harness.files import read_json, write_atomic
from harness.results import find_runs
from reports.columns import COST_COLUMNS, ID_COLUMNS, header, is_diagnostic, metric_order
from reports.paper_tables import Layout, LayoutConfig, all_layouts, latex_symbols, time_multiples

log = logging.getLogger("report")

def collect(results_dir: str | Path) -> tuple[pd.DataFrame, dict[str, dict]]:
    """One row per run, recomputed from the per-sample rows; plus every metric's column info."""
    records, columns = [], {}
    for run in find_runs(results_dir):
        info = run.info()
        rows = run.rows()
        summary = read_json(run.root / "summary.json") if (run.root / "summary.json").exists() else {}
        columns.update(summary.get("columns", {}))
        done = [r for r in rows if r.status in ("ok", "nan")]
        rec = {
            "dataset": info["dataset"], "method": info["method"], "models": info["models"],
            "tiny": bool(summary.get("tiny", info.get("tiny_models", False))),
            "n": len(rows), "n_failed": sum(r.status == "failed" for r in rows), "n_nan": sum(r.status == "nan" for r in rows),
        }
        for name in sorted({k for r in done for k in r.scores}):
            rec[name] = float(np.mean([r.scores.get(name, math.nan) for r in done]))
        for name, v in summary.get("scores", {}).items():  # set-level metrics live only in the summary
            if name not in rec:
                rec[name] = math.nan if v is None else float(v)
        for field in ("seconds", "peak_mem_mb", "nfe"):
            vals = [getattr(r.costs, field) for r in done if getattr(r.costs, field) is not None]
            rec["seconds_per_edit" if field == "seconds" else field] = float(np.mean(vals)) if vals else math.nan
        records.append(rec)
    return pd.DataFrame.from_records(records), columns


def build_table(results_dir: str | Path) -> pd.DataFrame:
    """The table of every run: ids, metrics in the paper's order, costs, then bookkeeping (diagnostic) columns."""
    return shape_table(*collect(results_dir))


def shape_table(df: pd.DataFrame, columns: dict[str, dict]) -> pd.DataFrame:
    """×100 where a column says so, and the columns in the order ids, metrics, costs, diagnostics."""
    if df.empty:
        return df
    df = df.copy()
    for name, col in columns.items():
        if col.get("percent") and name in df:
            df[name] = df[name] * 100
    rest = [c for c in df if c not in ID_COLUMNS]
    costs = [c for c in COST_COLUMNS if c in df]
    diagnostics = sorted(c for c in rest if is_diagnostic(c, columns))
    df = df[ID_COLUMNS + metric_order(rest, columns) + costs + diagnostics]
    return df.sort_values(["dataset", "models", "method"]).reset_index(drop=True)


def shown_tables(df: pd.DataFrame, columns: dict[str, dict]) -> list[tuple[str, pd.DataFrame]]:
    """The table as printed, in two parts: metrics and costs (headers with ↑/↓), and the bookkeeping columns."""
    shown = df.copy()
    shown["tiny"] = shown["tiny"].map({True: "tiny (not comparable)", False: ""})
    diagnostics = [c for c in df if is_diagnostic(c, columns)]
    main = shown[[c for c in shown if c not in diagnostics]]
    parts = [("All results", main.rename(columns=lambda c: c if c in ID_COLUMNS else header(c, columns)))]
    if diagnostics:
        parts.append(("Diagnostics (bookkeeping, not metrics)", shown[["dataset", "method", "models", *diagnostics]]))
    return parts


def write_layouts(out_dir: Path, layouts: list[Layout]) -> None:
    """Each paper layout as `<name>.csv` (numbers), `.md` and `.tex` (as printed), and all of them in `paper_tables.md`."""
    for lay in layouts:
        write_atomic(out_dir / f"{lay.key}.csv", lay.frame.to_csv(index=False, float_format="%.4f"))
        write_atomic(out_dir / f"{lay.key}.md", lay.markdown())
        write_atomic(out_dir / f"{lay.key}.tex", lay.latex())
    write_atomic(out_dir / "paper_tables.md", "\n".join(lay.markdown() for lay in layouts))


def write_report(results_dir: str | Path, report_cfg=None) -> pd.DataFrame:
    """table.csv/md/tex, the paper's layouts, plots and index.html under `results_dir`; returns the table.

    `report_cfg` is the `report` config node (which measured datasets sit beside which paper table).
    The paper's layouts are written even with no results, showing the paper's rows alone.
    """
    from reports.gallery import write_gallery
    from reports.plots import write_plots

    results_dir = Path(results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    cfg = LayoutConfig.from_config(report_cfg)
    raw, columns = collect(results_dir)
    df = shape_table(raw, columns)
    tables_html = []
    if df.empty:
        log.warning("no runs under %s: the paper's tables show the paper's rows only", results_dir)
    else:
        time_col = f"time_x_{cfg.time_reference}"
        df.insert(df.columns.get_loc("seconds_per_edit") + 1, time_col, time_multiples(df, cfg.time_reference))
        write_atomic(results_dir / "table.csv", df.to_csv(index=False, float_format="%.4f"))
        parts = shown_tables(df, columns)
        md = "\n\n".join(f"### {title}\n\n" + t.to_markdown(index=False, floatfmt=".2f") for title, t in parts)
        write_atomic(results_dir / "table.md", md + "\n")
        tex = "\n".join(latex_symbols(t.to_latex(index=False, float_format="%.2f", na_rep="NaN", escape=True, caption=title))
                        for title, t in parts)
        write_atomic(results_dir / "table.tex", tex)
        print(md)
        tables_html += [(title, t.to_html(index=False, classes="results", float_format="%.2f", na_rep="NaN", border=0))
                        for title, t in parts]
    layouts = all_layouts(df, cfg)
    write_layouts(results_dir / "paper", layouts)
    tables_html += [(lay.title, lay.html()) for lay in layouts]
    plots = write_plots(results_dir, df, columns)
    max_samples = None if report_cfg is None else report_cfg.get("gallery_max_samples")
    page = write_gallery(results_dir, tables_html, plots, max_samples)
    log.info("report: %s, %s, %d plots, %s", results_dir / "table.md", results_dir / "paper", len(plots), page)
    return df
