"""The MagicBrush-derived video benchmark (paper Table 2).

MagicBrush (Zhang et al. 2023, `osunlp/MagicBrush` on the Hugging Face Hub) gives (source image, edit
instruction, edit mask, edited image) tuples. The paper turns each into a video edit by generating a
source video with SVD image-to-video conditioned on the source image; the MagicBrush edited image is then
the edit of that video's first frame. `stage=build` does exactly this, resumably, and writes the common
layout (see data/folder.py); `dataset=magicbrush` then reads it back.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf
from PIL import Image
from tqdm import tqdm

from data.folder import FolderDataset
from data.video_io import write_image, write_video_lossless
from harness.files import write_json
from harness.types import SampleError

log = logging.getLogger("magicbrush")

#: Column names across MagicBrush revisions: (current, older).
COLUMNS = {"source": ("source_img", "input_img"), "target": ("target_img", "output_img"), "mask": ("mask_img", "mask_img")}


def _column_name(row: dict, kind: str) -> str:
    for name in COLUMNS[kind]:
        if name in row and row[name] is not None:
            return name
    raise KeyError(f"no {kind} image: the columns {' and '.join(dict.fromkeys(COLUMNS[kind]))} are empty or absent")


def _column(row: dict, kind: str) -> Any:
    return row[_column_name(row, kind)]


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


def dataset_provenance(rows) -> dict[str, Any]:
    """What identifies the exact rows loaded: `datasets`' fingerprint, config, version, and the folder read.

    A Hub load is cached under `.../<config>/<version>/<commit sha>/`, so that folder's name is the dataset
    revision actually used; other loads (`raw`) have no commit.
    """
    files = [f["filename"] for f in rows.cache_files]
    folder = Path(files[0]).parent if files else None
    commit = folder.name if folder is not None and re.fullmatch(r"[0-9a-f]{40}", folder.name) else None
    return {"dataset_fingerprint": rows._fingerprint, "dataset_config": rows.info.config_name,
            "dataset_version": str(rows.info.version) if rows.info.version else None,
            "dataset_commit": commit, "dataset_files": str(folder) if folder else None}


def model_provenance(svd, backbone: dict) -> dict[str, Any]:
    """The video model as loaded: repo id, the revision asked for, the folder its weights came from, and
    the commit resolved from that folder when it is a Hugging Face cache snapshot (`.../snapshots/<sha>`)."""
    folder = svd.unet.config.get("_name_or_path")
    folder = Path(folder) if folder else None
    commit = folder.name if folder is not None and folder.parent.name == "snapshots" else None
    return {"video_model": backbone.get("repo_id", "tiny random weights" if backbone.get("tiny") else None),
            "video_model_revision": backbone.get("revision"), "video_model_commit": commit,
            "video_model_path": str(folder) if folder else None, "tiny": bool(svd.tiny)}


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
        self.backbone = OmegaConf.to_container(backbone, resolve=True) if isinstance(backbone, DictConfig) else dict(backbone or {})

    def build(self, data_dir: str | Path) -> dict:
        """Generate one source video per MagicBrush tuple (the first `limit`) with SVD; finished samples are skipped.

        A bad row (missing or undecodable image, empty mask) is logged naming its ids and skipped; the rest go on.
        """
        from videoshop.models import load_svd

        rows = load_raw(self.hub_id, self.split, self.raw, self.revision)
        n = len(rows) if self.limit is None else min(self.limit, len(rows))
        out_root = Path(data_dir) / self.name
        ids = rows.select_columns(["img_id", "turn_index"])[:n]  # only the id columns: no image is decoded
        sids = [f"{img_id}_{turn}" for img_id, turn in zip(ids["img_id"], ids["turn_index"])]
        todo = [i for i in range(n) if not (out_root / sids[i] / "meta.json").exists()]
        summary = {"dataset": self.name, "n_built": 0, "n_skipped": n - len(todo), "n_failed": 0, "failed": {}}
        log.info("MagicBrush %s: %d of %d samples to build into %s", self.split, len(todo), n, out_root)
        if not todo:
            return summary
        svd = load_svd(self.backbone, self.device)
        pipe = svd.pipeline(counted=False)
        provenance = {"source": self.hub_id, "revision": self.revision, "raw": self.raw, "split": self.split,
                      "seed": self.seed, **dataset_provenance(rows), **model_provenance(svd, self.backbone),
                      "settings": self.video}
        for i in tqdm(todo, desc=f"build {self.name}", unit="video"):
            try:
                self._build_one(rows, i, sids[i], out_root, pipe, provenance)
                summary["n_built"] += 1
            except SampleError as e:
                summary["failed"][sids[i]] = str(e)
                log.error("%s", e)
        summary["n_failed"] = len(summary["failed"])
        log.info("MagicBrush %s into %s: %d built, %d already there, %d failed", self.split, out_root,
                 summary["n_built"], summary["n_skipped"], summary["n_failed"])
        return summary

    def _inputs(self, rows, i: int, sid: str) -> tuple[dict, np.ndarray, np.ndarray, np.ndarray, tuple[int, int]]:
        """Row `i` decoded: the row, source and edited images at the video size, and the binary edit mask."""
        where = f"{self.raw or self.hub_id}[{self.split}] row {i}"
        try:
            row = rows[i]
            src_img = _column(row, "source")
            size = tuple(self.video.get("size") or (src_img.height // 64 * 64, src_img.width // 64 * 64))
            source = _rgb(src_img, size)
            target = _rgb(_column(row, "target"), size)
            mask = binary_mask(_column(row, "mask"), size, source, target)
        except KeyError as e:  # from `_column_name`: its message says which columns are empty
            raise SampleError(sid, where, e.args[0]) from e
        except Exception as e:  # image decoders and `datasets` raise many types for a damaged row
            raise SampleError(sid, where, f"cannot read the row ({type(e).__name__}: {e})") from e
        if not mask.any():
            raise SampleError(sid, f"{where} {_column_name(row, 'mask')}", "mask is empty (no transparent pixel, and "
                              "source and edited image do not differ)")
        return row, source, target, mask, size

    def _build_one(self, rows, i: int, sid: str, out_root: Path, pipe, provenance: dict) -> None:
        import torch

        v = self.video
        row, source, target, mask, size = self._inputs(rows, i, sid)
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
        write_json(d / "meta.json", {  # written last: marks the sample complete
            "instruction": row.get("instruction", ""),
            "edit_type": None,
            "fps": float(v.get("fps", 7)),
            "provenance": {**provenance, "row": i, "img_id": str(row["img_id"]), "turn_index": int(row["turn_index"])},
        })
