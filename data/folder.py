"""The common on-disk layout that every dataset ends up in, and its loader (`dataset=folder`).

    ROOT/<sample_id>/
        source.mp4 | .mkv | .webm | .avi | .mov | .gif | source/ (image frames, sorted by name)
        edited.png            the edited first frame (any image format; RGB, the video's size)
        mask.png              optional: the edited region of frame 0 (white = edited)
        meta.json             optional: instruction, source_prompt, target_prompt, edit_type, fps, provenance
        truth/                optional ground truth (the sample track has it)
            video.mkv         the correctly edited video
            masks.npz         `masks`: bool T×H×W, the edited region in every frame
            flow.npz          `flow`: (T-1)×H×W×2 forward flow of the source, `valid`: where it is exact
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from data.base import EditDataset
from data.video_io import IMAGE_SUFFIXES, VIDEO_SUFFIXES, MediaError, read_image, read_video
from harness.types import EditSample, GroundTruth, SampleError


def resample_frames(video: np.ndarray, num_frames: int) -> np.ndarray:
    """Keep `num_frames` frames spread evenly over the clip, first and last included (rounded indices)."""
    idx = np.round(np.linspace(0, len(video) - 1, num_frames)).astype(int)
    return video[idx]


def _find(sample_dir: Path, stem: str, suffixes: tuple[str, ...], folder_ok: bool = False) -> Path | None:
    for s in suffixes:
        for cand in (sample_dir / f"{stem}{s}", sample_dir / f"{stem}{s.upper()}"):
            if cand.is_file():
                return cand
    if folder_ok and (sample_dir / stem).is_dir():
        return sample_dir / stem
    return None


class FolderDataset(EditDataset):
    """Reads samples laid out as in this module's docstring; validates every file it reads."""

    def __init__(self, root: str | Path, name: str = "folder", num_frames: int = 14, **kw):
        super().__init__(name, **kw)
        if root is None:
            raise ValueError("dataset=folder needs dataset.root=DIR (a folder laid out as in the README)")
        self.root = Path(root)
        self.num_frames = num_frames

    def all_ids(self) -> list[str]:
        if not self.root.is_dir():
            raise FileNotFoundError(
                f"dataset {self.name!r}: no folder {self.root} (a dataset that needs building: "
                f"`python run.py stage=build dataset={self.name}` first)"
            )
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith((".", "_")))

    def load(self, sample_id: str) -> EditSample:
        d = self.root / sample_id
        try:
            return self._load(sample_id, d)
        except MediaError as e:
            raise SampleError(sample_id, e.path, e.problem) from e

    def _load(self, sid: str, d: Path) -> EditSample:
        src_path = _find(d, "source", VIDEO_SUFFIXES, folder_ok=True)
        if src_path is None:
            raise SampleError(sid, d / "source.mp4", "missing source video (source.mp4/.mkv/.gif/... or source/ frames)")
        source = read_video(src_path, self.num_frames)
        if len(source) < self.num_frames:
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

        meta = {}
        if (d / "meta.json").is_file():
            try:
                meta = json.loads((d / "meta.json").read_text())
            except json.JSONDecodeError as e:
                raise SampleError(sid, d / "meta.json", f"invalid JSON ({e})") from e

        return EditSample(
            id=sid,
            source=source,
            edited_frame=edited,
            mask=mask,
            instruction=meta.get("instruction", ""),
            source_prompt=meta.get("source_prompt"),
            target_prompt=meta.get("target_prompt"),
            edit_type=meta.get("edit_type"),
            truth=self._truth(sid, d / "truth", source),
            fps=float(meta.get("fps", 7.0)),
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
