"""The human preference study's tables (Table 4's first two columns), written by `stage=report` for every study
under `results_dir/_study/` that has answers (`study/`, docs/study.md).

    results_dir/table4_human.csv | .md        every study: % preferring the reference per opponent and question,
                                              Wilson interval, n, the paper's %
    results_dir/_study/<name>/report.md       that study in full: preference, catch trials and exclusions,
                                              agreement, Bradley–Terry scores, metric correlations (+ one CSV each)

A study folder that cannot be read is logged and skipped; the other report outputs do not depend on it.
"""
from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from harness.files import write_atomic

log = logging.getLogger("report")


def _fmt_pref(row) -> str:
    if pd.isna(row["pref_pct"]):
        return "—"
    ci = "" if pd.isna(row["lo_pct"]) else f" [{row['lo_pct']:.1f}, {row['hi_pct']:.1f}]"
    return f"{row['pref_pct']:.1f}{ci} (n={int(row['n'])})"


def preference_markdown(pref: pd.DataFrame, title: str, confidence: float) -> str:
    """Table 4's layout: one row per opponent, measured % [Wilson interval] (n) beside the paper's % per question."""
    rows = []
    for opponent, g in pref.groupby("opponent", sort=False):
        r = {"opponent": opponent}
        for _, x in g.iterrows():
            label = {"editing": "Editing quality", "video": "Video quality"}[x["question"]]
            r[f"{label} % (measured)"] = _fmt_pref(x)
            r[f"{label} % (paper)"] = "—" if pd.isna(x["paper_pct"]) else f"{x['paper_pct']:.2f}"
        rows.append(r)
    note = (f"Share of judgments preferring the reference (ties count half), {confidence:.0%} Wilson interval, n "
            "judgments, raters failing the catch trials excluded. The average row is the mean of the opponents' "
            "percentages (as the paper's) with their total n.")
    return f"### {title}\n\n" + pd.DataFrame(rows).to_markdown(index=False) + f"\n\n{note}\n"


def write_human_report(results_dir: str | Path) -> list[Path]:
    """Write the study tables for every study with answers; returns the study folders reported."""
    from study.analysis import analyze
    from study.build import Study
    from study.store import DB_FILE, Store
    from reports.paper import COMPARABLE_DATASET
    from study.types import StudyError

    results_dir = Path(results_dir)
    parts, tables, done = [], [], []
    for path in sorted((results_dir / "_study").glob(f"*/{DB_FILE}")):
        try:
            study = Study.load(path.parent)
            with Store(study.root) as store:
                answers = store.answers()
        except (OSError, StudyError, ValueError) as e:
            log.warning("report: study %s skipped: %s", path.parent, e)
            continue
        if not answers:
            continue
        a = analyze(study, answers)
        s = study.settings
        why = [w for w, bad in (("tiny models", study.tiny), (f"dataset {s.dataset}", s.dataset != COMPARABLE_DATASET["4"])) if bad]
        title = f"Human preference for {s.reference} ({s.name}, {s.dataset}/{s.models})" + (
            f" — not comparable with the paper ({', '.join(why)})" if why else "")
        md = preference_markdown(a.preference, title, s.confidence)
        parts.append(md)
        tables.append(a.preference.assign(study=s.name, reference=s.reference, dataset=s.dataset, models=s.models,
                                          tiny=study.tiny, comparable=not why))
        full = [md, f"{a.n_answers} answers from {a.catch['rater'].nunique()} raters.\n"]
        for name, df, text in [
            ("catch", a.catch, f"Catch trials per rater (excluded: failure rate above {s.exclude_catch_failure_above:g})"),
            ("agreement", a.agreement, "Agreement on pairs judged by several kept raters"),
            ("bradley_terry", a.bradley_terry, "Bradley–Terry log-strengths (mean 0) per question"),
            ("metric_correlations", a.metrics, "Automatic metrics against human preference (Spearman's ρ over pairs)"),
        ]:
            write_atomic(study.root / f"{name}.csv", df.to_csv(index=False, float_format="%.4f"))
            full.append(f"### {text}\n\n" + (df.to_markdown(index=False, floatfmt=".3f") if not df.empty else "(none)") + "\n")
        write_atomic(study.root / "preference.csv", a.preference.to_csv(index=False, float_format="%.4f"))
        write_atomic(study.root / "report.md", "\n".join(full))
        done.append(study.root)
    if tables:
        write_atomic(results_dir / "table4_human.csv", pd.concat(tables).to_csv(index=False, float_format="%.4f"))
        write_atomic(results_dir / "table4_human.md", "\n".join(parts))
        print("\n".join(parts))
        log.info("report: human preference of %d stud%s -> %s", len(done), "y" if len(done) == 1 else "ies",
                 results_dir / "table4_human.md")
    return done
