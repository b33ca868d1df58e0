"""The runs under `results_dir` as the report reads them: run.json, summary.json and rows, each checked.

A results folder may hold damaged files (a truncated row, a hand-edited run.json, a summary cut short):
one bad file never stops the report. A run whose run.json is missing, damaged or names an unsafe
dataset, models or method is skipped; a damaged or missing summary.json is ignored (the run is reported
from its rows, without set-level metrics); a damaged row is left out of the means. Each of these is
logged with the file's path and kept in `Problems`, which table.md and index.html show.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.files import read_json
from harness.names import name_problem
from harness.results import RunDir
from harness.types import ScoreRow

log = logging.getLogger("report")


@dataclass
class Problems:
    """What the report could not read or show, for the reader: file path -> problem, and notes."""

    files: dict[Path, str] = field(default_factory=dict)  # skipped or ignored run.json / summary.json / row.json
    notes: list[str] = field(default_factory=list)  # runs scored by mixed suites, unsafe sample ids, ...

    def file(self, path: Path, problem: str) -> None:
        self.files[Path(path)] = problem
        log.warning("report: %s: %s", path, problem)

    def note(self, text: str) -> None:
        self.notes.append(text)
        log.warning("report: %s", text)

    def lines(self, results_dir: Path) -> list[str]:
        """One line per problem, paths relative to `results_dir` where they lie in it."""
        def rel(p: Path) -> str:
            return p.relative_to(results_dir).as_posix() if p.is_relative_to(results_dir) else str(p)

        return [f"{rel(p)}: {why}" for p, why in sorted(self.files.items())] + self.notes


@dataclass
class ReportRun:
    """One readable run: its checked run.json, its summary ({} without a readable one), its rows."""

    dir: RunDir
    info: dict[str, Any]
    summary: dict[str, Any]
    rows: list[ScoreRow]
    damaged: dict[Path, str]  # row.json path -> problem

    @property
    def dataset(self) -> str:
        return self.info["dataset"]

    @property
    def models(self) -> str:
        return self.info["models"]

    @property
    def method(self) -> str:
        return self.info["method"]

    @property
    def where(self) -> str:
        return f"{self.dataset}/{self.models}/{self.method}"

    @property
    def tiny(self) -> bool:
        return bool(self.summary.get("tiny", self.info.get("tiny_models", False)))

    @property
    def columns(self) -> dict[str, dict]:
        return self.summary.get("columns", {})

    def rescore_command(self) -> str:
        """`python run.py stage=score ...` with the run's recorded overrides (or its dataset, models and method)."""
        overrides = self.info.get("overrides")
        if not (isinstance(overrides, list) and all(isinstance(o, str) for o in overrides)):
            overrides = [f"dataset={self.dataset}", f"models={self.models}", f"method={self.info.get('method_name', self.method)}"]
        return " ".join(["python run.py stage=score", *(o for o in overrides if not o.startswith("stage="))])


def info_problem(info: Any) -> str | None:
    """Why a run.json's content cannot identify a run, or None when it can."""
    if not isinstance(info, dict):
        return f"is a JSON {type(info).__name__}, not an object"
    for key in ("dataset", "models", "method"):
        problem = name_problem(info.get(key))
        if problem is not None:
            return f"its {key} {info.get(key)!r} {problem}"
    if not isinstance(info.get("config", {}), dict):
        return "its config is not an object"
    return None


def summary_problem(summary: Any) -> str | None:
    """Why a summary.json's content cannot be used, or None when it can."""
    if not isinstance(summary, dict):
        return f"is a JSON {type(summary).__name__}, not an object"
    columns, scores = summary.get("columns", {}), summary.get("scores", {})
    if not isinstance(columns, dict) or not all(isinstance(c, dict) for c in columns.values()):
        return "its columns are not an object of objects"
    if not isinstance(scores, dict) or not all(v is None or (isinstance(v, (int, float)) and not isinstance(v, bool))
                                               for v in scores.values()):
        return "its scores are not an object of numbers"
    return None


def _read(path: Path, check) -> tuple[Any, str | None]:
    try:
        data = read_json(path)
    except (OSError, UnicodeDecodeError, ValueError) as e:  # JSONDecodeError is a ValueError
        return None, f"{type(e).__name__}: {e}"
    return data, check(data)


def run_folders(results_dir: Path) -> list[Path]:
    """Every `<dataset>/<models>/<method>/` folder holding a run.json or samples (a run whose run.json is lost)."""
    found = {p.parent for pattern in ("*/*/*/run.json", "*/*/*/samples") for p in results_dir.glob(pattern)}
    return sorted(found)


def read_runs(results_dir: str | Path) -> tuple[list[ReportRun], Problems]:
    """Every readable run under `results_dir`, and what could not be read."""
    results_dir = Path(results_dir)
    runs, problems = [], Problems()
    for root in run_folders(results_dir):
        if not (root / "run.json").is_file():
            problems.file(root / "run.json", "missing: the run is skipped")
            continue
        info, why = _read(root / "run.json", info_problem)
        if why is not None:
            problems.file(root / "run.json", f"damaged ({why}): the run is skipped")
            continue
        summary, why = ({}, "missing") if not (root / "summary.json").is_file() else _read(root / "summary.json", summary_problem)
        if why is not None:
            what = why if why == "missing" else f"damaged ({why})"
            problems.file(root / "summary.json", f"{what}: ignored, the run is reported from its rows (no set-level metrics)")
            summary = {}
        scan = RunDir(root).scan()
        problems.files.update({path: f"damaged row skipped ({why})" for path, why in scan.damaged.items()})  # scan logged each
        if isinstance(summary.get("n"), int) and summary["n"] != len(scan.rows):  # shards still running, or one cancelled
            problems.file(root / "summary.json", f"covers {summary.get('n')} of the run's {len(scan.rows)} rows: its "
                          "set-level metrics (FVD) are stale; `python run.py stage=summarize` recomputes it")
        runs.append(ReportRun(RunDir(root), info, summary, scan.rows, scan.damaged))
    return runs, problems
