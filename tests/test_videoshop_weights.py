"""Where SVD's real weights come from, offline: pinned revisions, the hub-cache layout, `models.root`, the
snapshot each load records, and the CPU-threads knob."""
from __future__ import annotations

import re

import pytest
import torch
from omegaconf import OmegaConf

from harness.weights import MissingWeights, local_model_dir, snapshot_id
from videoshop.models import load_svd

SHA = re.compile(r"[0-9a-f]{40}")


def test_svd_revisions_are_pinned_commits(compose):
    a = compose("models=svd").models.svd_backbone
    b = compose("models=svd_xt").models.svd_backbone
    assert SHA.fullmatch(a.revision) and SHA.fullmatch(b.revision) and a.revision != b.revision
    assert (a.repo_id, b.repo_id) == ("stabilityai/stable-video-diffusion-img2vid",
                                      "stabilityai/stable-video-diffusion-img2vid-xt")
    assert (a.num_frames, b.num_frames, compose("models=tiny").models.svd_backbone.num_frames) == (14, 25, 14)


def test_root_needs_a_model_marker_not_any_json(tmp_path):
    d = tmp_path / "stable-video-diffusion-img2vid"
    d.mkdir()
    (d / "notes.json").write_text("{}")
    with pytest.raises(MissingWeights, match="model_index.json or config.json"):
        local_model_dir("stabilityai/stable-video-diffusion-img2vid", root=tmp_path)
    (d / "config.json").write_text("{}")
    assert local_model_dir("stabilityai/stable-video-diffusion-img2vid", root=tmp_path) == d
    with pytest.raises(MissingWeights, match="model_index.json"):  # a pipeline needs its index
        local_model_dir("stabilityai/stable-video-diffusion-img2vid", root=tmp_path, markers=("model_index.json",))


def test_snapshot_id_is_the_commit_in_the_hub_cache_else_the_folder(tmp_path):
    sha = "0123456789abcdef0123456789abcdef01234567"
    snap = tmp_path / "hub" / "models--stabilityai--stable-video-diffusion-img2vid" / "snapshots" / sha
    snap.mkdir(parents=True)
    assert snapshot_id(snap) == sha
    assert snapshot_id(tmp_path / "copy") == str((tmp_path / "copy").absolute())


@pytest.fixture
def saved_tiny(compose, tmp_path_factory):
    """The tiny SVD components saved in the hub repo's layout."""
    d = tmp_path_factory.mktemp("saved") / "stable-video-diffusion-img2vid"
    load_svd(compose().models.svd_backbone, "cpu").save_pretrained(d)
    return d


def test_loads_record_which_copy_they_used(compose, saved_tiny, tmp_path, monkeypatch):
    """From the hub cache at the pinned revision: the commit; from models.root: the folder; tiny: None."""
    import huggingface_hub.constants as hub

    entry = OmegaConf.to_container(compose("models=svd").models.svd_backbone, resolve=True)
    entry["dtype"] = "float32"
    repo = tmp_path / "hub" / "models--stabilityai--stable-video-diffusion-img2vid"
    (repo / "snapshots").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(entry["revision"])
    (repo / "snapshots" / entry["revision"]).symlink_to(saved_tiny, target_is_directory=True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "hub"))
    assert load_svd(entry, "cpu").weights_revision == entry["revision"]
    from_root = load_svd({**entry, "root": str(saved_tiny.parent)}, "cpu")
    assert from_root.weights_revision == str(saved_tiny.absolute())
    m = compose("method=videoshop").method
    assert load_svd(m.backbone, "cpu").weights_revision is None


def test_threads_key_sets_torchs_intra_op_threads_and_is_no_part_of_the_runs_identity(compose, tmp_path):
    import run
    from harness.runner import fingerprint_config

    n = torch.get_num_threads()
    try:
        run.main(compose("method=identity", "metrics=basic", "dataset.limit=1", "threads=1"))
        assert torch.get_num_threads() == 1
        one, two = (fingerprint_config(compose(f"threads={k}"), True) for k in (1, 2))
        assert one == two
    finally:
        torch.set_num_threads(n)
