"""Real loading paths, exercised offline: tiny models saved the way real weights are stored and loaded back
through the same code; missing real weights are one clear error, never random weights."""
from __future__ import annotations

import json
import os
import pickle
import textwrap

import numpy as np
import pytest
import torch

from harness.types import EditSample
from harness.weights import MissingWeights
from metrics.clip import TINY_CLIP, CLIPEmbedder, load_clip
from metrics.flow import load_raft
from metrics.checkpoints import sha256
from metrics.fvd import FVD, load_i3d
from metrics.tifa import TextEmbedder, load_vqa, tiny_text_embedder, tiny_vqa

FRAMES = np.random.default_rng(0).integers(0, 256, (3, 64, 96, 3), dtype=np.uint8)


def test_clip_local_checkpoint_loads_through_open_clip(tmp_path):
    import open_clip

    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "test-tiny-clip.json").write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(tmp_path / "cfg")
    tiny = load_clip(model="tiny", tiny=True, seed=3)
    ckpt = tmp_path / "tiny_clip.pt"
    torch.save(tiny.state_dict(), ckpt)
    real = load_clip(model="test-tiny-clip", pretrained=None, checkpoint=str(ckpt), quick_gelu=True)
    assert real is not tiny
    a, b = CLIPEmbedder(tiny, "cpu")(FRAMES), CLIPEmbedder(real, "cpu")(FRAMES)
    torch.testing.assert_close(a, b)
    with pytest.raises(MissingWeights):
        load_clip(model="test-tiny-clip", checkpoint=str(tmp_path / "absent.pt"))


def test_raft_local_file_loads_back(tmp_path):
    tiny = load_raft("raft_small", None, None, tiny=True, seed=1, device="cpu")
    path = tmp_path / "raft.pth"
    torch.save(tiny.state_dict(), path)
    real = load_raft("raft_small", None, str(path), tiny=False, seed=0, device="cpu")
    x = torch.rand(1, 3, 128, 128) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(tiny(x, x.flip(-1), num_flow_updates=2)[-1], real(x, x.flip(-1), num_flow_updates=2)[-1])
    with pytest.raises(MissingWeights):
        load_raft("raft_large", None, str(tmp_path / "absent.pth"), tiny=False, seed=0, device="cpu")


class Pickled:
    """Not a tensor: a weights_only load must refuse a file holding it."""


def test_raft_weights_enum_is_read_weights_only(tmp_path, monkeypatch):
    """torchvision's weights enum, from the torch hub cache (TORCH_HOME), loads as tensors only."""
    from torchvision.models.optical_flow import Raft_Small_Weights

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cached = tmp_path / "hub" / "checkpoints" / os.path.basename(Raft_Small_Weights.C_T_V2.url)
    cached.parent.mkdir(parents=True)
    tiny = load_raft("raft_small", None, None, tiny=True, seed=6, device="cpu")
    torch.save(tiny.state_dict(), cached)
    real = load_raft("raft_small", "C_T_V2", None, tiny=False, seed=0, device="cpu")
    for (k, a), b in zip(tiny.state_dict().items(), real.state_dict().values()):
        assert torch.equal(a, b), k
    torch.save({**tiny.state_dict(), "extra": Pickled()}, cached)
    with pytest.raises(pickle.UnpicklingError):
        load_raft("raft_small", "C_T_V2", None, tiny=False, seed=0, device="cpu")


@pytest.mark.parametrize("fmt", ["pt", "safetensors"])
def test_i3d_local_file_with_checksum(tmp_path, fmt):
    tiny = load_i3d(width=0.125, tiny=True, seed=2)
    path = tmp_path / f"i3d.{fmt}"
    if fmt == "pt":
        torch.save(tiny.state_dict(), path)
    else:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in tiny.state_dict().items()}, str(path))
    digest = sha256(path)
    real = load_i3d(str(path), digest, width=0.125)
    x = torch.rand(1, 3, 9, 224, 224) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(tiny(x), real(x))
    # the digest used travels with the features and into the run's summary
    fvd = FVD({"tiny": False, "seed": 0, "checkpoint": str(path), "sha256": digest, "width": 0.125})
    assert fvd.info == {"fvd_i3d": digest, "fvd_convention": "stylegan_v"} and real.weights_id == digest
    with pytest.raises(MissingWeights, match="sha256"):
        load_i3d(str(path), "0" * 64, width=0.125)
    # unset: refused, with the file's actual sha256 and the setting to put it in
    with pytest.raises(MissingWeights, match=f"models.i3d.sha256={digest}"):
        load_i3d(str(path), None, width=0.125)
    with pytest.raises(MissingWeights, match="models.i3d.checkpoint"):
        load_i3d(None)


def test_blip_vqa_and_text_encoder_load_from_a_local_folder(tmp_path):
    processor, model = tiny_vqa(seed=4)
    processor.save_pretrained(tmp_path / "blip-vqa-capfilt-large")
    model.save_pretrained(tmp_path / "blip-vqa-capfilt-large")
    p2, m2 = load_vqa(root=str(tmp_path))
    enc = processor(images=list(FRAMES[:2]), text=["is there a cat?", "what color?"], return_tensors="pt", padding=True)
    with torch.no_grad():
        assert torch.equal(model.generate(**enc, max_new_tokens=4), m2.generate(**enc, max_new_tokens=4))

    tok, bert = tiny_text_embedder(seed=5)
    tok.save_pretrained(tmp_path / "all-mpnet-base-v2")
    bert.save_pretrained(tmp_path / "all-mpnet-base-v2")
    loaded = TextEmbedder(root=str(tmp_path))
    assert loaded.model is not bert
    e = loaded(["yes", "no", "red"])
    torch.testing.assert_close(e.norm(dim=-1), torch.ones(3))
    with torch.no_grad():
        enc = tok(["yes"], return_tensors="pt")
        ref = bert(**enc).last_hidden_state.mean(1)
    torch.testing.assert_close(e[0], torch.nn.functional.normalize(ref[0], dim=0))
    with pytest.raises(MissingWeights):
        load_vqa(root=str(tmp_path / "nothing"))


@pytest.mark.skipif(not os.environ.get("COTRACKER_REPO"),
                    reason="CoTracker's code cannot be fetched offline; set COTRACKER_REPO to a local checkout of "
                           "facebookresearch/co-tracker (and COTRACKER_CHECKPOINT to its weights, else the torch hub cache's "
                           "checkpoints/scaled_offline.pth is used) to run this test")
def test_cotracker_masks_on_sample_track(sample_track):
    from metrics.regions import CoTracker

    tracker = CoTracker(repo=os.environ["COTRACKER_REPO"], source="local", checkpoint=os.environ.get("COTRACKER_CHECKPOINT"))
    ious = []
    for sid in sample_track.ids():
        s = sample_track.load(sid)
        got = tracker(s.source, s.mask)
        ious.append(np.mean([(a & b).sum() / max(1, (a | b).sum()) for a, b in zip(got, s.truth.masks)]))
    assert np.mean(ious) >= 0.75


def test_paper_suite_columns(compose):
    """metrics=paper declares exactly the paper's ten columns in the paper's three groups, with ×100 and
    directions as the paper prints them, plus bookkeeping columns in groups of their own."""
    from harness.runner import load_suite

    suite = load_suite(compose("metrics=paper", "device=cpu"))
    cols = suite.columns
    paper = {"clip_tgt", "clip_tgt_plus", "tifa", "clip_src", "clip_src_plus", "flow", "flow_plus", "fvd", "ssim", "clip_tc"}
    bookkeeping = {"region_skipped", "flow_region_skipped", "region_cotracker", "fvd_n", "fvd_frames", "gt_psnr", "gt_ssim"}
    seams = {f"{m}_{w}" for m in ("flow", "clip_tc") for w in ("seam", "inner")} | {"seam_flow_ratio", "seam_clip_tc_ratio"}
    assert set(cols) == paper | bookkeeping | seams  # seams: the long-video diagnostic (metrics/seams.py)
    assert {cols[c].group for c in seams} == {"seams"}
    paper_groups = {"edit fidelity", "source faithfulness", "temporal consistency"}
    assert {c for c in cols if cols[c].group in paper_groups} == paper
    assert {c for c in paper if cols[c].percent} == {"clip_tgt", "clip_tgt_plus", "tifa", "clip_src", "clip_src_plus", "ssim", "clip_tc"}
    assert {c for c in paper if not cols[c].higher_is_better} == {"flow", "flow_plus", "fvd"}
    assert {cols[c].group for c in paper} == paper_groups
    assert suite.tiny and "fvd" in suite.sets["fvd"].columns
    assert suite.info["fvd_i3d"] == "random(seed=0,width=0.125)" and suite.info["fvd_convention"] == "stylegan_v"
    assert suite.info["tifa_questions"].startswith("sample.json sha256:")  # which questions scored TIFA
    assert set(suite.info) == {"fvd_i3d", "fvd_convention", "tifa_questions"}


def test_tifa_without_questions_is_loud(compose, tmp_path):
    """metrics=paper on a dataset with no question file fails when the suite loads, saying how to fix it;
    a sample missing from the file has no tifa (not applicable, not NaN)."""
    from harness.runner import load_suite
    from metrics.tifa import TIFA

    with pytest.raises(Exception, match="(?s)no questions file.*~metrics.tifa"):
        load_suite(compose("metrics=paper", "dataset=folder", f"dataset.root={tmp_path}", "device=cpu"))
    qfile = tmp_path / "q.json"
    qfile.write_text(json.dumps([{"id": "a", "caption": "a cat", "question": "Is there a cat?", "choices": ["yes", "no"],
                                  "answer": "yes", "element_type": "animal", "element": "cat"}]))
    tiny = {"tiny": True, "seed": 0, "arch": "tiny"}
    metric = TIFA(str(qfile), tiny, tiny)
    other = EditSample("b", FRAMES, FRAMES[0])
    assert "tifa" not in metric.score(other, FRAMES)


def test_dis_selected_in_config_scores_a_sample(compose, sample_track, tmp_path, monkeypatch):
    """models.flow.kind=dis picks OpenCV DIS with the real-weights config too (no RAFT weights needed)."""
    import dataclasses

    from hydra.utils import instantiate

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # no CoTracker on disk: the flow tracker
    s = sample_track.load("chelsea_color_ball")
    s = dataclasses.replace(s, source=s.source[:4])
    for models in ("tiny", "svd"):
        cfg = compose("metrics=paper", f"models={models}", "models.flow.kind=dis", "device=cpu")
        metric = instantiate(cfg.metrics.flow)
        assert metric.estimator.name == "dis" and not metric.tiny
        same = metric.score(s, s.source)
        assert same["flow"] == 0.0 and same["flow_plus"] == 0.0 and same["region_cotracker"] == 0.0
        assert same["flow_region_skipped"] == 0.0
        static = metric.score(s, np.repeat(s.source[:1], len(s.source), 0))
        assert static["flow"] > 0.5  # the camera pans: a frozen video's flow is far from the source's


FAKE_HUBCONF = textwrap.dedent('''
    """A stand-in for facebookresearch/co-tracker's hubconf: CoTracker's offline interface, moving every point
    by a constant velocity (pixels per frame) that only the checkpoint sets."""
    import torch


    class Velocity(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.velocity = torch.nn.Parameter(torch.zeros(2))


    class OfflinePredictor(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = Velocity()

        def forward(self, video, queries):
            b, t, c, h, w = video.shape
            assert c == 3 and video.dtype == torch.float32 and float(video.max()) > 1, "B×T×3×H×W floats in 0..255"
            assert queries.shape[0] == b and queries.shape[-1] == 3, "B×N×3 queries (t, x, y)"
            steps = torch.arange(t, dtype=torch.float32).view(1, t, 1, 1) - queries[:, None, :, :1]
            tracks = queries[:, None, :, 1:] + steps * self.model.velocity
            x, y = tracks[..., 0], tracks[..., 1]
            return tracks, (x >= 0) & (x < w) & (y >= 0) & (y < h)


    def cotracker3_offline(*, pretrained=True, **kwargs):
        assert not pretrained, "the harness loads the weights itself (weights_only)"
        return OfflinePredictor()
''')


def test_cotracker_wrapper_on_a_fake_hub_repo(tmp_path, monkeypatch):
    """The CoTracker path without CoTracker: a local hub repo with its interface, weights from the hub cache's
    file for the entry; `auto` picks it, its masks follow the known motion, and rows record it."""
    from metrics.clip import CLIPScores
    from metrics.regions import CoTracker, cotracker_checkpoint, make_tracker, regions_for

    repo = tmp_path / "co-tracker"
    repo.mkdir()
    (repo / "hubconf.py").write_text(FAKE_HUBCONF)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    cfg = {"kind": "auto", "flow": {"estimator": {"kind": "dis", "dis": {"preset": "fast"}}, "ransac_px": 1.0},
           "cotracker": {"repo": str(repo), "entry": "cotracker3_offline", "source": "local", "checkpoint": None,
                         "points": 64, "min_visible": 6, "ransac_px": 3.0, "seed": 0}}
    assert not isinstance(make_tracker(cfg), CoTracker)  # no weights yet: the flow tracker
    ckpt = cotracker_checkpoint("cotracker3_offline")
    assert ckpt == tmp_path / "torch" / "hub" / "checkpoints" / "scaled_offline.pth"
    assert cotracker_checkpoint("cotracker2").name == "cotracker2.pth"
    ckpt.parent.mkdir(parents=True)
    torch.save({"velocity": torch.tensor([3.0, 1.0])}, ckpt)
    tracker = make_tracker(cfg)
    assert isinstance(tracker, CoTracker) and tracker.checkpoint == str(ckpt)

    t, h, w = 6, 64, 96
    mask0 = np.zeros((h, w), bool)
    mask0[20:36, 10:34] = True
    video = np.random.default_rng(0).integers(0, 256, (t, h, w, 3), dtype=np.uint8)
    sample = EditSample("moving_box", video, video[0], mask0)
    regions = regions_for(sample, cfg)
    assert regions.tracker == "cotracker3_offline" and regions.by_cotracker == 1.0
    for i, got in enumerate(regions.masks):
        want = np.zeros((h, w), bool)
        want[20 + i:36 + i, 10 + 3 * i:34 + 3 * i] = True
        assert (got & want).sum() / (got | want).sum() > 0.95, i
    row = CLIPScores({"tiny": True, "seed": 0, "model": "tiny"}, cfg).score(sample, video)
    assert row["region_cotracker"] == 1.0 and row["region_skipped"] == 0.0

    torch.save({"velocity": torch.tensor([3.0, 1.0]), "extra": Pickled()}, ckpt)
    with pytest.raises(pickle.UnpicklingError):
        CoTracker(repo=str(repo), source="local", points=8)
