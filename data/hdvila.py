"""The HD-VILA expert track (paper Table 3): clips the user downloaded, each with an expert's edit of frame 0.

HD-VILA-100M is distributed as metadata (YouTube ids and clip spans), never as video files, so the harness
reads a manifest of clips already on disk (CSV or JSON Lines, paths relative to the manifest):

    clip_id       a unique name, usable as a folder name (no path separator, not `..`, unique ignoring case)
    video         the downloaded video file (a `url` column is kept as provenance only: nothing is fetched)
    start, end    optional span in seconds
    frames        optional explicit frame indices within the span ("0 3 6 ..."), else 14 evenly spaced
    edited        the expert's edit of the selected first frame
    mask          optional: its edited region (white = edited)
    instruction, edit_type, source_prompt, target_prompt    text (edit_type: add_object, change_appearance, ...)

Each row is checked on its own (`read_manifest`; the metadata with `data.schema`); a bad row fails alone,
named by its line. The build (on first use when a manifest is given, or ahead of time with `stage=build`)
cuts each clip to its span, keeps 14 frames, center-crops to 16:9 and resizes to `size`, applies the same
crop and resize to the edited frame and mask when they have the raw video's size (an edited frame already
at 16:9 is only resized), and writes the common layout into `data_dir/hdvila_expert`. A bad clip
(missing, unreadable or truncated video, too few frames, non-RGB edit, mask of the wrong size or empty) is
logged naming the clip and the file and skipped; the build's summary counts it. Files are only read (absolute
paths are fine); nothing is written outside `data_dir/hdvila_expert`.
"""
from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from tqdm import tqdm

from data.folder import BuiltDataset, finish_build, rough_duration, sample_dir
from data.schema import SchemaError, check_meta, is_number
from data.video_io import MediaError, decode_video, read_image, write_image, write_video_lossless
from harness.files import write_json
from harness.names import case_key, check_name
from harness.types import SampleError

log = logging.getLogger("hdvila")

ASPECT = 16 / 9
#: A manifest row's file columns, and those it must have.
PATH_KEYS = ("video", "edited", "mask")
REQUIRED_PATHS = ("video", "edited")
#: Rough seconds to decode, cut and resize one clip, for the log line that starts a build.
SECONDS_PER_CLIP = 2.0


@dataclass
class ManifestRow:
    """One checked manifest row: its 1-based line in the manifest, its clip id, and its fields."""

    line: int
    clip_id: str
    fields: dict[str, Any]
    start: float | None = None
    end: float | None = None
    frames: list[int] | None = None


class _Unreadable(str):
    """A manifest line that could not be parsed; the string says why."""


def _json_lines(path: Path) -> Iterator[tuple[int, Any]]:
    """(line number, value) of each non-blank line; split on "\\n" only, so the numbers are the file's lines."""
    for line, raw in enumerate(path.read_bytes().split(b"\n"), 1):
        if not raw.strip():
            continue
        try:
            yield line, json.loads(raw)
        except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
            yield line, _Unreadable(f"invalid JSON ({e})")


def _csv_rows(path: Path) -> Iterator[tuple[int, Any]]:
    """(line number, row) of each CSV record, empty cells as None (CSV has no null)."""
    with path.open(newline="", encoding="utf-8", errors="strict") as f:
        reader = csv.DictReader(f)
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return
            except (csv.Error, UnicodeDecodeError) as e:
                yield reader.line_num, _Unreadable(f"unreadable CSV ({e})")
                continue
            if None in row:
                yield reader.line_num, _Unreadable(f"has {len(row[None])} more field(s) than the header")
            else:
                yield reader.line_num, {k: (None if v == "" else v) for k, v in row.items()}


def _number(row: dict, key: str) -> float | None:
    v = row.get(key)
    if v is None:
        return None
    try:
        x = float(v) if isinstance(v, str) or is_number(v) else math.nan
    except ValueError:
        x = math.nan
    if not math.isfinite(x) or x < 0:
        raise SchemaError(key, f"must be a number of seconds >= 0, got {type(v).__name__} {v!r}")
    return x


def _frames(v: Any) -> list[int] | None:
    """Explicit frame indices: "0 3 6 ..." (spaces or commas) or, in JSON, a list of integers."""
    if v is None:
        return None
    items = v if isinstance(v, list) else str(v).replace(",", " ").split()
    try:
        if not items or any(isinstance(i, (bool, float)) for i in items):
            raise ValueError
        return [int(i) for i in items]
    except (TypeError, ValueError):
        raise SchemaError("frames", f"must be frame indices (\"0 3 6 ...\" or a list of integers), got {v!r}") from None


def _check_row(record: Any) -> tuple[dict, float | None, float | None, list[int] | None]:
    """A row's fields checked: the edit's metadata (`data.schema`), the file paths, the span and frames."""
    check_meta(record, required=("instruction",))
    for key in PATH_KEYS:
        v = record.get(key)
        if (key in REQUIRED_PATHS or v is not None) and not (isinstance(v, str) and v.strip()):
            raise SchemaError(key, f"must be a path (relative to the manifest), got {v!r}")
    start, end = _number(record, "start"), _number(record, "end")
    if start is not None and end is not None and end <= start:
        raise SchemaError("end", f"must be after start ({start} s), got {end} s")
    return record, start, end, _frames(record.get("frames"))


def read_manifest(path: str | Path) -> tuple[list[ManifestRow], dict[str, str]]:
    """The manifest's usable rows, and the failed ones: clip id (or "line N" when it has no usable one) -> error.

    Each row is checked on its own: its JSON or CSV syntax, that it is an object, its clip_id (a safe folder
    name, unique even ignoring case), its metadata and paths. A bad row fails alone, named by its line.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"dataset.manifest={path}: no such file")
    records = _json_lines(path) if path.suffix.lower() in (".jsonl", ".json") else _csv_rows(path)
    rows, failed, seen = [], {}, {}
    for line, record in records:
        clip_id = None
        try:
            if isinstance(record, _Unreadable):
                raise ValueError(record)
            if not isinstance(record, dict):
                raise ValueError(f"must be a JSON object, got {type(record).__name__}")
            name = check_name(record.get("clip_id"), "clip_id")
            first = seen.get(case_key(name))
            if first is not None:
                same = "duplicate clip_id" if first[0] == name else "clip_id differs only in case from"
                raise ValueError(f"{same} {first[0]!r} on line {first[1]} (its row is kept)")
            seen[case_key(name)] = (name, line)
            clip_id = name
            fields, start, end, frames = _check_row(record)
            rows.append(ManifestRow(line, clip_id, fields, start, end, frames))
        except ValueError as e:  # SchemaError, UnsafeName
            key = clip_id or f"line {line}"
            failed[key] = (str(SampleError(clip_id, f"{path} line {line}", str(e))) if clip_id
                           else f"{path} line {line}: {e}")
            log.error("%s", failed[key])
    return rows, failed


def center_crop_box(h: int, w: int, aspect: float = ASPECT) -> tuple[int, int, int, int]:
    """(top, left, height, width) of the largest centered box of the given aspect ratio (W/H)."""
    if w / h > aspect:
        cw = round(h * aspect)
        return 0, (w - cw) // 2, h, cw
    ch = round(w / aspect)
    return (h - ch) // 2, 0, ch, w


def crop_resize(images: np.ndarray, box: tuple[int, int, int, int], size: tuple[int, int], nearest: bool = False) -> np.ndarray:
    """Crop N×H×W×C uint8 images to `box` and resize to `size` (antialiased bilinear, or nearest for masks)."""
    top, left, ch, cw = box
    x = torch.from_numpy(np.ascontiguousarray(images[:, top : top + ch, left : left + cw])).permute(0, 3, 1, 2).float()
    if nearest:
        y = F.interpolate(x, size=tuple(size), mode="nearest")
    else:
        y = F.interpolate(x, size=tuple(size), mode="bilinear", antialias=True, align_corners=False)
    return y.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


class HDVILAExpert(BuiltDataset):
    """`dataset=hdvila_expert`: reads `data_dir/hdvila_expert`, built from `manifest` on first use (or `stage=build`)."""

    def __init__(self, data_dir: str | Path, manifest: str | None = None, name: str = "hdvila_expert",
                 size: tuple[int, int] = (576, 1024), fps: float = 7.0, **kw):
        super().__init__(Path(data_dir) / name, name=name, **kw)
        self.manifest, self.size, self.fps = manifest, tuple(size), fps

    def build_key(self) -> dict | None:
        """The manifest's path and content digest: a changed manifest is built again (only what is missing)."""
        if not self.manifest:
            return None
        path = Path(self.manifest).resolve()
        if not path.is_file():
            raise FileNotFoundError(f"dataset.manifest={self.manifest}: no such file")
        return {"manifest": str(path), "manifest_sha256": hashlib.sha256(path.read_bytes()).hexdigest()}

    def missing_root(self) -> str:
        if self.manifest:
            return (f"dataset {self.name}: nothing was built into {self.root} from dataset.manifest={self.manifest} "
                    "(every row failed: see the errors logged above)")
        return (f"dataset {self.name}: {self.root} has not been built; give dataset.manifest=FILE (a CSV or JSON "
                "Lines list of your downloaded clips, see the README) to build it")

    def build(self, data_dir: str | Path) -> dict:
        """Build every clip of the manifest not built yet; a bad row or clip is logged (row or clip and file named)
        and counted in the summary's `failed`, and the build goes on."""
        if not self.manifest:
            raise ValueError("dataset=hdvila_expert needs dataset.manifest=FILE (see data/hdvila.py or the README)")
        key = self.build_key()
        rows, failed = read_manifest(self.manifest)
        base = Path(self.manifest).parent
        out_root = Path(data_dir) / self.name
        built, skipped, todo = 0, 0, []
        for row in rows:
            if (out_root / row.clip_id / "meta.json").exists():
                skipped += 1
            else:
                todo.append(row)
        log.info("HD-VILA: building %d of %d clips of %s into %s (%s)", len(todo), len(rows) + len(failed),
                 self.manifest, out_root, rough_duration(len(todo), SECONDS_PER_CLIP))
        for row in tqdm(todo, desc=f"build {self.name}", unit="clip", disable=not todo):
            try:
                self._build_one(row, base, out_root)
                built += 1
            except SampleError as e:
                failed[row.clip_id] = str(e)
                log.error("%s", e)
        summary = {"dataset": self.name, "n_built": built, "n_skipped": skipped, "n_failed": len(failed), "failed": failed}
        mix = edit_type_mix(out_root)
        log.info("built %s: %d new, %d already there, %d failed; edit types (%%):\n%s",
                 out_root, built, skipped, len(failed), mix.to_string())
        return finish_build(out_root, self.name, summary, key)

    def _build_one(self, r: ManifestRow, base: Path, out_root: Path) -> None:
        sid, row, start, end, idx = r.clip_id, r.fields, r.start, r.end, r.frames
        d = sample_dir(out_root, sid)
        video_path = (base / row["video"]).resolve()
        if not video_path.exists():
            raise SampleError(sid, video_path, f"missing video file (download it first; url: {row.get('url') or '?'})")
        _regular_file(sid, video_path)
        if idx is not None and self.num_frames is not None and len(idx) != self.num_frames:
            raise SampleError(sid, video_path, f"frames {idx} must be {self.num_frames} indices within the span")
        if idx is not None:
            pick = {"indices": idx}
        elif self.num_frames is None:
            pick = {}  # every frame of the span
        else:
            pick = {"first" if self.frame_pick == "first" else "num_frames": self.num_frames}
        raw, _ = _media(sid, video_path, decode_video, start, end, **pick)
        if self.num_frames is not None and len(raw) < self.num_frames:
            raise SampleError(sid, video_path, f"span has {len(raw)} frames, needs at least {self.num_frames}")
        h, w = raw.shape[1:3]
        box = center_crop_box(h, w)
        video = crop_resize(raw, box, self.size)

        def fit(path: Path, image: np.ndarray, nearest: bool) -> np.ndarray:
            ih, iw = image.shape[:2]
            if (ih, iw) == (h, w):
                return crop_resize(image[None], box, self.size, nearest)[0]
            if abs(iw / ih - ASPECT) < 0.02:
                return crop_resize(image[None], (0, 0, ih, iw), self.size, nearest)[0]
            raise SampleError(sid, path, f"is {ih}×{iw}: neither the video's {h}×{w} nor 16:9")

        edited_path = _regular_file(sid, (base / row["edited"]).resolve())
        edited = fit(edited_path, _media(sid, edited_path, read_image), False)
        mask = None
        if row.get("mask"):
            mask_path = _regular_file(sid, (base / row["mask"]).resolve())
            raw_mask = _media(sid, mask_path, read_image, allow_gray=True) > 127
            if not raw_mask.any():
                raise SampleError(sid, mask_path, "mask is empty (no pixel above 127)")
            mask = fit(mask_path, raw_mask[..., None].astype(np.uint8) * 255, True)[..., 0] > 127
            if not mask.any():
                raise SampleError(sid, mask_path, "mask is empty after the 16:9 center crop (the region lies outside it)")
        write_video_lossless(d / "source.mkv", video, self.fps)
        write_image(d / "edited.png", edited)
        if mask is not None:
            write_image(d / "mask.png", mask.astype(np.uint8) * 255)
        write_json(d / "meta.json", {  # written last: marks the clip complete
            "instruction": row["instruction"], "edit_type": row.get("edit_type") or None,
            "source_prompt": row.get("source_prompt") or None, "target_prompt": row.get("target_prompt") or None,
            "fps": self.fps,
            "provenance": {"manifest": str(self.manifest), "video": str(video_path), "url": row.get("url"),
                           "start": start, "end": end, "frames": idx, "num_frames": len(video),
                           "frame_pick": None if idx is not None or self.num_frames is None else self.frame_pick,
                           "crop_box": list(box)},
        })


def _media(sid: str, path: Path, read, *args, **kw):
    """`read(path, ...)`, with a media error turned into this sample's error naming that file."""
    try:
        return read(path, *args, **kw)
    except MediaError as e:
        raise SampleError(sid, e.path, e.problem) from e


def _regular_file(sid: str, path: Path) -> Path:
    """`path` when it is missing (the reader says so) or a regular file; a FIFO, device or folder is this
    sample's error, never read (a FIFO would block)."""
    if path.exists() and not path.is_file():
        raise SampleError(sid, path, "is not a regular file (a FIFO, device or folder)")
    return path


def edit_type_mix(root: str | Path) -> pd.Series:
    """Share of each edit type (%) among the built samples under `root`."""
    types = [json.loads(p.read_text()).get("edit_type") or "unknown" for p in sorted(Path(root).glob("*/meta.json"))]
    return (pd.Series(types, dtype=str).value_counts(normalize=True) * 100).round(1).rename("percent")
