"""`results_dir/index.html`: the report's tables and plots, then every sample's edits side by side.

Per sample: the source video, the edited first frame and mask, and each method's edited video with its
scores (in the paper's column order, bookkeeping columns apart), all playing in sync. The page is static and uses relative paths only, so it opens from disk.
The source, edited frame and mask are re-read through each run's own dataset config and written under
`results_dir/gallery/<dataset>/<sample id>/` (browsers cannot play the lossless mkv sources).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from hydra.utils import instantiate
from jinja2 import Environment, FileSystemLoader, select_autoescape

from data.video_io import write_image, write_video_viewable
from harness.files import read_json, write_atomic
from harness.results import RunDir, find_runs
from reports.columns import header, is_diagnostic, metric_order
from reports.paper import display_name

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
    """A run folder with its run.json, summary and (lazily) its dataset, read once per report."""

    dir: RunDir
    info: dict
    summary: dict
    _dataset: object = None
    _problem: str | None = None

    @classmethod
    def read(cls, rd: RunDir) -> "_Run":
        summary = read_json(rd.root / "summary.json") if (rd.root / "summary.json").exists() else {}
        return cls(rd, rd.info(), summary)

    def dataset(self):
        """The run's own dataset, instantiated from its recorded config; raises what went wrong, once per run."""
        if self._dataset is None and self._problem is None:
            cfg = self.info.get("config", {}).get("dataset", {})
            if "_target_" not in cfg:
                self._problem = "run.json records no dataset config (config.dataset._target_)"
            else:
                try:
                    self._dataset = instantiate(cfg)
                except Exception as e:  # a moved dataset or a missing class must not stop the report
                    self._problem = f"{type(e).__name__}: {str(e).splitlines()[0]}"
        if self._problem is not None:
            raise RuntimeError(self._problem)
        return self._dataset


def _rel(path: Path, results_dir: Path) -> str:
    return path.relative_to(results_dir).as_posix()


def _export_inputs(view: SampleView, runs: list[_Run], results_dir: Path) -> None:
    """Write the sample's source (H.264 mp4), edited first frame and mask into the gallery folder."""
    out = results_dir / "gallery" / view.dataset / view.id
    problems = []
    for run in runs:
        try:
            sample = run.dataset().load(view.id)
        except Exception as e:  # one unreadable sample must not stop the report
            problems.append(f"{_rel(run.dir.root, results_dir)}: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
            continue
        write_video_viewable(out / "source.mp4", sample.source, sample.fps)
        write_image(out / "edited.png", sample.edited_frame)
        view.source, view.edited_frame = _rel(out / "source.mp4", results_dir), _rel(out / "edited.png", results_dir)
        if sample.mask is not None:
            write_image(out / "mask.png", sample.mask.astype(np.uint8) * 255)
            view.mask = _rel(out / "mask.png", results_dir)
        view.instruction = sample.instruction or sample.target_prompt or ""
        return
    view.problem = "source unavailable: " + " | ".join(problems)
    log.warning("gallery: sample %s of %s: %s", view.id, view.dataset, view.problem)


def collect_samples(results_dir: Path, max_samples: int | None = None) -> tuple[list[SampleView], dict[str, int]]:
    """Every (dataset, sample id) with a row (the first `max_samples` ids per dataset), each run's edit of it,
    and per dataset how many samples were left out."""
    by_dataset: dict[str, list[_Run]] = {}
    for rd in find_runs(results_dir):
        run = _Run.read(rd)
        by_dataset.setdefault(run.info["dataset"], []).append(run)
    views, left_out = [], {}
    for dataset, runs in sorted(by_dataset.items()):
        ids = sorted({p.parent.name for r in runs for p in (r.dir.root / "samples").glob("*/row.json")})
        if max_samples is not None and len(ids) > max_samples:
            left_out[dataset] = len(ids) - max_samples
            ids = ids[:max_samples]
        for sid in ids:
            view = SampleView(dataset, sid)
            _export_inputs(view, runs, results_dir)
            for run in runs:
                row = run.dir.row(sid)
                if row is None:
                    continue
                mp4 = run.dir.sample_dir(sid) / "edited.mp4"
                columns = run.summary.get("columns", {})
                scores, diagnostics = _score_items(row.scores, columns)
                if not math.isnan(row.costs.seconds):
                    scores.append((header("seconds_per_edit", columns), f"{row.costs.seconds:.1f}"))
                view.edits.append(Edit(
                    label=f"{display_name(run.info['method'])} · {run.info['models']}",
                    video=_rel(mp4, results_dir) if mp4.exists() else None,
                    status=row.status,
                    scores=scores,
                    tiny=bool(run.summary.get("tiny", run.info.get("tiny_models", False))),
                    error=(row.error or "").splitlines()[0] if row.error else None,
                    diagnostics=diagnostics,
                ))
            views.append(view)
    return views, left_out


def write_gallery(results_dir: Path, tables_html: list[tuple[str, str]], plots: list[Path], max_samples: int | None = None) -> Path:
    """Render `index.html`: `tables_html` as (title, html table) pairs, plot images, then the samples
    (at most `max_samples` per dataset, so that the page stays light enough for a browser)."""
    samples, left_out = collect_samples(results_dir, max_samples)
    env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(["html", "j2"]))
    page = env.get_template("gallery.html.j2").render(
        tables=tables_html,
        plots=[_rel(p, results_dir) for p in plots],
        samples=samples,
        left_out=left_out,
    )
    path = results_dir / "index.html"
    write_atomic(path, page)
    return path
