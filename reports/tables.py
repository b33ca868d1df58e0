"""Everything under `results_dir` -> one table (one row per dataset × models × method), as CSV, Markdown and LaTeX,
plus the paper's layouts (`paper/`), plots (`plots/`) and the gallery (`index.html`).

Values are means over a run's finished samples that have the column: a column absent from a row is not
applicable to that sample (no mask for the `+` columns, a metric added after the sample was scored), while
a status-"nan" row counts as NaN in every column, so NaN propagates (as in the paper's Table 5).
`n_<metric>` (a diagnostic column) counts the samples behind each mean, and the printed tables show
`63.20 (n=9)` where that is fewer than the run's finished samples. Set-level metrics (FVD) come from the
run's summary. CLIP, TIFA and SSIM columns are ×100 as the paper prints them; each metric says so itself
in the run's recorded column info. Columns run: ids, metrics in the paper's order, costs, then the
bookkeeping columns (sample counts, damaged rows, metric suites, region tracker, skipped frames, FVD's
set size), which the printed tables show apart as diagnostics. Damaged files are skipped and listed
(`reports.runs`).

Beside each metric `m`, table.csv has its bootstrap interval `m_lo`, `m_hi`, and against the reference method
`m_diff`, `m_diff_lo`, `m_diff_hi`, `m_p` (and `n_m_diff`); FVD also has its noise floor `fvd_floor`
(`reports.uncertainty`). The printed tables show `63.20* [60.10, 66.30]`: the mean, `*` when it differs
significantly from the reference method's, and the interval; FVD's noise floor has its own column.
"""
from __future__ import annotations

import html
import logging
import math
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from harness.files import write_atomic
from reports.columns import (COST_COLUMNS, ID_COLUMNS, SCALED_SUFFIXES, UNCERTAINTY_SUFFIXES, count_column, header, is_count,
                             is_diagnostic, metric_order, uncertainty_of)
from reports.paper_tables import Layout, LayoutConfig, all_layouts, latex_symbols, latex_text, time_multiples
from reports.runs import Problems, ReportRun, read_runs
from reports.uncertainty import FVD_COLUMN, UncertaintyConfig, sample_values, uncertainty_records

log = logging.getLogger("report")

#: The mark after a mean that differs significantly from the reference method's.
SIGNIFICANT = "*"
FLOOR_HEADER = "FVD noise floor"


def run_record(run: ReportRun, problems: Problems) -> dict:
    """One run's table row from its rows: counts, per-column means with their sample counts, costs.

    A status-"nan" row counts as NaN in every column of the run; other rows count only where they have the column.
    """
    rows = run.rows
    done = [r for r in rows if r.status in ("ok", "nan")]
    suites = Counter(str(r.suite) for r in rows if r.status == "ok")  # a row with no recorded suite counts as "None"
    rec = {
        "dataset": run.dataset, "method": run.method, "models": run.models, "tiny": run.tiny,
        "n": len(rows), "n_failed": sum(r.status == "failed" for r in rows), "n_nan": sum(r.status == "nan" for r in rows),
        "n_damaged": len(run.damaged), "n_suites": len(suites),
    }
    if len(suites) > 1:
        counts = ", ".join(f"{name}: {n}" for name, n in sorted(suites.items()))
        problems.note(f"run {run.where}: its rows were scored by {len(suites)} different metric suites ({counts} rows); "
                      f"run `{run.rescore_command()}` with that config to rescore")
    for name, by_id in sample_values(run).items():
        rec[name], rec[count_column(name)] = float(np.mean(list(by_id.values()))), len(by_id)
    for name, v in run.summary.get("scores", {}).items():  # set-level metrics live only in the summary
        if name not in rec:
            rec[name] = math.nan if v is None else float(v)
    for field in ("seconds", "peak_mem_mb", "nfe"):
        vals = [getattr(r.costs, field) for r in done if getattr(r.costs, field) is not None]
        rec["seconds_per_edit" if field == "seconds" else field] = float(np.mean(vals)) if vals else math.nan
    return rec


def records(runs: list[ReportRun], problems: Problems, ucfg: UncertaintyConfig | None = None) -> tuple[pd.DataFrame, dict[str, dict]]:
    """One row per run with its intervals and tests (`reports.uncertainty`), and every metric's column info (from
    the runs' summaries)."""
    columns = {}
    for run in runs:
        columns.update(run.columns)
    extra = uncertainty_records(runs, columns, ucfg or UncertaintyConfig(), problems)
    return pd.DataFrame.from_records([run_record(run, problems) | more for run, more in zip(runs, extra)]), columns


def collect(results_dir: str | Path, ucfg: UncertaintyConfig | None = None) -> tuple[pd.DataFrame, dict[str, dict]]:
    """One row per readable run under `results_dir`, recomputed from the per-sample rows; plus every metric's column info."""
    return records(*read_runs(results_dir), ucfg)


def build_table(results_dir: str | Path, ucfg: UncertaintyConfig | None = None) -> pd.DataFrame:
    """The table of every run: ids, metrics in the paper's order each followed by its intervals and tests, costs,
    then bookkeeping (diagnostic) columns."""
    return shape_table(*collect(results_dir, ucfg))


def shape_table(df: pd.DataFrame, columns: dict[str, dict]) -> pd.DataFrame:
    """×100 where a column says so (its interval and difference too), and the columns in the order ids, metrics
    (each followed by its intervals and tests), costs, diagnostics."""
    if df.empty:
        return df
    df = df.copy()
    for name, col in columns.items():
        for c in [name, *(name + s for s in SCALED_SUFFIXES)]:
            if col.get("percent") and c in df:
                df[c] = df[c] * 100
    rest = [c for c in df if c not in ID_COLUMNS and not _counts_bookkeeping(c, columns)]
    for c in rest:
        if is_count(c):
            df[c] = df[c].astype("Int64")  # whole numbers in table.csv; empty where the run lacks the column
    costs = [c for c in COST_COLUMNS if c in df]
    diagnostics = sorted(c for c in rest if is_diagnostic(c, columns))
    metrics = [c for m in metric_order(rest, columns) for c in [m, *(m + s for s in UNCERTAINTY_SUFFIXES)] if c in df]
    df = df[ID_COLUMNS + metrics + costs + diagnostics]
    return df.sort_values(["dataset", "models", "method"]).reset_index(drop=True)


def _counts_bookkeeping(name: str, columns: dict[str, dict]) -> bool:
    """`n_<column>` of a bookkeeping column: not worth a column of its own."""
    return is_count(name) and is_diagnostic(name[2:], columns)


def shown_value(value: float, n, finished: int, lo: float = math.nan, hi: float = math.nan, mark: str = "") -> str:
    """A mean as printed: 2 decimals, `NaN`, `—` when no sample has the column; then `mark` (significance),
    `(n=…)` when fewer samples than the run's finished ones have it, and the interval `[lo, hi]` when it has one."""
    if pd.isna(n) or n == 0:
        text = "—" if pd.isna(value) else f"{value:.2f}"
    else:
        text = "NaN" if math.isnan(value) else f"{value:.2f}"
        text += mark + ("" if n >= finished else f" (n={int(n)})")
    return text + (f" [{lo:.2f}, {hi:.2f}]" if np.isfinite([lo, hi]).all() else "")


def significance_marks(df: pd.DataFrame, name: str, alpha: float) -> list[str]:
    """SIGNIFICANT where the run's difference to the reference method in column `name` has p < alpha, else ""."""
    p = df[f"{name}_p"] if f"{name}_p" in df else pd.Series(math.nan, index=df.index)
    return [SIGNIFICANT if v < alpha else "" for v in p.fillna(1.0)]


def _code_spans(text: str) -> str:
    """Markdown `code` spans of an escaped text as HTML <code>."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text))


def legend(ucfg: UncertaintyConfig) -> str:
    """What the printed intervals, marks and noise floor mean."""
    return (f"Brackets: {ucfg.confidence:.0%} percentile-bootstrap interval over the samples behind the mean "
            f"({ucfg.resamples} resamples; FVD: videos resampled, {ucfg.fvd_resamples} resamples). "
            f"`{SIGNIFICANT}`: differs from {ucfg.reference_method} of the same dataset and models on the samples both "
            f"finished (paired permutation test, p < {ucfg.alpha:g}; `<metric>_diff`, `_p` in table.csv). "
            f"FVD noise floor: FVD between two random halves of the run's N source videos (N/2 each, no edit), "
            f"mean of {ucfg.fvd_floor_repeats} splits.")


def shown_tables(df: pd.DataFrame, columns: dict[str, dict], ucfg: UncertaintyConfig | None = None) -> list[tuple[str, pd.DataFrame]]:
    """The table as printed, in two parts: metrics and costs (headers with ↑/↓), and the bookkeeping columns.
    A metric prints as `63.20* (n=9) [60.10, 66.30]` (see `shown_value`); FVD's noise floor has its own column,
    the other interval and test columns stay in table.csv."""
    ucfg = ucfg or UncertaintyConfig()
    shown = df.copy()
    shown["tiny"] = shown["tiny"].map({True: "tiny (not comparable)", False: ""})
    finished = df["n"] - df["n_failed"]
    for c in metric_order(df.columns, columns):
        n = df[count_column(c)] if count_column(c) in df else finished.where(df[c].notna())  # set-level: all finished
        lo, hi = (df.get(f"{c}_{end}", pd.Series(math.nan, index=df.index)) for end in ("lo", "hi"))
        shown[c] = [shown_value(*args) for args in zip(df[c], n, finished, lo, hi, significance_marks(df, c, ucfg.alpha))]
    floor = f"{FVD_COLUMN}_floor"
    if floor in df:
        shown[floor] = [("—" if pd.isna(v) else f"{v:.2f}") for v in df[floor]]
    for c in filter(is_count, df.columns):
        shown[c] = [("—" if pd.isna(n) else int(n)) for n in df[c]]  # "—": the run has no such column
    hidden = {c for c in df if c != floor and (uncertainty_of(c, df.columns) or (is_count(c) and uncertainty_of(c[2:], df.columns)))}
    diagnostics = [c for c in df if is_diagnostic(c, columns) and c not in hidden]
    main = shown[[c for c in shown if c not in diagnostics and c not in hidden]]
    headers = {floor: FLOOR_HEADER}
    parts = [("All results", main.rename(columns=lambda c: c if c in ID_COLUMNS else headers.get(c) or header(c, columns)))]
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
    runs, problems = read_runs(results_dir)
    raw, columns = records(runs, problems, cfg.uncertainty)
    df = shape_table(raw, columns)
    tables_html = []
    if df.empty:
        log.warning("no runs under %s: the paper's tables show the paper's rows only", results_dir)
    else:
        time_col = f"time_x_{cfg.time_reference}"
        df.insert(df.columns.get_loc("seconds_per_edit") + 1, time_col, time_multiples(df, cfg.time_reference))
        write_atomic(results_dir / "table.csv", df.to_csv(index=False, float_format="%.4f"))
        parts = shown_tables(df, columns, cfg.uncertainty)
        notes = {parts[0][0]: legend(cfg.uncertainty)}  # under the results table
        md = "\n\n".join(f"### {title}\n\n{t.to_markdown(index=False, floatfmt='.2f')}" + (f"\n\n{notes[title]}" if title in notes else "")
                         for title, t in parts)
        lines = problems.lines(results_dir)
        if lines:
            md += "\n\n### Problems reading the results\n\n" + "\n".join(f"- {line}" for line in lines)
        write_atomic(results_dir / "table.md", md + "\n")
        tex = "\n".join(latex_symbols(t.to_latex(index=False, float_format="%.2f", na_rep="NaN", escape=True,
                                                  caption=latex_text(f"{title}. {notes[title]}" if title in notes else title)))
                        for title, t in parts)
        write_atomic(results_dir / "table.tex", tex)
        print(md)
        tables_html += [(title, t.to_html(index=False, classes="results", float_format="%.2f", na_rep="NaN", border=0)
                         + (f'<p class="legend">{_code_spans(notes[title])}</p>' if title in notes else ""))
                        for title, t in parts]
    layouts = all_layouts(df, cfg)
    write_layouts(results_dir / "paper", layouts)
    tables_html += [(lay.title, lay.html()) for lay in layouts]
    plots = write_plots(results_dir, df, columns)
    max_samples = None if report_cfg is None else report_cfg.get("gallery_max_samples")
    page = write_gallery(results_dir, tables_html, plots, max_samples, runs, problems)
    log.info("report: %s, %s, %d plots, %s", results_dir / "table.md", results_dir / "paper", len(plots), page)
    return df
