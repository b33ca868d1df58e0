"""Crowdsourcing: the study as a static bundle for a platform, and the platform's results CSV imported back.

    python -m study.crowd export results/_study/<name>            (also written by `stage=study`)
    python -m study.crowd import results/_study/<name> results.csv

The bundle (`<study>/crowd/`): `hit.html`, the pair page with `${pair_id}`, `${instruction}`, `${source}`,
`${edited_frame}`, `${left}` and `${right}` placeholders (Amazon Mechanical Turk's template syntax, which other
platforms accept too), posting the form fields `editing` and `video` (and MTurk's `assignmentId`, taken from the
page's query string) to MTurk's external-submit URL; `tasks.csv`, one row per pair with those
columns (media URLs prefixed with `study.crowd.base_url`, where the study folder's `media/` will be hosted); and
`preview/<pair id>.html`, each task rendered with relative links, to check the bundle from disk. Method names
appear nowhere in the bundle.

Import reads the platform's results CSV (column names in `study.crowd.columns`, MTurk's by default) and
records it in one transaction: a file with missing columns, an unknown pair, an invalid answer, or a duplicate
(within the file or already recorded) is refused whole, with the row numbers, and the database is left as it was.
"""
from __future__ import annotations

import argparse
import csv
import io
import logging
import math
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, select_autoescape

from harness.files import write_atomic
from study.build import Study
from study.store import Store
from study.types import MEDIA, QUESTIONS, Answer, StudyError

log = logging.getLogger("study")
TEMPLATES = Path(__file__).resolve().parent / "templates"
TASK_COLUMNS = ["pair_id", "instruction", "source", "edited_frame", "left", "right"]
#: MTurk's external-submit form target; the platform rewrites it inside its own HIT frame.
SUBMIT_URL = "https://www.mturk.com/mturk/externalSubmit"


class _Placeholders:
    """A pair whose every field renders as `${field}`, for the platform to fill in from tasks.csv."""

    id = "${pair_id}"
    instruction = "${instruction}"


def export_bundle(study: Study) -> Path:
    """Write `<study>/crowd/` (hit.html, tasks.csv, preview pages); returns the folder."""
    out = study.root / "crowd"
    s = study.settings
    env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(["html", "j2"]))
    page = env.get_template("pair.html.j2")
    choices = ["left", "right", *(["tie"] if s.tie_option else [])]
    common = {"rater": "", "questions": s.questions, "choices": choices, "position": "", "total": len(study.pairs)}
    placeholders = {k: "${%s}" % k for k in MEDIA}
    write_atomic(out / "hit.html", page.render(pair=_Placeholders, urls=placeholders, action=SUBMIT_URL, crowd=True, **common))
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(TASK_COLUMNS)
    for p in study.pairs:
        urls = p.urls(s.crowd_base_url)
        w.writerow([p.id, p.instruction, *(urls[k] for k in MEDIA)])
        write_atomic(out / "preview" / f"{p.id}.html", page.render(pair=p, urls=p.urls("../../"), action="#", **common))
    write_atomic(out / "tasks.csv", buf.getvalue())
    log.info("crowd bundle: %s (%d tasks; host %s/media at study.crowd.base_url)", out, len(study.pairs), study.root)
    return out


def read_results(study: Study, path: str | Path) -> list[Answer]:
    """The answers of a platform's results CSV, every row checked; `StudyError` naming the file and rows otherwise."""
    path = Path(path)
    cols = study.settings.crowd_columns
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise StudyError(f"{path}: cannot read the results CSV ({type(e).__name__}: {e})") from e
    reader = csv.DictReader(io.StringIO(text))
    header = reader.fieldnames or []
    needed = [cols[k] for k in ("rater", "pair", *QUESTIONS)]
    missing = [c for c in needed if c not in header]
    if missing:
        raise StudyError(f"{path}: missing column(s) {', '.join(missing)} (has: {', '.join(header) or 'no header'}); "
                         "set study.crowd.columns to the platform's names")
    answers, problems = [], []
    for line, row in enumerate(reader, start=2):
        if None in row or any(row.get(c) is None for c in needed):
            problems.append(f"row {line}: wrong number of fields")
            continue
        pair = study.pair(row[cols["pair"]].strip())
        if pair is None:
            problems.append(f"row {line}: unknown pair {row[cols['pair']]!r}")
            continue
        seconds = _seconds(row.get(cols.get("seconds", ""), ""))
        for q in QUESTIONS:
            choice = row[cols[q]].strip().lower()
            allowed = ("left", "right", "tie") if study.settings.tie_option else ("left", "right")
            if choice not in allowed:
                problems.append(f"row {line}: {cols[q]} is {row[cols[q]]!r}, not one of {', '.join(allowed)}")
                continue
            answers.append(Answer(row[cols["rater"]].strip(), pair.id, q, choice, seconds, "crowd"))
    if problems:
        raise StudyError(f"{path}: {len(problems)} bad row(s), nothing imported: " + "; ".join(problems[:10]))
    return answers


def _seconds(v: str) -> float | None:
    try:
        x = float(v)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) and x >= 0 else None


def import_results(study: Study, path: str | Path) -> int:
    """Record a platform's results CSV in one transaction (all rows or none); returns how many answers were added."""
    answers = read_results(study, path)
    with Store(study.root, [p.id for p in study.pairs], study.settings.tie_option) as store:
        try:
            n = store.add(answers)
        except StudyError as e:
            raise StudyError(f"{path}: nothing imported: {e}") from e
    log.info("imported %d answers from %s into %s", n, path, study.root)
    return n


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m study.crowd", description="Export a crowdsourcing bundle or import results.")
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("export").add_argument("study")
    imp = sub.add_parser("import")
    imp.add_argument("study")
    imp.add_argument("csv")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    study = Study.load(a.study)
    try:
        if a.cmd == "export":
            print(export_bundle(study))
        else:
            print(f"imported {import_results(study, a.csv)} answers")
    except StudyError as e:
        raise SystemExit(f"error: {e}")


if __name__ == "__main__":
    main()
