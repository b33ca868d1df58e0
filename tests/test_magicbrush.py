"""The MagicBrush builder, on a MagicBrush-schema dataset made here, with tiny SVD weights."""
from __future__ import annotations

import json
from pathlib import Path

import datasets
import numpy as np
import pytest
from PIL import Image

import run
from data.folder import FolderDataset


def _schema_dataset(path: Path, old_names: bool, n: int = 2) -> Path:
    """Rows with MagicBrush's columns: current (`source_img`/`target_img`) or older (`input_img`/`output_img`)."""
    rng = np.random.default_rng(int(old_names))
    src_col, tgt_col = ("input_img", "output_img") if old_names else ("source_img", "target_img")
    rows = {"img_id": [], "turn_index": [], src_col: [], "mask_img": [], tgt_col: [], "instruction": []}
    for i in range(n):
        src = rng.integers(0, 256, (128, 128, 3), dtype=np.uint8)
        tgt = src.copy()
        tgt[32:64, 40:90] = [255, 0, 0]
        masked = np.dstack([src, np.full((128, 128), 255, np.uint8)])
        masked[32:64, 40:90, 3] = 0  # MagicBrush's masked image: the edited region is transparent
        rows["img_id"].append(f"{100 + i}")
        rows["turn_index"].append(1)
        rows[src_col].append(Image.fromarray(src))
        rows["mask_img"].append(Image.fromarray(masked, "RGBA").resize((256, 256), Image.NEAREST))  # other size
        rows[tgt_col].append(Image.fromarray(tgt))
        rows["instruction"].append("paint a red box")
    features = datasets.Features({k: datasets.Image() if k.endswith("_img") else datasets.Value("string") for k in rows})
    features["turn_index"] = datasets.Value("int32")
    datasets.DatasetDict({"dev": datasets.Dataset.from_dict(rows, features=features)}).save_to_disk(str(path))
    return path


@pytest.mark.parametrize("old_names", [False, True], ids=["current-columns", "older-columns"])
def test_magicbrush_builds_the_layout_with_tiny_svd_and_resumes(compose, tmp_path, old_names):
    raw = _schema_dataset(tmp_path / "raw", old_names)
    cfg = compose("stage=build", "dataset=magicbrush", f"dataset.raw={raw}", f"data_dir={tmp_path / 'data'}",
                  "dataset.video.steps=2", "dataset.video.size=[64,64]")
    run.main(cfg)
    root = tmp_path / "data" / "magicbrush"
    ds = FolderDataset(root, name="magicbrush")
    assert ds.ids() == ["100_1", "101_1"]
    s = ds.load("100_1")
    assert s.source.shape == (14, 64, 64, 3) and s.edited_frame.shape == (64, 64, 3)
    assert s.instruction == "paint a red box"
    box = np.zeros((64, 64), bool)
    box[16:32, 20:45] = True
    assert (s.mask == box).mean() > 0.97  # the transparent region, resized to the video
    assert s.edited_frame[20:28, 24:40, 0].min() > 200 and s.edited_frame[20:28, 24:40, 1].max() < 60
    prov = json.loads((root / "100_1" / "meta.json").read_text())["provenance"]
    assert prov["img_id"] == "100" and prov["turn_index"] == 1 and prov["seed"] == 42 and prov["tiny"] is True
    stamps = {p: p.stat().st_mtime_ns for p in root.glob("*/*")}
    run.main(cfg)  # a rerun builds nothing
    assert {p: p.stat().st_mtime_ns for p in root.glob("*/*")} == stamps
