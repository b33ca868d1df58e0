"""The MagicBrush-derived video benchmark (paper Table 2).

MagicBrush (Zhang et al. 2023, `osunlp/MagicBrush` on the Hugging Face Hub) gives (source image, edit
instruction, edit mask, edited image) tuples. The paper turns each into a video edit by generating a
source video with SVD image-to-video conditioned on the source image; the MagicBrush edited image is then
the edit of that video's first frame. `stage=build` does exactly this, resumably, and writes the common
layout (see data/folder.py); `dataset=magicbrush` then reads it back.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf
from PIL import Image
from tqdm import tqdm

from data.folder import FolderDataset
from data.video_io import write_image, write_video_lossless
from harness.files import write_json

log = logging.getLogger("magicbrush")

#: Column names across MagicBrush revisions: (current, older).
COLUMNS = {"source": ("source_img", "input_img"), "target": ("target_img", "output_img"), "mask": ("mask_img", "mask_img")}


def _column(row: dict, kind: str) -> Any:
    for name in COLUMNS[kind]:
        if name in row and row[name] is not None:
            return row[name]
    raise KeyError(f"MagicBrush row has none of the columns {COLUMNS[kind]} (has {sorted(row)})")


def load_raw(hub_id: str, split: str, raw: str | None = None, revision: str | None = None):
    """The MagicBrush split: from a local copy saved with `datasets` (save_to_disk, or parquet files), else the Hub."""
    import datasets

    if raw:
        raw_path = Path(raw).expanduser()
        if not raw_path.exists():
            raise FileNotFoundError(f"dataset.raw={raw_path}: no such file or folder")
        if (raw_path / "dataset_dict.json").exists() or (raw_path / "state.json").exists():
            ds = datasets.load_from_disk(str(raw_path))
            return ds[split] if isinstance(ds, datasets.DatasetDict) else ds
        files = sorted(str(p) for p in ([raw_path] if raw_path.is_file() else raw_path.rglob(f"{split}*.parquet")))
        if not files:
            raise FileNotFoundError(f"dataset.raw={raw_path}: neither a `save_to_disk` folder nor {split}*.parquet files")
        return datasets.load_dataset("parquet", data_files=files, split="train")
    return datasets.load_dataset(hub_id, split=split, revision=revision)


def binary_mask(mask_img: Image.Image, size: tuple[int, int], source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """MagicBrush ships *masked images*: the edited region is transparent (alpha 0), possibly at another size.

    Without an alpha channel, the region is where source and edited image differ (> 10 grey levels).
    """
    h, w = size
    if mask_img.mode in ("RGBA", "LA") or "transparency" in mask_img.info:
        alpha = np.asarray(mask_img.convert("RGBA").resize((w, h), Image.NEAREST))[..., 3]
        return alpha < 128
    return np.abs(source.astype(int) - target.astype(int)).max(-1) > 10


def _rgb(img: Image.Image, size: tuple[int, int]) -> np.ndarray:
    return np.asarray(img.convert("RGB").resize((size[1], size[0]), Image.BICUBIC))


class MagicBrush(FolderDataset):
    """`dataset=magicbrush`: reads `data_dir/magicbrush`; `stage=build` generates it with SVD."""

    def __init__(self, data_dir: str | Path, name: str = "magicbrush", hub_id: str = "osunlp/MagicBrush",
                 revision: str | None = None, split: str = "dev", raw: str | None = None,
                 video: DictConfig | dict | None = None, backbone: DictConfig | dict | None = None,
                 device: str = "cpu", seed: int = 42, **kw):
        super().__init__(Path(data_dir) / name, name=name, **kw)
        self.hub_id, self.revision, self.split, self.raw = hub_id, revision, split, raw
        self.seed, self.device = seed, device
        self.video = OmegaConf.to_container(video, resolve=True) if isinstance(video, DictConfig) else dict(video or {})
        self.backbone = backbone

    def build(self, data_dir: str | Path) -> None:
        """Generate one source video per MagicBrush tuple (the first `limit`) with SVD; finished samples are skipped."""
        from videoshop.models import load_svd

        rows = load_raw(self.hub_id, self.split, self.raw, self.revision)
        n = len(rows) if self.limit is None else min(self.limit, len(rows))
        out_root = Path(data_dir) / self.name
        todo = [i for i in range(n) if not (out_root / self._sample_id(rows[i]) / "meta.json").exists()]
        log.info("MagicBrush %s: %d of %d samples to build into %s", self.split, len(todo), n, out_root)
        if not todo:
            return
        svd = load_svd(self.backbone, self.device)
        pipe = svd.pipeline(counted=False)
        for i in tqdm(todo, desc=f"build {self.name}", unit="video"):
            self._build_one(rows[i], out_root, pipe, svd)

    @staticmethod
    def _sample_id(row: dict) -> str:
        return f"{row['img_id']}_{int(row['turn_index'])}"

    def _build_one(self, row: dict, out_root: Path, pipe, svd) -> None:
        import torch

        sid = self._sample_id(row)
        v = self.video
        src_img = _column(row, "source")
        size = tuple(v.get("size") or (src_img.height // 64 * 64, src_img.width // 64 * 64))
        source = _rgb(src_img, size)
        target = _rgb(_column(row, "target"), size)
        mask = binary_mask(_column(row, "mask"), size, source, target)
        generator = torch.Generator("cpu").manual_seed(self.seed)
        frames = pipe(
            Image.fromarray(source), height=size[0], width=size[1], num_frames=v.get("num_frames", 14),
            num_inference_steps=v.get("steps", 25), min_guidance_scale=v.get("min_guidance_scale", 1.0),
            max_guidance_scale=v.get("max_guidance_scale", 3.0), fps=v.get("fps", 7),
            motion_bucket_id=v.get("motion_bucket_id", 127), noise_aug_strength=v.get("noise_aug_strength", 0.02),
            decode_chunk_size=v.get("decode_chunk_size", 8), generator=generator, output_type="np",
        ).frames[0]
        video = (np.clip(np.asarray(frames), 0, 1) * 255 + 0.5).astype(np.uint8)
        video[0] = source  # the benchmark's frame 0 is the MagicBrush source image itself
        d = out_root / sid
        write_video_lossless(d / "source.mkv", video, float(v.get("fps", 7)))
        write_image(d / "edited.png", target)
        write_image(d / "mask.png", mask.astype(np.uint8) * 255)
        backbone = OmegaConf.to_container(self.backbone, resolve=True) if isinstance(self.backbone, DictConfig) else dict(self.backbone or {})
        write_json(d / "meta.json", {  # written last: marks the sample complete
            "instruction": row.get("instruction", ""),
            "edit_type": None,
            "fps": float(v.get("fps", 7)),
            "provenance": {
                "source": self.hub_id, "revision": self.revision, "raw": self.raw, "split": self.split,
                "img_id": str(row["img_id"]), "turn_index": int(row["turn_index"]), "seed": self.seed,
                "video_model": backbone.get("repo_id", "tiny random weights" if backbone.get("tiny") else None),
                "video_model_revision": backbone.get("revision"), "tiny": bool(svd.tiny), "settings": v,
            },
        })
