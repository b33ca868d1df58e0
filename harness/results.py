"""The results store: one folder per (dataset, models, method) run under `results_dir`.

    results_dir/<dataset>/<models>/<method label>/
        run.json                   resolved config, its fingerprint, versions, seed, device, metric columns
        summary.json               counts, means, set-level metrics (FVD): rewritten at the end of each run
        samples/<sample id>/
            edited.mp4             for people
            edited.mkv             lossless, for re-scoring (`stage=score`)
            row.json               the sample's ScoreRow (written last, atomically: its presence = done)
            features.npz           per-video features of set-level metrics

Every file is written atomically, so an interrupted run leaves only whole files behind.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from data.video_io import read_video, write_video_lossless, write_video_viewable
from harness.files import file_lock, read_json, write_json, write_npz
from harness.names import check_name, safe_child
from harness.types import ScoreRow

log = logging.getLogger("harness")


class ConfigMismatch(RuntimeError):
    pass


class DamagedRow(ValueError):
    """A `row.json` that cannot be read back (truncated, not JSON, wrong types); `path` names it."""

    def __init__(self, path: Path, problem: str):
        self.path, self.problem = Path(path), problem
        super().__init__(f"{path}: damaged row ({problem}); the sample counts as not done")


@dataclass
class RowScan:
    """Every row of a run folder: the readable ones, and the damaged ones (path -> problem) apart."""

    rows: list[ScoreRow]
    damaged: dict[Path, str]


class RunDir:
    def __init__(self, root: str | Path):
        self.root = Path(root)

    # The run as a whole.
    def claim(self, info: dict[str, Any]) -> None:
        """Record the run's config (`stage=edit`); refuse to mix results of a different config into the folder.

        Under the run's lock, so that concurrent jobs on one folder keep every start in `history`.
        """
        with self.lock():
            old = self._check(info["fingerprint"], info["fingerprint_config"])
            if old is not None:
                info = {**info, "started": old.get("started"),
                        "history": [*_history(old), {"stage": "edit", "started": info.get("started")}]}
            else:
                info = {**info, "history": [{"stage": "edit", "started": info.get("started")}]}
            write_json(self.root / "run.json", info)

    def check(self, fingerprint: str, fingerprint_config: dict[str, Any], stage: str, started: str) -> None:
        """For a stage that reuses the run's edits (`stage=score`): the run must exist and have this config."""
        with self.lock():
            old = self._check(fingerprint, fingerprint_config)
            if old is None:
                raise FileNotFoundError(f"stage={stage}: no edits to score in {self.root} (run stage=edit first)")
            write_json(self.root / "run.json", {**old, "history": [*_history(old), {"stage": stage, "started": started}]})

    def _check(self, fingerprint: str, fingerprint_config: dict[str, Any]) -> dict[str, Any] | None:
        path = self.root / "run.json"
        if not path.exists():
            return None
        try:
            old = read_json(path)
        except (OSError, ValueError) as e:
            raise ConfigMismatch(f"{path} cannot be read ({type(e).__name__}: {e}); fix or delete it") from e
        if not isinstance(old, dict) or old.get("fingerprint") != fingerprint:
            changed = _diff(old.get("fingerprint_config", {}) if isinstance(old, dict) else {}, fingerprint_config)
            raise ConfigMismatch(
                f"{self.root} holds results of a different config (changed: {', '.join(changed) or '?'}). "
                "Give this variant its own name with tag=NAME, or delete that folder to start over."
            )
        return old

    def lock(self, blocking: bool = True):
        """The run's own lock (run.json's history, the summary)."""
        return file_lock(self.root / ".run.lock", blocking)

    def sample_lock(self, sample_id: str, blocking: bool = False):
        """A claim on one sample: yields False when another process holds it (see `harness.files.file_lock`)."""
        check_name(sample_id, "sample id")
        return file_lock(self.root / ".claims" / sample_id, blocking)

    def info(self) -> dict[str, Any]:
        return read_json(self.root / "run.json")

    def write_summary(self, summary: dict[str, Any]) -> None:
        write_json(self.root / "summary.json", summary)

    # One sample.
    def sample_dir(self, sample_id: str) -> Path:
        return safe_child(self.root / "samples", sample_id, "sample id")

    def row(self, sample_id: str) -> ScoreRow | None:
        """The sample's row, None when it has none; `DamagedRow` when its file cannot be read back."""
        p = self.sample_dir(sample_id) / "row.json"
        return read_row(p) if p.exists() else None

    def scan(self) -> RowScan:
        """Every row under `samples/`, damaged ones set apart (each logged with its path)."""
        rows, damaged = [], {}
        for p in sorted((self.root / "samples").glob("*/row.json")):
            try:
                rows.append(read_row(p))
            except DamagedRow as e:
                damaged[p] = e.problem
                log.warning("%s", e)
        return RowScan(rows, damaged)

    def rows(self) -> list[ScoreRow]:
        """The readable rows (see `scan` for the damaged ones)."""
        return self.scan().rows

    def write_row(self, row: ScoreRow) -> None:
        write_json(self.sample_dir(row.sample_id) / "row.json", row.to_json())

    def save_video(self, sample_id: str, frames: np.ndarray, fps: float) -> None:
        d = self.sample_dir(sample_id)
        write_video_lossless(d / "edited.mkv", frames, fps)
        write_video_viewable(d / "edited.mp4", frames, fps)

    def load_video(self, sample_id: str) -> np.ndarray:
        return read_video(self.sample_dir(sample_id) / "edited.mkv")

    def save_features(self, sample_id: str, feats: dict[str, np.ndarray]) -> None:
        write_npz(self.sample_dir(sample_id) / "features.npz", **feats)

    def load_features(self, sample_id: str) -> dict[str, np.ndarray] | None:
        p = self.sample_dir(sample_id) / "features.npz"
        if not p.exists():
            return None
        with np.load(p) as z:
            return {k: z[k] for k in z.files}


def read_row(path: Path) -> ScoreRow:
    """A row file read back and checked; `DamagedRow` naming the file when it is not a valid row."""
    try:
        row = ScoreRow.from_json(read_json(path))
    except (OSError, UnicodeDecodeError, ValueError) as e:  # JSONDecodeError is a ValueError
        raise DamagedRow(path, f"{type(e).__name__}: {e}") from e
    if row.sample_id != path.parent.name:
        raise DamagedRow(path, f"its sample_id {row.sample_id!r} is not its folder's name")
    return row


def _history(old: dict[str, Any]) -> list:
    """Earlier entries of run.json's history (older runs kept only the start times)."""
    h = old.get("history", [])
    return h if isinstance(h, list) else []


def _diff(a: dict, b: dict, prefix: str = "") -> list[str]:
    keys = sorted(set(a) | set(b))
    out = []
    for k in keys:
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += _diff(va, vb, f"{prefix}{k}.")
        elif va != vb:
            out.append(f"{prefix}{k}")
    return out


def find_runs(results_dir: str | Path) -> list[RunDir]:
    return [RunDir(p.parent) for p in sorted(Path(results_dir).glob("*/*/*/run.json"))]
