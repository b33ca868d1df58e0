"""The runner: for each sample, edit, save, score, and write its row; then the run's summary.

`stage=edit` skips samples whose row says ok (or NaN) and retries failed ones; `stage=score` re-scores the
saved edits with the current metric suite, editing nothing.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import platform
import resource
import sys
import time
import threading
import traceback
from collections import Counter
from concurrent.futures import Future
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from harness.cache import instantiate_cached
from harness.method import EditMethod, NonFiniteEdit
from harness.metric import Column, SetMetric, VideoMetric
from harness.files import clean_stale_temps
from harness.names import MAX_LEN, UnsafeName, check_name
from harness.overlap import OneSlot, use_overlap
from harness.results import DamagedRow, RunDir, find_runs
from harness.types import Costs, EditedVideo, EditSample, ScoreRow

log = logging.getLogger("harness")

PACKAGES = ("torch", "torchvision", "diffusers", "transformers", "open_clip_torch", "scikit-image",
            "hydra-core", "numpy", "pandas", "datasets", "av")


def resolve_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def package_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for p in PACKAGES:
        try:
            out[p] = version(p)
        except PackageNotFoundError:
            pass
    return out


def method_label(cfg: DictConfig, overrides: list[str] = ()) -> str:
    """The method's name in tables and folders: `tag` if given, else its name plus any `method.*` overrides.

    The label is a folder name: a `tag` must be a safe one (`harness.names`); override values are kept readable
    but their path separators and control characters are percent-encoded, so `method.root=/x/y` stays one folder.
    """
    if cfg.get("tag"):
        return check_name(str(cfg.tag), "tag")
    name = check_name(str(cfg.method.name), "method.name")
    extra = sorted(o.split("method.", 1)[1] for o in overrides if o.lstrip("+~").startswith("method."))
    if not extra:
        return name
    label = name + "[" + ",".join(extra).translate(_LABEL_ESCAPES) + "]"
    if len(label) > MAX_LEN:  # keep it a valid folder name; the full overrides are in run.json
        digest = hashlib.sha256(label.encode()).hexdigest()[:12]
        label = f"{label[: MAX_LEN - 15]}…{digest}]"
    return label


_LABEL_ESCAPES = {c: f"%{c:02X}" for c in (*range(32), 127, ord("/"), ord("\\"), ord("%"))}


@dataclass
class Suite:
    """The instantiated metric suite."""

    video: dict[str, VideoMetric]
    sets: dict[str, SetMetric]

    @property
    def columns(self) -> dict[str, Column]:
        cols: dict[str, Column] = {}
        for m in [*self.video.values(), *self.sets.values()]:
            cols.update(m.columns)
        return cols

    @property
    def tiny(self) -> bool:
        return any(m.tiny for m in [*self.video.values(), *self.sets.values()])

    @property
    def info(self) -> dict[str, str]:
        """What metrics record about their scores beyond the config (e.g. the I3D weights' sha256), for the summary."""
        return {k: v for m in [*self.video.values(), *self.sets.values()] for k, v in getattr(m, "info", {}).items()}


def load_suite(cfg: DictConfig) -> Suite:
    video, sets = {}, {}
    for key, mcfg in (cfg.metrics or {}).items():
        m = instantiate_cached(mcfg)
        if isinstance(m, SetMetric):
            sets[key] = m
        elif isinstance(m, VideoMetric):
            video[key] = m
        else:
            raise TypeError(f"metrics.{key}: {type(m).__name__} is neither a VideoMetric nor a SetMetric")
    return Suite(video, sets)


_CLEAR_REFS, _STATUS = Path("/proc/self/clear_refs"), Path("/proc/self/status")


def _peak_memory_reset(device: str) -> None:
    """Start a new high-water mark: CUDA's peak allocation, or on Linux the process's peak RSS (VmHWM)."""
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        return
    try:
        _CLEAR_REFS.write_text("5")  # "5" resets VmHWM to the current RSS (Linux proc(5))
    except OSError:
        pass


def _peak_memory_mb(device: str) -> float:
    """Peak memory of this edit: GPU memory allocated on CUDA; on CPU the process's peak resident set since the
    reset (Linux), else the process's lifetime peak (`ru_maxrss`)."""
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() / 2**20
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def edit_one(method: EditMethod, sample: EditSample, seed: int, device: str) -> tuple[EditedVideo | None, Costs, NonFiniteEdit | None]:
    """Run one edit and measure it; a non-finite result comes back as the error, with its costs.

    `seconds` is the one definition of an edit's time for every method (`harness.method`): the wall clock around
    `method.edit`, from the sample's frames to the output frames, read after CUDA has finished the edit's work.
    `method.prepare()` runs first, off the clock, so no model loading is counted, not even on a run's first sample.
    """
    method.prepare()
    _peak_memory_reset(device)
    out, nonfinite = None, None
    t0 = time.perf_counter()
    try:
        out = method.edit(sample, seed)
        frames = np.asarray(out.frames)
        if frames.dtype != np.uint8 and not np.isfinite(frames).all():
            raise NonFiniteEdit("the edited video has non-finite values")
    except NonFiniteEdit as e:
        nonfinite = e
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    nfe = out.nfe if out is not None else getattr(nonfinite, "nfe", None)
    costs = Costs(seconds=seconds, peak_mem_mb=_peak_memory_mb(device), nfe=nfe)
    if nonfinite is None:
        if frames.dtype != np.uint8:
            raise TypeError(f"{method.name} returned {frames.dtype} frames; methods return uint8")
        if frames.shape != sample.source.shape:
            raise ValueError(f"{method.name} returned frames of shape {frames.shape}, the source is {sample.source.shape}")
    return out, costs, nonfinite


def score_one(suite: Suite, sample: EditSample, frames: np.ndarray) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    scores: dict[str, float] = {}
    for m in suite.video.values():  # a column left out, or None, does not apply to this sample
        scores.update({k: float(v) for k, v in m.score(sample, frames).items() if v is not None})
    feats: dict[str, np.ndarray] = {}
    for key, m in suite.sets.items():
        feats.update({f"{key}.{k}": np.asarray(v) for k, v in m.features(sample, frames).items()})
    return scores, feats


def _set_scores(suite: Suite, run: RunDir, ok_ids: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, m in suite.sets.items():
        feats = []
        for sid in ok_ids:
            f = run.load_features(sid) or {}
            mine = {k.split(".", 1)[1]: v for k, v in f.items() if k.startswith(f"{key}.")}
            if mine:
                feats.append(mine)
        if feats:
            out.update(m.compute(feats))
    return out


def fingerprint_config(cfg: DictConfig, uses_models: bool) -> dict[str, Any]:
    """What must be equal for two runs' samples to be interchangeable.

    Where and how things run or are stored (device, threads, speed, data_dir, a local weights folder) and which part of
    the dataset a job takes (shard, limit) do not change a sample's edit, so a run may resume elsewhere or in parts.
    """

    def strip(x: Any, drop: set[str]) -> Any:
        if isinstance(x, dict):
            return {k: strip(v, drop) for k, v in x.items() if k not in drop}
        return [strip(v, drop) for v in x] if isinstance(x, list) else x

    def plain(node: DictConfig, drop: set[str]) -> dict[str, Any]:
        return strip(OmegaConf.to_container(node, resolve=True), drop | {"device"})

    d: dict[str, Any] = {
        "method": plain(cfg.method, {"root", "speed"}),
        "dataset": plain(cfg.dataset, {"data_dir", "shard", "num_shards", "limit"}),
        "seed": cfg.seed,
    }
    if uses_models:
        d["models"] = plain(cfg.models, {"root"})
    return d


def run_dir_for(cfg: DictConfig, label: str) -> RunDir:
    parts = [(cfg.dataset.name, "dataset.name"), (cfg.models.name, "models.name"), (label, "method label")]
    return RunDir(Path(cfg.results_dir).joinpath(*(check_name(str(v), what) for v, what in parts)))


def suite_id(cfg: DictConfig) -> str:
    """Names the metric suite a row was scored with: a digest of the resolved `metrics` config less where each metric
    runs (`device`), which changes no score: rows scored on the GPU and on the CPU are one suite."""
    plain = OmegaConf.to_container(cfg.metrics, resolve=True) if cfg.get("metrics") else {}
    plain = {name: {k: v for k, v in entry.items() if k != "device"} if isinstance(entry, dict) else entry
             for name, entry in plain.items()}
    return hashlib.sha256(json.dumps(plain, sort_keys=True, default=str).encode()).hexdigest()[:12]


class EmptyDataset(RuntimeError):
    """The dataset lists no sample: nothing to run (a warning and a non-zero exit, not an empty table)."""

    exit_code = 2


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during a run; `finished` counts the run's finished samples, so the user knows what resumes."""

    def __init__(self, finished: int):
        super().__init__(finished)
        self.finished = finished

    def __str__(self) -> str:
        return f"interrupted; {self.finished} samples finished, rerun the same command to resume"


def run(cfg: DictConfig, overrides: list[str] = ()) -> dict[str, Any]:
    """Edit (stage=edit) or re-score (stage=score) every sample of the dataset; returns the run's summary.

    The dataset's ids are listed before anything is written, so a failed start leaves nothing behind. Each
    sample is claimed (a lock released even by kill -9) while it is processed, so processes sharing the folder
    never do one sample twice; samples another process holds are taken up at the end if it did not finish them.
    """
    stage = cfg.stage
    device = cfg.device
    dataset = instantiate_cached(cfg.dataset)
    ids = dataset.ids()
    if not ids:
        raise EmptyDataset(f"dataset {dataset.name!r} has no samples{_where(dataset)}: nothing to {stage}")
    label = method_label(cfg, overrides)
    run_dir = run_dir_for(cfg, label)
    method: EditMethod = instantiate_cached(cfg.method)
    suite = load_suite(cfg)
    suite_key = suite_id(cfg)

    fp_cfg = fingerprint_config(cfg, method.uses_models)
    fingerprint = hashlib.sha256(json.dumps(fp_cfg, sort_keys=True, default=str).encode()).hexdigest()[:16]
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    if stage == "edit":
        run_dir.claim({
            "dataset": str(cfg.dataset.name), "method": label, "method_name": str(cfg.method.name),
            "models": str(cfg.models.name), "tiny_models": _edit_is_tiny(cfg, method),
            "fingerprint": fingerprint, "fingerprint_config": fp_cfg, "started": started,
            "weights_revision": method.weights_revision,
            "seed": cfg.seed, "device": device, "argv": sys.argv, "overrides": list(overrides),
            "versions": package_versions(), "config": OmegaConf.to_container(cfg, resolve=True),
        })
    else:
        run_dir.check(fingerprint, fp_cfg, stage, started)
    clean_stale_temps(run_dir.root)

    counts = {"ok": 0, "nan": 0, "failed": 0, "skipped": 0}
    job = Job(stage, dataset, method, suite, suite_key, run_dir, cfg.seed, device, counts,
              use_overlap(cfg.get("overlap"), device))
    bar = tqdm(total=len(ids), desc=f"{stage} {label} on {dataset.name}", unit="video", dynamic_ncols=True)
    try:
        job.run(ids, bar)
    except KeyboardInterrupt:
        raise Interrupted(sum(r.status in ("ok", "nan") for r in run_dir.rows())) from None
    finally:
        bar.close()

    summary = write_summary(run_dir, suite, suite_key, label, str(dataset.name), str(cfg.models.name),
                            _edit_is_tiny(cfg, method), counts["skipped"],
                            {**getattr(dataset, "unlisted", {}), **job.unsafe})
    if len(summary["suites"]) > 1:
        log.warning("%s: its samples were scored by %d different metric suites (%s); `stage=score` with this "
                    "config rescores them all with the current one", run_dir.root, len(summary["suites"]),
                    ", ".join(f"{k}: {n}" for k, n in summary["suites"].items()))
    log.info("%s on %s: %d ok, %d NaN, %d failed, %d already done -> %s", label, dataset.name,
             counts["ok"], counts["nan"], counts["failed"], counts["skipped"], run_dir.root)
    return summary


def write_summary(run_dir: RunDir, suite: Suite, suite_key: str, label: str, dataset: str, models: str,
                  tiny_models: bool, skipped: int, unsafe_ids: dict[str, str]) -> dict[str, Any]:
    """Write the run's summary.json, under the run's lock, over every finished row and saved features of the run,
    whoever finished them; `skipped` and `unsafe_ids` describe the job that writes it."""
    with run_dir.lock():
        scan = run_dir.scan()
        rows = {r.sample_id: r for r in scan.rows}
        ok_ids = [sid for sid, r in rows.items() if r.status == "ok"]
        set_scores = _set_scores(suite, run_dir, ok_ids) if ok_ids else {}
        if any(r.status == "nan" for r in rows.values()):  # a set-level score over part of the set would mislead
            set_scores = {c: math.nan for c in _set_columns(suite)}
        summary = summarize(rows.values(), set_scores, suite, label, dataset, models, tiny_models)
        summary.update({"finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                        "skipped": skipped, "suite": suite_key,
                        "damaged": {str(p.relative_to(run_dir.root)): why for p, why in scan.damaged.items()},
                        "unsafe_ids": unsafe_ids})
        run_dir.write_summary(summary)
    return summary


def summarize_runs(results_dir: str | Path, device: str) -> dict[str, dict[str, Any]]:
    """`stage=summarize`, the reduce step: rewrite the summary of every run folder under `results_dir` over all its
    rows and saved features, editing and scoring nothing; returns {run folder: summary}.

    Each run is summarized with the metric suite recorded in its run.json (the config of its latest `stage=edit`),
    so one command serves runs made with different suites; rows scored by another suite are logged. The suite's
    models are loaded (once per suite) on `device`, whatever device the run had. `skipped` and `unsafe_ids` (what
    the last job found) are kept from the summary being replaced.
    """
    out = {}
    runs = find_runs(results_dir)
    if not runs:
        log.warning("stage=summarize: no run folder (*/*/*/run.json) under %s", results_dir)
    for run_dir in runs:
        try:
            info = run_dir.info()
        except (OSError, ValueError) as e:
            log.error("%s/run.json cannot be read (%s: %s); its summary is left as it is", run_dir.root,
                      type(e).__name__, e)
            continue
        metrics = info["config"].get("metrics") or {}
        suite_key = suite_id(OmegaConf.create({"metrics": metrics}))
        suite = load_suite(OmegaConf.create({"metrics": _on_device(metrics, device)}))
        try:
            old = json.loads((run_dir.root / "summary.json").read_text())
        except (OSError, ValueError):
            old = {}
        old = old if isinstance(old, dict) else {}
        summary = write_summary(run_dir, suite, suite_key, str(info["method"]), str(info["dataset"]),
                                str(info["models"]), bool(info.get("tiny_models")), old.get("skipped", 0),
                                old.get("unsafe_ids", {}))
        others = {k: n for k, n in summary["suites"].items() if k != suite_key}
        if others:
            log.warning("%s: %d rows were scored by other metric suites than run.json's (%s); its summary uses "
                        "run.json's", run_dir.root, sum(others.values()), suite_key)
        log.info("summarized %s: %d ok, %d NaN, %d failed", run_dir.root, summary["n_ok"], summary["n_nan"],
                 summary["n_failed"])
        out[str(run_dir.root)] = summary
    return out


def _on_device(node: Any, device: str) -> Any:
    """A plain config with every `device` key set to `device`."""
    if isinstance(node, dict):
        return {k: device if k == "device" else _on_device(v, device) for k, v in node.items()}
    return [_on_device(v, device) for v in node] if isinstance(node, list) else node


def _where(dataset) -> str:
    root, unlisted = getattr(dataset, "root", None), getattr(dataset, "unlisted", {})
    if unlisted:
        return f" (every sample folder in {root} has a name that cannot be a folder: {', '.join(map(repr, unlisted))})"
    return f" (its folder {root} holds no sample folder)" if root is not None else ""


@dataclass
class _Done:
    """A processed sample still to be written: its edited video (when the edit gave frames) and features, then its
    row, written last so that a sample counts as done only once everything it has is on disk."""

    row: ScoreRow
    old: ScoreRow | None = None
    frames: np.ndarray | None = None
    fps: float | None = None
    feats: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class Job:
    """One run's loop body: claim a sample, skip it when done, else edit or re-score it and write its row.

    With `overlap` (`harness.overlap`), the next sample is read and the last one written in the background while the
    GPU works; the order of what is written, and every result, are those of the plain loop.
    """

    stage: str
    dataset: Any
    method: EditMethod
    suite: Suite
    suite_key: str
    run_dir: RunDir
    seed: int
    device: str
    counts: dict[str, int]
    overlap: bool = False

    def __post_init__(self):
        self.unsafe: dict[str, str] = {}
        self._counting = threading.Lock()
        self._reader = OneSlot("read-ahead") if self.overlap else None
        self._writer = OneSlot("write-behind") if self.overlap else None
        self._ahead: tuple[str, Future] | None = None

    def run(self, ids: list[str], bar: tqdm | None = None) -> None:
        """Process `ids` in order, each read ahead while the one before it is edited; samples another process holds
        are waited for at the end, and done here if that process did not finish them."""
        busy = []
        try:
            for i, sid in enumerate(ids):
                if not self.take(sid, blocking=False, then=ids[i + 1] if i + 1 < len(ids) else None):
                    busy.append(sid)
                if bar is not None:
                    bar.update()
                    bar.set_postfix(failed=self.counts["failed"], nan=self.counts["nan"])
            for sid in busy:
                log.info("sample %s is being processed by another process; waiting for it", sid)
                self.take(sid, blocking=True)
        finally:
            self.close()  # what is being written is finished, even on Ctrl-C

    def take(self, sid: str, blocking: bool, then: str | None = None) -> bool:
        """Process `sid` under its claim; False when another process holds the claim (and `blocking` is False).
        `then`, the id likely to come next, is read ahead while `sid` is edited."""
        try:
            claim = self.run_dir.sample_lock(sid, blocking)
        except UnsafeName as e:  # datasets check their ids; this guards any other source of ids
            self.unsafe[str(sid)] = str(e)
            self._count("failed")
            log.error("%s", e)
            return True
        held_claim = ExitStack()
        if not held_claim.enter_context(claim):
            held_claim.close()
            return False
        try:
            done = self._one(sid, then)
        except BaseException:
            held_claim.close()
            raise
        if done is None:
            held_claim.close()
        elif self._writer is not None:
            self._writer.submit(self._write, done, held_claim)
        else:
            self._write(done, held_claim)
        return True

    def close(self) -> None:
        """Finish what is being written; stop the background threads."""
        for slot in (self._writer, self._reader):
            if slot is not None:
                slot.close()

    def _todo(self, sid: str, quiet: bool = False) -> tuple[bool, ScoreRow | None]:
        """Whether `sid` needs work in this stage, and its old row (None when missing or damaged)."""
        try:
            old = self.run_dir.row(sid)
        except DamagedRow as e:
            if not quiet:
                log.error("%s", e)
            return self.stage == "edit", None  # its costs are lost with it: only stage=edit can redo it
        if self.stage == "edit":
            return old is None or old.status not in ("ok", "nan"), old
        return old is not None and old.status != "failed", old

    def _one(self, sid: str, then: str | None) -> _Done | None:
        todo, old = self._todo(sid)
        if not todo:
            if self.stage == "edit" and old is not None:
                self._count("skipped")
                self._count(old.status)
            return None
        if self.stage == "score" and old.status == "nan":  # nothing to score: NaN in every column of this suite
            return _Done(ScoreRow(sid, "nan", nan_scores(self.suite), old.costs, old.error, old.edit_type, old.info),
                         old)
        return self._process(sid, old, then)

    def _load(self, sid: str, then: str | None) -> EditSample:
        """`sid`'s sample (read ahead when it was `then` last time); starts reading `then`."""
        ahead, self._ahead = self._ahead, None
        sample = ahead[1].result() if ahead is not None else None  # awaited even when unused: one reader at a time
        if ahead is None or ahead[0] != sid or sample is None:
            sample = self.dataset.load(sid)
        if self._reader is not None and then is not None:
            self._ahead = (then, self._reader.submit(self._read_ahead, then))
        return sample

    def _read_ahead(self, sid: str) -> EditSample | None:
        """The sample when it will need work; None when it will not, or when reading it fails (it is then read again
        in the loop, so that its error lands in its row)."""
        try:
            return self.dataset.load(sid) if self._todo(sid, quiet=True)[0] else None
        except Exception:
            return None

    def _process(self, sid: str, old: ScoreRow | None, then: str | None) -> _Done:
        edit_type, info, frames = None, {}, None
        try:
            sample = self._load(sid, then)
            edit_type = sample.edit_type
            if self.stage == "edit":
                out, costs, nonfinite = edit_one(self.method, sample, self.seed, self.device)
                if nonfinite is not None:
                    return _Done(ScoreRow(sid, "nan", nan_scores(self.suite), costs, f"NonFiniteEdit: {nonfinite}",
                                          edit_type), old)
                frames, info = out.frames, plain_info(out.info)
                scored = frames
            else:
                costs, info = old.costs, old.info
                scored = self.run_dir.load_video(sid)
            scores, feats = score_one(self.suite, sample, scored)
            return _Done(ScoreRow(sid, "ok", scores, costs, None, edit_type, info), old, frames, sample.fps, feats)
        except KeyboardInterrupt:
            raise
        except Exception as e:  # one bad sample must not stop the run; an edit that gave frames still saves them
            row = ScoreRow(sid, "failed", {}, old.costs if (old and self.stage == "score") else Costs(),
                           _error(e), edit_type)
            return _Done(row, old, frames, sample.fps if frames is not None else None)

    def _write(self, done: _Done, held_claim: ExitStack) -> None:
        """Save the edit's video and features, then the row; release the claim."""
        with held_claim:
            row = done.row
            try:
                if done.frames is not None:
                    self.run_dir.save_video(row.sample_id, done.frames, done.fps)
                if done.feats and row.status == "ok":
                    self.run_dir.save_features(row.sample_id, done.feats)
            except Exception as e:
                row = ScoreRow(row.sample_id, "failed", {}, row.costs, _error(e), row.edit_type)
            row.suite = self.suite_key if row.status != "failed" else (done.old.suite if done.old else None)
            self.run_dir.write_row(row)
            self._count(row.status)
            if row.status == "failed":
                log.error("sample %s failed: %s", row.sample_id, row.error.splitlines()[-1] if row.error else "?")

    def _count(self, key: str) -> None:
        with self._counting:
            self.counts[key] += 1


def _error(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=6)}"


def plain_info(info: dict[str, Any]) -> dict[str, Any]:
    """A method's `EditedVideo.info` as JSON: numbers, strings, bools, and lists/dicts of them; arrays and
    other objects are left out (they are not what a row is for)."""

    def plain(v: Any) -> Any:
        if isinstance(v, (str, bool, int)) or v is None:
            return v
        if isinstance(v, float):
            return v if math.isfinite(v) else None
        if isinstance(v, np.generic):
            return plain(v.item())
        if isinstance(v, (list, tuple)):
            items = [plain(x) for x in v]
            return None if any(x is _SKIP for x in items) else items
        if isinstance(v, dict):
            return {str(k): p for k, x in v.items() if (p := plain(x)) is not _SKIP}
        return _SKIP

    return plain(dict(info or {}))


_SKIP = object()


def _edit_is_tiny(cfg: DictConfig, method: EditMethod) -> bool:
    """Edits made with tiny random-weight models (reference rows use no models, so theirs never are)."""
    return bool(method.uses_models and cfg.models.get("tiny", False))


def nan_scores(suite: Suite) -> dict[str, float]:
    """A non-finite edit's scores: NaN in every per-video column of the suite (set-level ones go NaN in the summary)."""
    return {c: math.nan for c in suite.columns if c not in _set_columns(suite)}


def _set_columns(suite: Suite) -> set[str]:
    return {c for m in suite.sets.values() for c in m.columns}


def summarize(rows, set_scores: dict[str, float], suite: Suite, label: str, dataset: str, models: str, tiny_models: bool) -> dict[str, Any]:
    """Counts and per-column means over finished samples.

    A column's mean is over the samples that have it (`n_scored` says how many); a sample without it is not
    applicable, not NaN. NaN propagates: one NaN video makes the mean NaN.
    """
    rows = list(rows)
    done = [r for r in rows if r.status in ("ok", "nan")]
    names = sorted({k for r in done for k in r.scores})
    means = {k: float(np.mean([r.scores[k] for r in done if k in r.scores])) for k in names}
    means.update(set_scores)

    def mean_cost(field: str) -> float | None:
        vals = [getattr(r.costs, field) for r in done if getattr(r.costs, field) is not None]
        return _finite(float(np.mean(vals))) if vals else None

    return {
        "dataset": dataset, "method": label, "models": models,
        "tiny": tiny_models or suite.tiny,
        "n": len(rows), "n_ok": sum(r.status == "ok" for r in rows), "n_nan": sum(r.status == "nan" for r in rows),
        "n_failed": sum(r.status == "failed" for r in rows),
        "scores": {k: _finite(v) for k, v in means.items()},
        "n_scored": {k: sum(k in r.scores for r in done) for k in names},
        "suites": dict(Counter(str(r.suite) for r in done)),
        "seconds_per_edit": mean_cost("seconds"), "nfe": mean_cost("nfe"), "peak_mem_mb": mean_cost("peak_mem_mb"),
        "columns": {k: vars(c) for k, c in suite.columns.items()},
        "metric_info": suite.info,
        "failures": {r.sample_id: (r.error or "").splitlines()[0] for r in rows if r.status == "failed"},
    }


def _finite(v: float) -> float | None:
    return v if v is not None and math.isfinite(v) else None
