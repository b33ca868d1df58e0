"""`results_dir/index.html`: the report's tables and plots, then every sample's edits side by side.

Per sample: the source video, the edited first frame and mask, and each method's edited video with its
scores, all playing in sync. The page is static and uses relative paths only, so it opens from disk.
The source, edited frame and mask are re-read through each run's own dataset config and written under
`results_dir/gallery/<dataset>/<sample id>/` (browsers cannot play the lossless mkv sources).
"""
from __future__ import annotations

import html
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
from reports.paper import COLUMN_BY_KEY, display_name

log = logging.getLogger("report")
TEMPLATES = Path(__file__).resolve().parent / "templates"


@dataclass
class Edit:
    """One method's result on one sample, as shown in the gallery."""

    label: str
    video: str | None  # path relative to results_dir
    status: str
    scores: list[tuple[str, str]]
    tiny: bool
    error: str | None = None


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


def _score_items(scores: dict[str, float], columns: dict[str, dict]) -> list[tuple[str, str]]:
    items = []
    for name, v in scores.items():
        col = COLUMN_BY_KEY.get(name)
        info = columns.get(name, {})
        if info.get("percent"):
            v = v * 100
        higher = info.get("higher_is_better", None if col is None else col.higher_is_better)
        arrow = "" if higher is None else (" ↑" if higher else " ↓")
        items.append(((col.header if col else name) + arrow, "NaN" if math.isnan(v) else f"{v:.2f}"))
    return items


def _export_inputs(view: SampleView, runs: list[RunDir], results_dir: Path) -> None:
    """Write the sample's source (H.264 mp4), edited first frame and mask into the gallery folder."""
    out = results_dir / "gallery" / view.dataset / view.id
    problems = []
    for run in runs:
        try:
            dataset = instantiate(run.info()["config"]["dataset"])
            sample = dataset.load(view.id)
        except Exception as e:  # a moved or missing dataset must not stop the report
            problems.append(f"{run.root.relative_to(results_dir)}: {type(e).__name__}: {e}")
            continue
        write_video_viewable(out / "source.mp4", sample.source, sample.fps)
        write_image(out / "edited.png", sample.edited_frame)
        view.source, view.edited_frame = (str((out / n).relative_to(results_dir).as_posix()) for n in ("source.mp4", "edited.png"))
        if sample.mask is not None:
            write_image(out / "mask.png", sample.mask.astype(np.uint8) * 255)
            view.mask = str((out / "mask.png").relative_to(results_dir).as_posix())
        view.instruction = sample.instruction or sample.target_prompt or ""
        return
    view.problem = "source unavailable: " + " | ".join(problems)
    log.warning("gallery: sample %s of %s: %s", view.id, view.dataset, view.problem)


def collect_samples(results_dir: Path) -> list[SampleView]:
    """Every (dataset, sample id) with at least one row, and each run's edit of it."""
    by_dataset: dict[str, list[RunDir]] = {}
    for run in find_runs(results_dir):
        by_dataset.setdefault(run.info()["dataset"], []).append(run)
    views = []
    for dataset, runs in sorted(by_dataset.items()):
        ids = sorted({p.parent.name for r in runs for p in (r.root / "samples").glob("*/row.json")})
        for sid in ids:
            view = SampleView(dataset, sid)
            _export_inputs(view, runs, results_dir)
            for run in runs:
                row = run.row(sid)
                if row is None:
                    continue
                info = run.info()
                summary = read_json(run.root / "summary.json") if (run.root / "summary.json").exists() else {}
                mp4 = run.sample_dir(sid) / "edited.mp4"
                view.edits.append(Edit(
                    label=f"{display_name(info['method'])} · {info['models']}",
                    video=str(mp4.relative_to(results_dir).as_posix()) if mp4.exists() else None,
                    status=row.status,
                    scores=_score_items(row.scores, summary.get("columns", {})),
                    tiny=bool(summary.get("tiny", info.get("tiny_models", False))),
                    error=(row.error or "").splitlines()[0] if row.error else None,
                ))
            views.append(view)
    return views


def write_gallery(results_dir: Path, tables_html: list[tuple[str, str]], plots: list[Path]) -> Path:
    """Render `index.html`: `tables_html` as (title, html table) pairs, plot images, then the samples."""
    env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(["html", "j2"]))
    page = env.get_template("gallery.html.j2").render(
        tables=tables_html,
        plots=[str(p.relative_to(results_dir).as_posix()) for p in plots],
        samples=collect_samples(results_dir),
        results_dir=html.escape(str(results_dir)),
    )
    path = results_dir / "index.html"
    write_atomic(path, page)
    return path
