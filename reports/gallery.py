"""`results_dir/index.html`: the report's tables and plots, then every sample's edits side by side.

Per sample: the source video, the edited first frame and mask, and each method's edited video with its
scores (in the paper's column order, bookkeeping columns apart), all playing in sync. The page is static and
uses relative, percent-encoded URLs only, so it opens from disk whatever the sample ids and method labels hold.
The source, edited frame and mask are re-read through each run's own dataset config and written under
`results_dir/gallery/<dataset>/<sample id>/` (browsers cannot play the lossless mkv sources); dataset names
and sample ids are checked as folder names first, and nothing is written outside `results_dir`. A sample
that cannot be exported or shown is listed with its error: the page is always written.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import numpy as np
from hydra.utils import instantiate
from jinja2 import Environment, FileSystemLoader, select_autoescape

from data.video_io import write_image, write_video_viewable
from harness.files import write_atomic
from harness.names import is_inside, name_problem
from harness.types import ScoreRow
from reports.columns import header, is_diagnostic, metric_order
from reports.paper import display_name
from reports.runs import Problems, ReportRun, read_runs

log = logging.getLogger("report")
TEMPLATES = Path(__file__).resolve().parent / "templates"


@dataclass
class Edit:
    """One method's result on one sample, as shown in the gallery."""

    label: str
    video: str | None  # path relative to results_dir
    status: str
    scores: list[tuple[str, str]]  # (header with arrow, value as shown), metrics then costs
    tiny: bool
    error: str | None = None
    diagnostics: list[tuple[str, str]] = field(default_factory=list)  # bookkeeping columns (name, value)


@dataclass
class SampleView:
    dataset: str
    id: str
    instruction: str = ""
    source: str | None = None
    edited_frame: str | None = None
    mask: str | None = None
    problem: str | None = None
    edits: list[Edit] = field(default_factory=list)


def _score_items(scores: dict[str, float], columns: dict[str, dict]) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """The metrics in the paper's column order with ↑/↓ (×100 where the column says so), and the bookkeeping columns."""

    def shown(name: str) -> str:
        v = scores[name] * (100 if columns.get(name, {}).get("percent") else 1)
        return "NaN" if math.isnan(v) else f"{v:.2f}"

    metrics = [(header(n, columns), shown(n)) for n in metric_order(scores, columns)]
    diagnostics = [(n, shown(n)) for n in sorted(scores) if is_diagnostic(n, columns)]
    return metrics, diagnostics


@dataclass
class _Run:
    """A readable run with its rows by sample id and (lazily) its dataset, read once per report."""

    run: ReportRun
    rows: dict[str, ScoreRow]
    damaged: dict[str, str]  # sample id -> problem of its row.json
    _dataset: object = None
    _problem: str | None = None

    @classmethod
    def of(cls, run: ReportRun) -> "_Run":
        return cls(run, {r.sample_id: r for r in run.rows}, {p.parent.name: why for p, why in run.damaged.items()})

    def dataset(self):
        """The run's own dataset, instantiated from its recorded config; raises what went wrong, once per run."""
        if self._dataset is None and self._problem is None:
            cfg = self.run.info.get("config", {}).get("dataset", {})
            if not isinstance(cfg, dict) or "_target_" not in cfg:
                self._problem = "run.json records no dataset config (config.dataset._target_)"
            else:
                try:
                    self._dataset = instantiate(cfg)
                except Exception as e:  # a moved dataset or a missing class must not stop the report
                    self._problem = _first_line(e)
        if self._problem is not None:
            raise RuntimeError(self._problem)
        return self._dataset


def _first_line(e: BaseException) -> str:
    text = str(e).splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _rel(path: Path, results_dir: Path) -> str:
    return path.relative_to(results_dir).as_posix()


def _url(path: Path, results_dir: Path) -> str:
    """`path` as a relative URL from index.html: each segment percent-encoded (`#`, `?`, `%`, spaces, quotes, non-ASCII)."""
    return "/".join(quote(part, safe="") for part in path.relative_to(results_dir).parts)


def _export_inputs(view: SampleView, runs: list[_Run], results_dir: Path) -> None:
    """Write the sample's source (H.264 mp4), edited first frame and mask into the gallery folder; on failure
    the view says why (a moved dataset, an unreadable video, a failed write), and the page goes on."""
    out = results_dir / "gallery" / view.dataset / view.id
    if not is_inside(out, results_dir):
        view.problem = f"source not exported: {_rel(out, results_dir)} resolves outside {results_dir}"
        log.warning("gallery: sample %s of %s: %s", view.id, view.dataset, view.problem)
        return
    problems = []
    for run in runs:
        try:
            sample = run.dataset().load(view.id)
        except Exception as e:  # one unreadable sample must not stop the report
            problems.append(f"{_rel(run.run.dir.root, results_dir)}: {_first_line(e)}")
            continue
        try:
            write_video_viewable(out / "source.mp4", sample.source, sample.fps)
            write_image(out / "edited.png", sample.edited_frame)
            view.source, view.edited_frame = _url(out / "source.mp4", results_dir), _url(out / "edited.png", results_dir)
            if sample.mask is not None:
                write_image(out / "mask.png", sample.mask.astype(np.uint8) * 255)
                view.mask = _url(out / "mask.png", results_dir)
        except Exception as e:  # a full disk or an unwritable folder: the page still shows the edits
            problems.append(f"cannot write {_rel(out, results_dir)}: {_first_line(e)}")
            break
        view.instruction = sample.instruction or sample.target_prompt or ""
        return
    view.problem = "source unavailable: " + " | ".join(problems)
    log.warning("gallery: sample %s of %s: %s", view.id, view.dataset, view.problem)


def _edit(run: _Run, sid: str, results_dir: Path) -> Edit | None:
    """The run's edit of sample `sid` as shown, None when the run has no row for it."""
    label = f"{display_name(run.run.method)} · {run.run.models}"
    if sid in run.damaged:
        return Edit(label, None, "damaged", [], run.run.tiny, f"row.json skipped: {run.damaged[sid]}")
    row = run.rows.get(sid)
    if row is None:
        return None
    mp4 = run.run.dir.root / "samples" / sid / "edited.mp4"
    columns = run.run.columns
    scores, diagnostics = _score_items(row.scores, columns)
    if not math.isnan(row.costs.seconds):
        scores.append((header("seconds_per_edit", columns), f"{row.costs.seconds:.1f}"))
    return Edit(
        label=label,
        video=_url(mp4, results_dir) if mp4.is_file() else None,
        status=row.status,
        scores=scores,
        tiny=run.run.tiny,
        error=row.error.splitlines()[0] if row.error else None,
        diagnostics=diagnostics,
    )


def _sample_view(dataset: str, sid: str, runs: list[_Run], results_dir: Path) -> SampleView:
    view = SampleView(dataset, sid)
    _export_inputs(view, runs, results_dir)
    view.edits = [e for run in runs if (e := _edit(run, sid, results_dir)) is not None]
    return view


def collect_samples(results_dir: Path, max_samples: int | None = None, runs: list[ReportRun] | None = None,
                    problems: Problems | None = None) -> tuple[list[SampleView], dict[str, int]]:
    """Every (dataset, sample id) with a row (the first `max_samples` ids per dataset), each run's edit of it,
    and per dataset how many samples were left out. `runs` and `problems` are `read_runs`'s (read here if not given);
    sample ids that cannot be gallery folders are skipped and noted in `problems`."""
    results_dir = Path(results_dir)
    if runs is None:
        runs, problems = read_runs(results_dir)
    problems = problems if problems is not None else Problems()
    by_dataset: dict[str, list[_Run]] = {}
    for run in runs:
        by_dataset.setdefault(run.dataset, []).append(_Run.of(run))
    views, left_out = [], {}
    for dataset, dataset_runs in sorted(by_dataset.items()):
        ids = []
        for sid in sorted({sid for r in dataset_runs for sid in [*r.rows, *r.damaged]}):
            why = name_problem(sid)
            if why is None:
                ids.append(sid)
            else:
                problems.note(f"gallery: sample id {sid!r} of {dataset} {why}: not shown")
        if max_samples is not None and len(ids) > max_samples:
            left_out[dataset] = len(ids) - max_samples
            ids = ids[:max_samples]
        for sid in ids:
            try:
                views.append(_sample_view(dataset, sid, dataset_runs, results_dir))
            except Exception as e:  # one sample's view must never stop the page
                log.exception("gallery: sample %s of %s cannot be shown", sid, dataset)
                views.append(SampleView(dataset, sid, problem=f"cannot be shown: {_first_line(e)}"))
    return views, left_out


def write_gallery(results_dir: Path, tables_html: list[tuple[str, str]], plots: list[Path], max_samples: int | None = None,
                  runs: list[ReportRun] | None = None, problems: Problems | None = None) -> Path:
    """Render `index.html`: `tables_html` as (title, html table) pairs, plot images, what could not be read,
    then the samples (at most `max_samples` per dataset, so that the page stays light enough for a browser)."""
    results_dir = Path(results_dir)
    if runs is None:
        runs, problems = read_runs(results_dir)
    problems = problems if problems is not None else Problems()
    samples, left_out = collect_samples(results_dir, max_samples, runs, problems)
    env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(["html", "j2"]))
    page = env.get_template("gallery.html.j2").render(
        tables=tables_html,
        plots=[_url(p, results_dir) for p in plots],
        problems=problems.lines(results_dir),
        samples=samples,
        left_out=left_out,
    )
    path = results_dir / "index.html"
    write_atomic(path, page)
    return path
