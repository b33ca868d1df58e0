"""The HD-VILA expert track (paper Table 3): clips the user downloaded, each with an expert's edit of frame 0.

HD-VILA-100M is distributed as metadata (YouTube ids and clip spans), never as video files, so the harness
reads a manifest of clips already on disk (CSV or JSON Lines, paths relative to the manifest):

    clip_id       a unique name
    video         the downloaded video file (a `url` column is kept as provenance only: nothing is fetched)
    start, end    optional span in seconds
    frames        optional explicit frame indices within the span ("0 3 6 ..."), else 14 evenly spaced
    edited        the expert's edit of the selected first frame
    mask          optional: its edited region (white = edited)
    instruction, edit_type, source_prompt, target_prompt    text (edit_type: add_object, change_appearance, ...)

`stage=build` cuts each clip to its span, keeps 14 frames, center-crops to 16:9 and resizes to `size`, applies
the same crop and resize to the edited frame and mask when they have the raw video's size (an edited frame
already at 16:9 is only resized), and writes the common layout into `data_dir/hdvila_expert`. A bad clip
(missing, unreadable or truncated video, too few frames, non-RGB edit, mask of the wrong size or empty) is
logged naming the clip and the file and skipped; the build's summary counts it.
"""
from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from data.folder import FolderDataset
from data.video_io import MediaError, decode_video, read_image, write_image, write_video_lossless
from harness.files import write_json
from harness.types import SampleError

log = logging.getLogger("hdvila")

ASPECT = 16 / 9


def read_manifest(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"dataset.manifest={path}: no such file")
    if path.suffix.lower() in (".jsonl", ".json"):
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    else:
        with path.open(newline="") as f:
            rows = list(csv.DictReader(f))
    for i, r in enumerate(rows):
        for key in ("clip_id", "video", "edited", "instruction"):
            if not r.get(key):
                raise ValueError(f"{path}: row {i + 1} has no {key!r}")
    return rows


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


class HDVILAExpert(FolderDataset):
    """`dataset=hdvila_expert`: reads `data_dir/hdvila_expert`; `stage=build` prepares it from a manifest."""

    def __init__(self, data_dir: str | Path, manifest: str | None = None, name: str = "hdvila_expert",
                 size: tuple[int, int] = (576, 1024), fps: float = 7.0, **kw):
        super().__init__(Path(data_dir) / name, name=name, **kw)
        self.manifest, self.size, self.fps = manifest, tuple(size), fps

    def build(self, data_dir: str | Path) -> dict:
        """Build every clip of the manifest not built yet; a bad clip is logged (sample and file named) and skipped."""
        if not self.manifest:
            raise ValueError("dataset=hdvila_expert needs dataset.manifest=FILE (see data/hdvila.py or the README)")
        rows = read_manifest(self.manifest)
        base = Path(self.manifest).parent
        out_root = Path(data_dir) / self.name
        built, skipped, failed = 0, 0, {}
        for row in rows:
            if (out_root / row["clip_id"] / "meta.json").exists():
                skipped += 1
                continue
            try:
                self._build_one(row, base, out_root)
                built += 1
            except SampleError as e:
                failed[row["clip_id"]] = str(e)
                log.error("%s", e)
        mix = edit_type_mix(out_root)
        log.info("built %s: %d new, %d already there, %d failed; edit types (%%):\n%s",
                 out_root, built, skipped, len(failed), mix.to_string())
        return {"dataset": self.name, "n_built": built, "n_skipped": skipped, "n_failed": len(failed), "failed": failed}

    def _build_one(self, row: dict, base: Path, out_root: Path) -> None:
        sid = row["clip_id"]
        try:
            start, end = _float(row.get("start")), _float(row.get("end"))
            idx = [int(i) for i in str(row["frames"]).replace(",", " ").split()] if row.get("frames") else None
        except ValueError as e:
            raise SampleError(sid, self.manifest, f"bad start/end/frames in the manifest ({e})") from e
        video_path = (base / row["video"]).resolve()
        if not video_path.is_file():
            raise SampleError(sid, video_path, f"missing video file (download it first; url: {row.get('url') or '?'})")
        if idx is not None and len(idx) != self.num_frames:
            raise SampleError(sid, video_path, f"frames {idx} must be {self.num_frames} indices within the span")
        pick = {"indices": idx} if idx is not None else {"num_frames": self.num_frames}
        raw, _ = _media(sid, video_path, decode_video, start, end, **pick)
        if len(raw) < self.num_frames:
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

        edited_path = (base / row["edited"]).resolve()
        edited = fit(edited_path, _media(sid, edited_path, read_image), False)
        mask = None
        if row.get("mask"):
            mask_path = (base / row["mask"]).resolve()
            raw_mask = _media(sid, mask_path, read_image, allow_gray=True) > 127
            if not raw_mask.any():
                raise SampleError(sid, mask_path, "mask is empty (no pixel above 127)")
            mask = fit(mask_path, raw_mask[..., None].astype(np.uint8) * 255, True)[..., 0] > 127
            if not mask.any():
                raise SampleError(sid, mask_path, "mask is empty after the 16:9 center crop (the region lies outside it)")
        d = out_root / sid
        write_video_lossless(d / "source.mkv", video, self.fps)
        write_image(d / "edited.png", edited)
        if mask is not None:
            write_image(d / "mask.png", mask.astype(np.uint8) * 255)
        write_json(d / "meta.json", {  # written last: marks the clip complete
            "instruction": row["instruction"], "edit_type": row.get("edit_type") or None,
            "source_prompt": row.get("source_prompt") or None, "target_prompt": row.get("target_prompt") or None,
            "fps": self.fps,
            "provenance": {"manifest": str(self.manifest), "video": str(video_path), "url": row.get("url"),
                           "start": start, "end": end, "frames": idx, "crop_box": list(box)},
        })


def _media(sid: str, path: Path, read, *args, **kw):
    """`read(path, ...)`, with a media error turned into this sample's error naming that file."""
    try:
        return read(path, *args, **kw)
    except MediaError as e:
        raise SampleError(sid, e.path, e.problem) from e


def _float(v) -> float | None:
    return None if v in (None, "") else float(v)


def edit_type_mix(root: str | Path) -> pd.Series:
    """Share of each edit type (%) among the built samples under `root`."""
    types = [json.loads(p.read_text()).get("edit_type") or "unknown" for p in sorted(Path(root).glob("*/meta.json"))]
    return (pd.Series(types, dtype=str).value_counts(normalize=True) * 100).round(1).rename("percent")
