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
already at 16:9 is only resized), and writes the common layout into `data_dir/hdvila_expert`.
"""
from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import av
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from data.folder import FolderDataset, resample_frames
from data.video_io import read_image, write_image, write_video_lossless
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


def decode_span(path: Path, start: float | None, end: float | None) -> tuple[np.ndarray, float]:
    """Frames (uint8 T×H×W×3) whose timestamps fall in [start, end], and the stream's frame rate."""
    frames = []
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        fps = float(stream.average_rate or 30)
        if start:
            container.seek(int(start / stream.time_base), stream=stream, any_frame=False, backward=True)
        for frame in container.decode(stream):
            t = float(frame.pts * stream.time_base) if frame.pts is not None else None
            if start is not None and t is not None and t < start - 1e-6:
                continue
            if end is not None and t is not None and t > end + 1e-6:
                break
            frames.append(frame.to_ndarray(format="rgb24"))
    if not frames:
        raise ValueError(f"no frames in span [{start}, {end}]")
    return np.stack(frames), fps


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

    def build(self, data_dir: str | Path) -> None:
        if not self.manifest:
            raise ValueError("dataset=hdvila_expert needs dataset.manifest=FILE (see data/hdvila.py or the README)")
        rows = read_manifest(self.manifest)
        base = Path(self.manifest).parent
        out_root = Path(data_dir) / self.name
        failed = 0
        for row in rows:
            if (out_root / row["clip_id"] / "meta.json").exists():
                continue
            try:
                self._build_one(row, base, out_root)
            except SampleError as e:
                failed += 1
                log.error("%s", e)
        mix = edit_type_mix(out_root)
        log.info("built %s: %d clips, %d failed; edit types (%%):\n%s", out_root, len(rows) - failed, failed, mix.to_string())

    def _build_one(self, row: dict, base: Path, out_root: Path) -> None:
        sid = row["clip_id"]
        video_path = (base / row["video"]).resolve()
        if not video_path.is_file():
            raise SampleError(sid, video_path, f"missing video file (download it first; url: {row.get('url') or '?'})")
        try:
            raw, _ = decode_span(video_path, _float(row.get("start")), _float(row.get("end")))
        except Exception as e:
            raise SampleError(sid, video_path, f"cannot decode ({type(e).__name__}: {e})") from e
        if row.get("frames"):
            idx = [int(i) for i in str(row["frames"]).replace(",", " ").split()]
            if len(idx) != self.num_frames or max(idx) >= len(raw):
                raise SampleError(sid, video_path, f"frames {idx} must be {self.num_frames} indices below {len(raw)}")
            raw = raw[idx]
        elif len(raw) < self.num_frames:
            raise SampleError(sid, video_path, f"span has {len(raw)} frames, needs at least {self.num_frames}")
        else:
            raw = resample_frames(raw, self.num_frames)
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
        try:
            edited = fit(edited_path, read_image(edited_path), False)
            mask = None
            if row.get("mask"):
                mask_path = (base / row["mask"]).resolve()
                mask = fit(mask_path, read_image(mask_path, allow_gray=True)[..., None], True)[..., 0] > 127
        except ValueError as e:
            raise SampleError(sid, edited_path, str(e)) from e
        d = out_root / sid
        write_video_lossless(d / "source.mkv", video, self.fps)
        write_image(d / "edited.png", edited)
        if mask is not None:
            write_image(d / "mask.png", mask.astype(np.uint8) * 255)
        write_json(d / "meta.json", {
            "instruction": row["instruction"], "edit_type": row.get("edit_type") or None,
            "source_prompt": row.get("source_prompt") or None, "target_prompt": row.get("target_prompt") or None,
            "fps": self.fps,
            "provenance": {"manifest": str(self.manifest), "video": str(video_path), "url": row.get("url"),
                           "start": _float(row.get("start")), "end": _float(row.get("end")), "crop_box": list(box)},
        })


def _float(v) -> float | None:
    return None if v in (None, "") else float(v)


def edit_type_mix(root: str | Path) -> pd.Series:
    """Share of each edit type (%) among the built samples under `root`."""
    types = [json.loads(p.read_text()).get("edit_type") or "unknown" for p in sorted(Path(root).glob("*/meta.json"))]
    return (pd.Series(types, dtype=str).value_counts(normalize=True) * 100).round(1).rename("percent")
