"""The common on-disk layout that every dataset ends up in, and its loader (`dataset=folder`).

    ROOT/<sample_id>/
        source.mp4 | .mkv | .webm | .avi | .mov | .gif | source/ (image frames, sorted by name)
        edited.png            the edited first frame (any image format; RGB, the video's size)
        mask.png              optional: the edited region of frame 0 (white = edited)
        meta.json             optional: instruction, source_prompt, target_prompt, edit_type, fps, provenance
                              (checked by `data.schema.check_meta`; other keys pass through)
        truth/                optional ground truth (the sample track has it)
            video.mkv         the correctly edited video
            masks.npz         `masks`: bool T×H×W, the edited region in every frame
            flow.npz          `flow`: (T-1)×H×W×2 forward flow of the source, `valid`: where it is exact

A sample id is its folder's name and becomes a folder of the results, so it is checked with `harness.names`:
an unsafe name is left out (logged), a folder that is a link to somewhere outside ROOT or whose name differs
only in case from an earlier one fails that sample. Builders write `BUILD_MARKER` into ROOT when they finish.
"""
from __future__ import annotations

import json
import logging
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from data.base import EditDataset
from data.schema import SchemaError, check_meta
from data.video_io import IMAGE_SUFFIXES, PICKS, VIDEO_SUFFIXES, MediaError, evenly_spaced, read_image, read_video
from harness.files import clean_stale_temps, write_json
from harness.names import case_collisions, is_inside, name_problem
from harness.types import EditSample, GroundTruth, SampleError

log = logging.getLogger("data")

#: The frame rate of a sample whose meta.json gives none.
DEFAULT_FPS = 7.0
#: The `EditSample.meta` key that holds the sample's folder (set by the loader, whatever meta.json says), so that
#: files beside it, such as `baselines.prompts`' prompts.json, can be found.
SAMPLE_DIR_KEY = "_sample_dir"


def resample_frames(video: np.ndarray, num_frames: int) -> np.ndarray:
    """Keep `num_frames` frames spread evenly over the clip, first and last included (rounded indices)."""
    return video[evenly_spaced(len(video), num_frames)]


def _find(sample_dir: Path, stem: str, suffixes: tuple[str, ...], folder_ok: bool = False) -> Path | None:
    for s in suffixes:
        for cand in (sample_dir / f"{stem}{s}", sample_dir / f"{stem}{s.upper()}"):
            if cand.is_file():
                return cand
    if folder_ok and (sample_dir / stem).is_dir():
        return sample_dir / stem
    return None


def sample_dir(root: Path, sid: str) -> Path:
    """`root / sid`, once `sid` is a safe folder name and that folder, links resolved, lies inside `root`."""
    problem = name_problem(sid)
    if problem is not None:
        raise SampleError(sid, root, f"sample id {problem}; it cannot be a folder name")
    d = root / sid
    if not is_inside(d, root):
        raise SampleError(sid, d, f"is a link to {d.resolve()}, outside the dataset folder {root}")
    return d


def read_meta(sid: str, path: Path) -> dict:
    """A sample's meta.json checked against `data.schema` ({} when there is none)."""
    if not path.exists() and not path.is_symlink():
        return {}
    if not path.is_file():
        raise SampleError(sid, path, "is not a regular file")
    try:
        meta = json.loads(path.read_bytes())
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
        raise SampleError(sid, path, f"invalid JSON ({e})") from e
    try:
        return check_meta(meta)
    except SchemaError as e:
        raise SampleError(sid, path, str(e)) from e


class FolderDataset(EditDataset):
    """Reads samples laid out as in this module's docstring; validates every file it reads."""

    def __init__(self, root: str | Path, name: str = "folder", num_frames: int | None = 14, frame_pick: str = "even",
                 **kw):
        super().__init__(name, **kw)
        if root is None:
            raise ValueError("dataset=folder needs dataset.root=DIR (a folder laid out as in the README)")
        if num_frames is not None and (not isinstance(num_frames, int) or isinstance(num_frames, bool) or num_frames < 1):
            raise ValueError(f"dataset.num_frames must be a positive integer or null (every frame), got {num_frames!r}")
        if frame_pick not in PICKS:
            raise ValueError(f"dataset.frame_pick must be one of {', '.join(PICKS)}, got {frame_pick!r}")
        self.root = Path(root)
        #: frames kept per clip (None: all of them), and how: evenly spaced over the clip or the first ones
        self.num_frames, self.frame_pick = num_frames, frame_pick
        #: Sample folders left out of `all_ids` because their name cannot be a folder of the results: name -> why.
        self.unlisted: dict[str, str] = {}
        self._case_twins: dict[str, str] | None = None

    def all_ids(self) -> list[str]:
        """The sample folders' names, sorted ([] for an empty folder); `FileNotFoundError` when ROOT is missing."""
        if not self.root.is_dir():
            raise FileNotFoundError(self.missing_root())
        return self._listing()

    def missing_root(self) -> str:
        """What to tell the user when ROOT is missing."""
        return f"dataset.root={self.root}: no such folder"

    def _listing(self) -> list[str]:
        """Sorted sample folder names; unsafe ones are logged and left out, case-insensitive twins remembered."""
        ids, self.unlisted = [], {}
        for name in sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith((".", "_"))):
            problem = name_problem(name)
            if problem is None:
                ids.append(name)
            else:
                self.unlisted[name] = problem
                log.error("dataset %s: sample folder %r in %s left out: its name %s", self.name, name, self.root, problem)
        self._case_twins = case_collisions(ids)
        return ids

    def load(self, sample_id: str) -> EditSample:
        d = sample_dir(self.root, sample_id)
        if self._case_twins is None and self.root.is_dir():
            self._listing()
        twin = (self._case_twins or {}).get(sample_id)
        if twin is not None:
            raise SampleError(sample_id, d, f"differs only in case from sample {twin!r}: the two would share one "
                              "folder on a case-insensitive filesystem")
        try:
            return self._load(sample_id, d)
        except MediaError as e:
            raise SampleError(sample_id, e.path, e.problem) from e

    def _load(self, sid: str, d: Path) -> EditSample:
        src_path = _find(d, "source", VIDEO_SUFFIXES, folder_ok=True)
        if src_path is None:
            raise SampleError(sid, d / "source.mp4", "missing source video (source.mp4/.mkv/.gif/... or source/ frames)")
        source = read_video(src_path, self.num_frames, self.frame_pick)
        if self.num_frames is not None and len(source) < self.num_frames:
            raise SampleError(sid, src_path, f"has {len(source)} frames, needs at least {self.num_frames}")

        edit_path = _find(d, "edited", IMAGE_SUFFIXES)
        if edit_path is None:
            raise SampleError(sid, d / "edited.png", "missing edited first frame")
        edited = read_image(edit_path)
        if edited.shape != source.shape[1:]:
            raise SampleError(sid, edit_path, f"is {edited.shape[0]}×{edited.shape[1]} but the video is {source.shape[1]}×{source.shape[2]}")

        mask = None
        mask_path = _find(d, "mask", IMAGE_SUFFIXES)
        if mask_path is not None:
            m = read_image(mask_path, allow_gray=True)
            if m.shape != source.shape[1:3]:
                raise SampleError(sid, mask_path, f"is {m.shape[0]}×{m.shape[1]} but the video is {source.shape[1]}×{source.shape[2]}")
            mask = m > 127
            if not mask.any():
                raise SampleError(sid, mask_path, "mask is empty (no pixel above 127)")

        meta = {**read_meta(sid, d / "meta.json"), SAMPLE_DIR_KEY: str(d)}

        return EditSample(
            id=sid,
            source=source,
            edited_frame=edited,
            mask=mask,
            instruction=meta.get("instruction") or "",
            source_prompt=meta.get("source_prompt"),
            target_prompt=meta.get("target_prompt"),
            edit_type=meta.get("edit_type"),
            truth=self._truth(sid, d / "truth", source),
            fps=float(meta.get("fps") or DEFAULT_FPS),
            meta=meta,
        )

    def _truth(self, sid: str, d: Path, source: np.ndarray) -> GroundTruth | None:
        if not d.is_dir():
            return None
        truth = GroundTruth()
        vid = _find(d, "video", VIDEO_SUFFIXES, folder_ok=True)
        if vid is not None:
            truth.video = read_video(vid)
            if truth.video.shape != source.shape:
                raise SampleError(sid, vid, f"ground-truth video {truth.video.shape} differs from the source {source.shape}")
        for name, keys in (("masks.npz", ("masks",)), ("flow.npz", ("flow", "valid"))):
            if (d / name).is_file():
                try:
                    with np.load(d / name) as z:
                        arrays = [z[k] for k in keys]
                except Exception as e:  # np.load raises many types for a damaged or incomplete file
                    raise SampleError(sid, d / name, f"cannot read the arrays {keys} ({type(e).__name__}: {e})") from e
                if name == "masks.npz":
                    truth.masks = arrays[0].astype(bool)
                else:
                    truth.flow, truth.flow_valid = arrays[0].astype(np.float32), arrays[1].astype(bool)
        return truth


#: Written into a built dataset's root when a build finishes: what it was built from and how it went.
BUILD_MARKER = "_build.json"


def read_marker(root: Path) -> dict | None:
    """The marker of the last finished build in `root`, None when there is none (or it is unreadable)."""
    try:
        marker = json.loads((root / BUILD_MARKER).read_text())
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) else None


def finish_build(root: Path, name: str, summary: dict, key: dict) -> dict:
    """End a build: write the marker (`key` plus the counts) when anything is usable, else log that every row
    failed, so that a build with nothing to show is never mistaken for a finished one. Returns `summary`."""
    if summary["n_built"] + summary["n_skipped"] == 0:
        why = f"every row failed ({summary['n_failed']})" if summary["n_failed"] else "there were no rows"
        log.error("dataset %s: %s; nothing was built into %s", name, why, root)
    else:
        write_json(root / BUILD_MARKER, {
            **key, "n_built": summary["n_built"], "n_skipped": summary["n_skipped"], "n_failed": summary["n_failed"],
            "failed": sorted(summary["failed"]), "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        })
    return summary


def rough_duration(n: int, seconds_each: float) -> str:
    """`n` items at `seconds_each`, in words ("about 12 min"), for a log line that sets expectations."""
    s = n * seconds_each
    if s < 60:
        return f"about {s:.0f} s"
    return f"about {s / 60:.0f} min" if s < 3600 else f"about {s / 3600:.1f} h"


class BuiltDataset(FolderDataset):
    """A folder dataset that a builder writes into `data_dir/<name>`: `all_ids` builds it on first use when
    `BUILD_MARKER` is missing or was written for another source (see `build_key` and `serves`)."""

    def build_key(self) -> dict | None:
        """What a finished build must have been made from to serve this config; None when this config cannot
        build (then an existing folder is read as it is)."""
        raise NotImplementedError

    def serves(self, marker: dict, key: dict) -> bool:
        """Whether the finished build described by `marker` serves this config."""
        return all(marker.get(k) == v for k, v in key.items())

    def all_ids(self) -> list[str]:
        key = self.build_key()
        marker = read_marker(self.root)
        if key is not None and (marker is None or not self.serves(marker, key)):
            log.warning("dataset %s: %s holds no finished build of %s: building it now (`stage=build` builds ahead "
                        "of time)", self.name, self.root, key)
            clean_stale_temps(self.root)
            self.build(self.root.parent)
        return super().all_ids()
