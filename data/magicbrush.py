"""The MagicBrush-derived video benchmark (paper Table 2).

MagicBrush (Zhang et al. 2023, `osunlp/MagicBrush` on the Hugging Face Hub) gives (source image, edit
instruction, edit mask, edited image) tuples. The paper turns each into a video edit by generating a
source video with SVD image-to-video conditioned on the source image; the MagicBrush edited image is then
the edit of that video's first frame. `stage=build` does exactly this, resumably, and writes the common
layout (see data/folder.py); `dataset=magicbrush` then reads it back, building it first when the folder holds
no finished build of this split and limit (`data.folder.BUILD_MARKER`).

Row ids become folder names, so `img_id` and `turn_index` are checked (`sample_id`) and a bad or repeated id
fails that row alone; a copy without MagicBrush's columns is one error before any model is loaded.
"""
from __future__ import annotations

import contextlib
import logging
import re
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf
from PIL import Image
from tqdm import tqdm

from data.folder import BuiltDataset, finish_build, rough_duration, sample_dir
from data.schema import SchemaError, check_meta
from data.video_io import write_image, write_video_lossless
from harness.files import write_json
from harness.names import case_key, check_name
from harness.types import SampleError

log = logging.getLogger("magicbrush")

#: Column names across MagicBrush revisions: (current, older).
COLUMNS = {"source": ("source_img", "input_img"), "target": ("target_img", "output_img"), "mask": ("mask_img", "mask_img")}
ID_COLUMNS = ("img_id", "turn_index")
#: Rough seconds to generate one source video (14 frames, 25 steps, 512×512), by device kind, and with tiny
#: random weights on any device: what the log line that starts a build says to expect.
SECONDS_PER_VIDEO = {"cuda": 30.0, "mps": 300.0, "cpu": 1200.0}
SECONDS_PER_TINY_VIDEO = 0.5


def check_columns(names: list[str], where: str) -> None:
    """One `ValueError` naming `where` when the rows lack MagicBrush's id columns or image columns."""
    missing = [c for c in ID_COLUMNS if c not in names]
    missing += [" or ".join(dict.fromkeys(cols)) for cols in COLUMNS.values() if not any(c in names for c in cols)]
    if missing:
        raise ValueError(f"{where}: not MagicBrush's columns: no {', '.join(missing)} (it has {', '.join(names)})")


def sample_id(img_id: Any, turn_index: Any) -> str:
    """A row's sample id `<img_id>_<turn_index>`; `ValueError` (`UnsafeName`) saying which part is unusable."""
    if isinstance(img_id, bool) or not isinstance(img_id, (str, int)):
        raise ValueError(f"img_id {img_id!r} must be a string or an integer")
    if isinstance(turn_index, bool) or not (isinstance(turn_index, int) or re.fullmatch(r"[0-9]+", str(turn_index))):
        raise ValueError(f"turn_index {turn_index!r} must be a non-negative integer")
    check_name(str(img_id), "img_id")
    return check_name(f"{img_id}_{turn_index}", "sample id")


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
    from harness.weights import hub_reachable

    if hub_reachable():
        return datasets.load_dataset(hub_id, split=split, revision=revision)
    with _hub_offline():
        try:
            return datasets.load_dataset(hub_id, split=split, revision=revision)
        except OSError as e:  # ConnectionError; FileNotFoundError, DatasetNotFoundError
            raise ConnectionError(
                f"{hub_id}: the Hugging Face hub is unreachable and split {split!r} is not in the `datasets` cache "
                f"({type(e).__name__}: {e}). Where the hub is reachable, save a copy with "
                f"datasets.load_dataset({hub_id!r}).save_to_disk(DIR) and pass dataset.raw=DIR"
            ) from e


@contextlib.contextmanager
def _hub_offline():
    """`datasets` and `huggingface_hub` in offline mode (cache only, no retries), as HF_HUB_OFFLINE=1 would set
    them at import; both read these module flags at call time, so the mode holds for this block only."""
    import datasets.config
    import huggingface_hub.constants

    flags = [(datasets.config, "HF_HUB_OFFLINE"), (datasets.config, "HF_DATASETS_OFFLINE"),
             (huggingface_hub.constants, "HF_HUB_OFFLINE")]
    saved = [getattr(mod, attr) for mod, attr in flags]
    for mod, attr in flags:
        setattr(mod, attr, True)
    try:
        yield
    finally:
        for (mod, attr), value in zip(flags, saved):
            setattr(mod, attr, value)


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


class MagicBrush(BuiltDataset):
    """`dataset=magicbrush`: reads `data_dir/magicbrush`, generated with SVD on first use (or by `stage=build`)."""

    def __init__(self, data_dir: str | Path, name: str = "magicbrush", hub_id: str = "osunlp/MagicBrush",
                 revision: str | None = None, split: str = "dev", raw: str | None = None,
                 video: DictConfig | dict | None = None, backbone: DictConfig | dict | None = None,
                 device: str = "cpu", seed: int = 42, **kw):
        super().__init__(Path(data_dir) / name, name=name, **kw)
        self.hub_id, self.revision, self.split, self.raw = hub_id, revision, split, raw
        self.seed, self.device = seed, device
        self.video = OmegaConf.to_container(video, resolve=True) if isinstance(video, DictConfig) else dict(video or {})
        self.backbone = OmegaConf.to_container(backbone, resolve=True) if isinstance(backbone, DictConfig) else dict(backbone or {})

    def build_key(self) -> dict:
        """Where the rows come from, the split, and `limit` (a build of more rows serves a smaller limit)."""
        return {"source": str(self.raw or self.hub_id), "revision": self.revision, "split": self.split, "limit": self.limit}

    def serves(self, marker: dict, key: dict) -> bool:
        built_limit = marker.get("limit")
        return (super().serves(marker, {k: v for k, v in key.items() if k != "limit"})
                and (built_limit is None or (self.limit is not None and self.limit <= built_limit)))

    def missing_root(self) -> str:
        return f"dataset {self.name}: nothing was built into {self.root} (every row failed: see the errors logged above)"

    def build(self, data_dir: str | Path) -> dict:
        """Generate one source video per MagicBrush tuple (the first `limit`) with SVD; finished samples are skipped.

        A bad row (unusable or repeated id, missing or undecodable image, empty mask) is logged naming its ids and
        counted in the summary's `failed` (by sample id, or "row N" when its id is unusable); the rest go on.
        """
        from videoshop.models import load_svd

        rows = load_raw(self.hub_id, self.split, self.raw, self.revision)
        where = f"{self.raw or self.hub_id}[{self.split}]"
        check_columns(list(rows.column_names), where)
        n = len(rows) if self.limit is None else min(self.limit, len(rows))
        out_root = Path(data_dir) / self.name
        summary = {"dataset": self.name, "n_built": 0, "n_skipped": 0, "n_failed": 0, "failed": {}}
        sids = self._row_ids(rows.select_columns(list(ID_COLUMNS))[:n], where, summary["failed"])  # no image decoded
        todo = {i: sid for i, sid in sids.items() if not (out_root / sid / "meta.json").exists()}
        summary["n_skipped"] = len(sids) - len(todo)
        tiny = bool(self.backbone.get("tiny"))
        each = SECONDS_PER_TINY_VIDEO if tiny else SECONDS_PER_VIDEO.get(str(self.device).split(":")[0], SECONDS_PER_VIDEO["cpu"])
        log.info("MagicBrush %s: building %d of %d samples into %s with %s SVD on %s: roughly %g s per video, %s in all",
                 self.split, len(todo), n, out_root, "tiny random" if tiny else "real", self.device, each,
                 rough_duration(len(todo), each))
        if todo:
            svd = load_svd(self.backbone, self.device)
            pipe = svd.pipeline(counted=False)
            provenance = {"source": self.hub_id, "revision": self.revision, "raw": self.raw, "split": self.split,
                          "seed": self.seed, **dataset_provenance(rows), **model_provenance(svd, self.backbone),
                          "settings": self.video}
            for i, sid in tqdm(todo.items(), desc=f"build {self.name}", unit="video"):
                try:
                    self._build_one(rows, i, sid, out_root, pipe, provenance)
                    summary["n_built"] += 1
                except SampleError as e:
                    summary["failed"][sid] = str(e)
                    log.error("%s", e)
        summary["n_failed"] = len(summary["failed"])
        log.info("MagicBrush %s into %s: %d built, %d already there, %d failed", self.split, out_root,
                 summary["n_built"], summary["n_skipped"], summary["n_failed"])
        return finish_build(out_root, self.name, summary, {**self.build_key(), "n_rows": n})

    @staticmethod
    def _row_ids(ids: dict[str, list], where: str, failed: dict[str, str]) -> dict[int, str]:
        """Row index -> sample id for the rows whose id is usable and not taken (ignoring case) by an earlier
        row; each other row goes into `failed` as "row N", logged."""
        out, seen = {}, {}
        for i, (img_id, turn) in enumerate(zip(ids["img_id"], ids["turn_index"])):
            try:
                sid = sample_id(img_id, turn)
                first = seen.setdefault(case_key(sid), (sid, i))
                if first[1] != i:
                    same = "repeats the sample id" if first[0] == sid else "differs only in case from the sample id"
                    raise ValueError(f"sample id {sid!r} {same} {first[0]!r} of row {first[1]} (that row is kept)")
                out[i] = sid
            except ValueError as e:
                failed[f"row {i}"] = f"{where} row {i}: {e}"
                log.error("%s", failed[f"row {i}"])
        return out

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
            check_meta({"instruction": row.get("instruction")}, required=("instruction",))
        except SchemaError as e:
            raise SampleError(sid, f"{where} instruction", e.problem) from e
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
        d = sample_dir(out_root, sid)
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
        write_video_lossless(d / "source.mkv", video, float(v.get("fps", 7)))
        write_image(d / "edited.png", target)
        write_image(d / "mask.png", mask.astype(np.uint8) * 255)
        write_json(d / "meta.json", {  # written last: marks the sample complete
            "instruction": row["instruction"],
            "edit_type": None,
            "fps": float(v.get("fps", 7)),
            "provenance": {**provenance, "row": i, "img_id": str(row["img_id"]), "turn_index": int(row["turn_index"])},
        })
