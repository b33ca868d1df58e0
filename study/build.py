"""Build a blinded study from the finished runs under `results_dir`.

For each sample that the reference and an opponent both edited (status ok, with a viewable edit), one pair:
the two edits side by side, left/right drawn from the study's seed. Method names never reach the rater: every
candidate video is copied to `media/v/<token>.mp4`, the token a hash of the seed, method and sample. Catch pairs
put the reference's edit beside a corrupted copy of it (frozen on its first frame, with heavy noise and blocks),
which every careful rater rejects on both questions. Each rater sees the pairs in an order of their own
(`rater_order`, seeded by the study's seed and the rater id).

    results_dir/_study/<name>/
        study.json          settings, pairs (with both methods' scores), runs used
        media/src/<sample id>/source.mp4, edited.png
        media/v/<token>.mp4
        answers.sqlite      (study.store)

Names from data (study name, sample ids) are checked as folder names first; nothing is written outside the
study folder.
"""
from __future__ import annotations

import hashlib
import logging
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from hydra.utils import instantiate

from data.video_io import read_video, write_image, write_video_viewable
from harness.files import clean_stale_temps, read_json, write_json, write_with
from harness.names import is_inside, name_problem, safe_child
from reports.runs import ReportRun, read_runs
from study.settings import Settings
from study.types import Pair, StudyError

log = logging.getLogger("study")
STUDY_FILE = "study.json"


def study_dir(results_dir: str | Path, name: str) -> Path:
    """`results_dir/_study/<name>`, the name checked as a folder name."""
    return safe_child(Path(results_dir) / "_study", name, "study.name")


def token(*parts: Any) -> str:
    return hashlib.sha256("\x1f".join(map(str, parts)).encode()).hexdigest()[:16]


def rater_order(n: int, seed: int, rater: str) -> list[int]:
    """The order (indices into the study's pairs) in which `rater` sees them: a permutation drawn from the seed and
    the rater id, so that position effects average out over raters and a returning rater gets the same order."""
    return [int(i) for i in np.random.default_rng([seed, int(token(rater), 16)]).permutation(n)]


CATCH = "catch"  # the opponent of a catch pair


@dataclass(frozen=True)
class PlannedPair:
    opponent: str  # an opponent's label, or CATCH
    sample_id: str
    reference_right: bool  # the reference's edit is shown on the right


def plan_pairs(seed: int, common: dict[str, list[str]], reference_ids: list[str], catch_rate: float) -> list[PlannedPair]:
    """The study's pairs in display order, from the seed alone: one per (opponent, shared sample), the reference
    on the right in half of each opponent's pairs (`balanced_sides`), then ceil(catch_rate × pairs) catch pairs on distinct reference samples, then
    all shuffled. `common[opponent]` are the samples both finished; the same inputs give the same plan."""
    rng = np.random.default_rng(seed)
    plan = [PlannedPair(o, sid, right) for o, ids in common.items() for sid, right in zip(ids, balanced_sides(rng, len(ids)))]
    n_catch = min(math.ceil(catch_rate * len(plan)), len(reference_ids)) if plan else 0
    chosen = sorted(rng.choice(len(reference_ids), size=n_catch, replace=False))
    plan += [PlannedPair(CATCH, reference_ids[i], right) for i, right in zip(chosen, balanced_sides(rng, n_catch))]
    return [plan[i] for i in rng.permutation(len(plan))]


def balanced_sides(rng: np.random.Generator, n: int) -> list[bool]:
    """`n` sides (True: the reference on the right) in random order, half of each (the odd one a fair coin), so
    that a side bias of raters cancels out of every opponent's percentage."""
    sides = [True] * (n // 2) + [False] * (n // 2) + ([bool(rng.random() < 0.5)] if n % 2 else [])
    return [sides[i] for i in rng.permutation(n)]


def corrupt(frames: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A catch trial's bad candidate: the first frame frozen, 8× blocky, with heavy noise (no motion, no detail)."""
    first = frames[0].astype(np.float32)
    h, w = first.shape[:2]
    small = first[::8, ::8]
    blocky = np.repeat(np.repeat(small, 8, 0), 8, 1)[:h, :w]
    noisy = blocky[None] + rng.normal(0, 60, (len(frames), h, w, 3))
    return np.clip(noisy, 0, 255).astype(np.uint8)


@dataclass
class Study:
    """A built study read back: its folder, settings and pairs."""

    root: Path
    settings: Settings
    pairs: list[Pair]
    columns: dict[str, dict]  # metric -> its column info (higher_is_better, percent)
    tiny: bool = False  # some compared run used tiny random-weight models

    @classmethod
    def load(cls, root: str | Path) -> "Study":
        root = Path(root)
        path = root / STUDY_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no study here (build one with `python run.py stage=study`)")
        try:
            d = read_json(path)
            return cls(root, Settings(**d["settings"]), [Pair.from_json(p) for p in d["pairs"]], d.get("columns", {}),
                       bool(d.get("tiny", False)))
        except (ValueError, KeyError, TypeError) as e:
            raise StudyError(f"{path}: damaged study file ({type(e).__name__}: {e}); rebuild it") from e

    def __post_init__(self):
        self._by_id = {p.id: p for p in self.pairs}

    def pair(self, pair_id: str) -> Pair | None:
        return self._by_id.get(pair_id)

    def order(self, rater: str) -> list[Pair]:
        return [self.pairs[i] for i in rater_order(len(self.pairs), self.settings.seed, rater)]


def _select_runs(results_dir: Path, s: Settings) -> dict[str, ReportRun]:
    runs, _ = read_runs(results_dir)
    here = {r.method: r for r in runs if r.dataset == s.dataset and r.models == s.models}
    wanted = [s.reference, *s.against]
    missing = [m for m in wanted if m not in here]
    if missing:
        raise StudyError(f"no finished run of {', '.join(missing)} on {s.dataset}/{s.models} under {results_dir} "
                         f"(there: {', '.join(sorted(here)) or 'none'}); set study.dataset, study.models, study.against")
    return {m: here[m] for m in wanted}


def _usable(run: ReportRun) -> dict[str, Any]:
    """The run's rows that can be shown: status ok, a safe sample id and an edited.mp4."""
    out = {}
    for r in run.rows:
        why = name_problem(r.sample_id)
        if why is not None:
            log.warning("study: %s: sample id %r %s; left out", run.where, r.sample_id, why)
        elif r.status == "ok" and (run.dir.root / "samples" / r.sample_id / "edited.mp4").is_file():
            out[r.sample_id] = r
    return out


def _copy(src: Path, dst: Path) -> None:
    if not dst.exists():
        write_with(dst, lambda tmp: shutil.copyfile(src, tmp))


def _finite(scores: dict[str, float]) -> dict[str, float]:
    return {k: float(v) for k, v in scores.items() if math.isfinite(v)}


def build_study(results_dir: str | Path, settings: Settings) -> Study:
    """Build (or rebuild identically) the study `settings.name` from the runs under `results_dir`."""
    from study.store import Store

    results_dir = Path(results_dir)
    s = settings
    root = study_dir(results_dir, s.name)
    if not is_inside(root.parent, results_dir):
        raise StudyError(f"{root.parent} resolves outside {results_dir}")
    clean_stale_temps(root)
    runs = _select_runs(results_dir, s)
    rows = {m: _usable(r) for m, r in runs.items()}
    ref = rows[s.reference]
    dataset = _dataset(runs[s.reference])
    pairs: list[Pair] = []
    media: dict[str, tuple[str, str, str, float]] = {}  # sample id -> (source, edited frame, instruction, fps)

    def inputs(sid: str) -> tuple[str, str, str, float]:
        if sid not in media:
            sample = dataset.load(sid)
            d = root / "media" / "src" / sid
            write_video_viewable(d / "source.mp4", sample.source, sample.fps)
            write_image(d / "edited.png", sample.edited_frame)
            media[sid] = (f"media/src/{sid}/source.mp4", f"media/src/{sid}/edited.png",
                          sample.instruction or sample.target_prompt or "", sample.fps)
        return media[sid]

    def video(method: str, sid: str) -> str:
        rel = f"media/v/{token(s.seed, method, sid)}.mp4"
        _copy(runs[method].dir.root / "samples" / sid / "edited.mp4", root / rel)
        return rel

    plan = plan_pairs(s.seed, {o: sorted(set(ref) & set(rows[o])) for o in s.against}, sorted(ref), s.catch_rate)
    for item in plan:
        src, frame, instruction, fps = inputs(item.sample_id)
        a = video(s.reference, item.sample_id)
        if item.opponent == CATCH:
            b = f"media/v/{token(s.seed, CATCH, item.sample_id)}.mp4"
            if not (root / b).exists():
                frames = read_video(runs[s.reference].dir.root / "samples" / item.sample_id / "edited.mkv")
                write_video_viewable(root / b, corrupt(frames, np.random.default_rng([s.seed, int(token(item.sample_id), 16)])), fps)
            scores = {}
        else:
            b = video(item.opponent, item.sample_id)
            scores = {s.reference: _finite(ref[item.sample_id].scores), item.opponent: _finite(rows[item.opponent][item.sample_id].scores)}
        (lm, lv), (rm, rv) = ((item.opponent, b), (s.reference, a)) if item.reference_right else ((s.reference, a), (item.opponent, b))
        pairs.append(Pair(token(s.seed, "pair", item.opponent, item.sample_id), item.sample_id, instruction, src, frame, lv, rv,
                          lm, rm, s.reference, item.opponent,
                          catch_bad=None if item.opponent != CATCH else ("left" if item.reference_right else "right"),
                          scores=scores))
    if not pairs:
        raise StudyError(f"study {s.name}: no sample was finished by {s.reference} and any of {', '.join(s.against)}")
    _refuse_changed(root, pairs)
    columns = {}
    for r in runs.values():
        columns.update(r.columns)
    write_json(root / STUDY_FILE, {"settings": s.to_json(), "pairs": [p.to_json() for p in pairs], "columns": columns,
                                   "tiny": any(r.tiny for r in runs.values()), "runs": {m: r.where for m, r in runs.items()}})
    Store(root).close()  # the answers database exists from the start
    log.info("study %s: %d pairs (%d catch) of %s against %s -> %s", s.name, len(pairs), sum(p.is_catch for p in pairs),
             s.reference, ", ".join(s.against), root)
    return Study.load(root)


def _dataset(run: ReportRun):
    cfg = run.info.get("config", {}).get("dataset", {})
    if not isinstance(cfg, dict) or "_target_" not in cfg:
        raise StudyError(f"{run.dir.root / 'run.json'} records no dataset config (config.dataset._target_)")
    return instantiate(cfg)


def _refuse_changed(root: Path, pairs: list[Pair]) -> None:
    """A study that has answers keeps its pairs: a rebuild that would change them is refused."""
    from study.store import Store

    if not (root / STUDY_FILE).is_file() or not (root / "answers.sqlite").is_file():
        return
    old = Study.load(root)
    with Store(root) as store:
        n = store.count()
    if n and [p.to_json() for p in old.pairs] != [p.to_json() for p in pairs]:
        raise StudyError(f"{root} already holds {n} answers to other pairs; give the new study its own study.name")
