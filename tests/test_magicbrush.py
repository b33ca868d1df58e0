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


def _schema_dataset(path: Path, old_names: bool, n: int = 2, damage=None) -> Path:
    """Rows with MagicBrush's columns: current (`source_img`/`target_img`) or older (`input_img`/`output_img`).

    `damage(rows)` may spoil some rows (as column lists) before the dataset is saved.
    """
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
    if damage:
        damage(rows)
    features = datasets.Features({k: datasets.Image() if k.endswith("_img") else datasets.Value("string") for k in rows})
    features["turn_index"] = datasets.Value("int32")
    datasets.DatasetDict({"dev": datasets.Dataset.from_dict(rows, features=features)}).save_to_disk(str(path))
    return path


@pytest.mark.parametrize("old_names", [False, True], ids=["current-columns", "older-columns"])
def test_magicbrush_builds_the_layout_with_tiny_svd_and_resumes(compose, tmp_path, old_names, monkeypatch):
    raw = _schema_dataset(tmp_path / "raw", old_names)
    cfg = compose("stage=build", "dataset=magicbrush", f"dataset.raw={raw}", f"data_dir={tmp_path / 'data'}",
                  "dataset.video.steps=2", "dataset.video.size=[64,64]")
    summary = run.main(cfg)
    assert summary["n_built"] == 2 and summary["n_failed"] == 0
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
    loaded = datasets.load_from_disk(str(raw))["dev"]
    assert prov["dataset_fingerprint"] == loaded._fingerprint and prov["dataset_files"] == str(raw / "dev")
    assert prov["video_model_commit"] is None and prov["video_model"] == "tiny random weights"
    stamps = {p: p.stat().st_mtime_ns for p in root.glob("*/*")}

    def no_decoding(*args, **kwargs):
        raise AssertionError("deciding what to build must not decode images")

    monkeypatch.setattr(datasets.Image, "decode_example", no_decoding)
    again = run.main(cfg)  # a rerun builds nothing, and reads only the id columns to know it
    assert again["n_skipped"] == 2 and again["n_built"] == 0
    assert {p: p.stat().st_mtime_ns for p in root.glob("*/*")} == stamps


def _spoil(rows: dict) -> None:
    """Rows 1-3 bad: a mask with no transparent pixel, no edited image, a source image that is not an image."""
    rows["mask_img"][1] = Image.fromarray(np.full((64, 64, 4), 255, np.uint8), "RGBA")
    rows["target_img"][2] = None
    rows["source_img"][3] = {"bytes": b"not an image", "path": None}


def test_bad_rows_fail_alone_naming_their_ids_and_the_build_goes_on(compose, tmp_path):
    raw = _schema_dataset(tmp_path / "raw", False, n=5, damage=_spoil)
    cfg = compose("stage=build", "dataset=magicbrush", f"dataset.raw={raw}", f"data_dir={tmp_path / 'data'}",
                  "dataset.video.steps=1", "dataset.video.size=[64,64]")
    summary = run.main(cfg)
    assert summary["n_built"] == 2 and summary["n_failed"] == 3
    failed = summary["failed"]
    assert failed["101_1"] == f"sample '101_1': {raw}[dev] row 1 mask_img: mask is empty (no transparent pixel, and source and edited image do not differ)"
    assert failed["102_1"] == f"sample '102_1': {raw}[dev] row 2: no target image: the columns target_img and output_img are empty or absent"
    assert failed["103_1"].startswith(f"sample '103_1': {raw}[dev] row 3: cannot read the row (")
    assert FolderDataset(tmp_path / "data" / "magicbrush", name="magicbrush").ids() == ["100_1", "104_1"]
    again = run.main(cfg)  # the bad rows do not block a rerun: they are reported again, the rest skipped
    assert again["n_skipped"] == 2 and again["n_built"] == 0 and again["failed"].keys() == failed.keys()


def test_provenance_names_the_snapshot_commit_of_cached_weights(compose, tmp_path, monkeypatch):
    """Weights loaded from the Hugging Face cache record the commit of the snapshot folder, not just "main"."""
    import huggingface_hub.constants
    from omegaconf import OmegaConf

    from data.magicbrush import MagicBrush
    from videoshop.models import load_svd

    sha = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--test--tiny-svd"
    tiny = OmegaConf.to_container(compose().models.svd_backbone, resolve=True)
    load_svd(tiny).save_pretrained(repo / "snapshots" / sha)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(sha)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    raw = _schema_dataset(tmp_path / "raw", False, n=1)
    ds = MagicBrush(tmp_path / "data", raw=str(raw), backbone={"repo_id": "test/tiny-svd", "revision": "main", "dtype": "float32"},
                    video={"steps": 1, "size": [64, 64]})
    assert ds.build(tmp_path / "data")["n_built"] == 1
    prov = json.loads((tmp_path / "data" / "magicbrush" / "100_1" / "meta.json").read_text())["provenance"]
    assert prov["video_model"] == "test/tiny-svd" and prov["video_model_revision"] == "main"
    assert prov["video_model_commit"] == sha and prov["video_model_path"].endswith(f"snapshots/{sha}")
    assert prov["tiny"] is False
