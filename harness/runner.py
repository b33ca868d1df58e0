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
import traceback
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from harness.cache import instantiate_cached
from harness.method import EditMethod, NonFiniteEdit
from harness.metric import Column, SetMetric, VideoMetric
from harness.results import RunDir
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
    """The method's name in tables and folders: `tag` if given, else its name plus any `method.*` overrides."""
    if cfg.get("tag"):
        return str(cfg.tag)
    extra = sorted(o.split("method.", 1)[1] for o in overrides if o.lstrip("+~").startswith("method."))
    return str(cfg.method.name) + (f"[{','.join(extra)}]" if extra else "")


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
    """Run one edit and measure it; a non-finite result comes back as the error, with its costs."""
    _peak_memory_reset(device)
    t0 = time.perf_counter()
    out, nonfinite = None, None
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
    wall = time.perf_counter() - t0
    seconds = out.seconds if out is not None and out.seconds is not None else wall
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
    for m in suite.video.values():
        scores.update({k: float(v) for k, v in m.score(sample, frames).items()})
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

    Where and how things run or are stored (device, threads, data_dir, a local weights folder) and which part of
    the dataset a job takes (shard, limit) do not change a sample's edit, so a run may resume elsewhere or in parts.
    """

    def strip(x: Any, drop: set[str]) -> Any:
        if isinstance(x, dict):
            return {k: strip(v, drop) for k, v in x.items() if k not in drop}
        return [strip(v, drop) for v in x] if isinstance(x, list) else x

    def plain(node: DictConfig, drop: set[str]) -> dict[str, Any]:
        return strip(OmegaConf.to_container(node, resolve=True), drop | {"device"})

    d: dict[str, Any] = {
        "method": plain(cfg.method, {"root"}),
        "dataset": plain(cfg.dataset, {"data_dir", "shard", "num_shards", "limit"}),
        "seed": cfg.seed,
    }
    if uses_models:
        d["models"] = plain(cfg.models, {"root"})
    return d


def run_dir_for(cfg: DictConfig, label: str) -> RunDir:
    return RunDir(Path(cfg.results_dir) / str(cfg.dataset.name) / str(cfg.models.name) / label)


def run(cfg: DictConfig, overrides: list[str] = ()) -> dict[str, Any]:
    """Edit (stage=edit) or re-score (stage=score) every sample of the dataset; returns the run's summary."""
    stage = cfg.stage
    device = cfg.device
    dataset = instantiate_cached(cfg.dataset)
    method: EditMethod = instantiate_cached(cfg.method)
    suite = load_suite(cfg)
    label = method_label(cfg, overrides)
    run_dir = run_dir_for(cfg, label)

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
    elif not (run_dir.root / "run.json").exists():
        raise FileNotFoundError(f"stage=score: no edits to score in {run_dir.root} (run stage=edit first)")

    ids = dataset.ids()
    counts = {"ok": 0, "nan": 0, "failed": 0, "skipped": 0}
    bar = tqdm(ids, desc=f"{stage} {label} on {dataset.name}", unit="video", dynamic_ncols=True)
    for sid in bar:
        old = run_dir.row(sid)
        if stage == "edit" and old is not None and old.status in ("ok", "nan"):
            counts["skipped"] += 1
            counts[old.status] += 1
            continue
        if stage == "score" and (old is None or old.status != "ok"):
            continue
        row = _process(stage, sid, dataset, method, suite, run_dir, cfg.seed, device, old)
        run_dir.write_row(row)
        counts[row.status] += 1
        bar.set_postfix(failed=counts["failed"], nan=counts["nan"])
        if row.status == "failed":
            log.error("sample %s failed: %s", sid, row.error.splitlines()[-1] if row.error else "?")

    rows = {r.sample_id: r for r in run_dir.rows() if r.sample_id in set(ids)}
    ok_ids = [sid for sid, r in rows.items() if r.status == "ok"]
    set_scores = _set_scores(suite, run_dir, ok_ids) if ok_ids else {}
    if any(r.status == "nan" for r in rows.values()):  # a set-level score over part of the set would mislead
        set_scores = {c: math.nan for c in _set_columns(suite)}
    summary = summarize(rows.values(), set_scores, suite, label, str(dataset.name), str(cfg.models.name), _edit_is_tiny(cfg, method))
    summary.update({"finished": datetime.now(timezone.utc).isoformat(timespec="seconds"), "skipped": counts["skipped"]})
    run_dir.write_summary(summary)
    log.info("%s on %s: %d ok, %d NaN, %d failed, %d already done -> %s", label, dataset.name,
             counts["ok"], counts["nan"], counts["failed"], counts["skipped"], run_dir.root)
    return summary


def _process(stage, sid, dataset, method, suite, run_dir, seed, device, old: ScoreRow | None) -> ScoreRow:
    edit_type, info = None, {}
    try:
        sample = dataset.load(sid)
        edit_type = sample.edit_type
        if stage == "edit":
            out, costs, nonfinite = edit_one(method, sample, seed, device)
            if nonfinite is not None:
                nan_scores = {c: math.nan for c in suite.columns if c not in _set_columns(suite)}
                return ScoreRow(sid, "nan", nan_scores, costs, f"NonFiniteEdit: {nonfinite}", edit_type)
            frames, info = out.frames, plain_info(out.info)
            run_dir.save_video(sid, frames, sample.fps)
        else:
            frames, costs, info = run_dir.load_video(sid), old.costs, old.info
        scores, feats = score_one(suite, sample, frames)
        if feats:
            run_dir.save_features(sid, feats)
        return ScoreRow(sid, "ok", scores, costs, None, edit_type, info)
    except KeyboardInterrupt:
        raise
    except Exception as e:  # one bad sample must not stop the run
        return ScoreRow(sid, "failed", {}, old.costs if (old and stage == "score") else Costs(),
                        f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=6)}", edit_type)


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


def _set_columns(suite: Suite) -> set[str]:
    return {c for m in suite.sets.values() for c in m.columns}


def summarize(rows, set_scores: dict[str, float], suite: Suite, label: str, dataset: str, models: str, tiny_models: bool) -> dict[str, Any]:
    """Counts and per-column means over finished samples. NaN propagates: one NaN video makes the mean NaN."""
    rows = list(rows)
    done = [r for r in rows if r.status in ("ok", "nan")]
    names = sorted({k for r in done for k in r.scores})
    means = {k: float(np.mean([r.scores.get(k, math.nan) for r in done])) for k in names}
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
        "seconds_per_edit": mean_cost("seconds"), "nfe": mean_cost("nfe"), "peak_mem_mb": mean_cost("peak_mem_mb"),
        "columns": {k: vars(c) for k, c in suite.columns.items()},
        "metric_info": suite.info,
        "failures": {r.sample_id: (r.error or "").splitlines()[0] for r in rows if r.status == "failed"},
    }


def _finite(v: float) -> float | None:
    return v if v is not None and math.isfinite(v) else None
