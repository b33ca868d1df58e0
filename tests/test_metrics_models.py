"""Real loading paths, exercised offline: tiny models saved the way real weights are stored and loaded back
through the same code; missing real weights are one clear error, never random weights."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

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
    assert fvd.info == {"fvd_i3d": digest} and real.weights_id == digest
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
                           "facebookresearch/co-tracker (and COTRACKER_CHECKPOINT to its weights) to run this test")
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
    """metrics=paper declares exactly the paper's columns, with ×100 and directions as the paper prints them."""
    from harness.runner import load_suite

    suite = load_suite(compose("metrics=paper", "device=cpu"))
    cols = suite.columns
    paper = ["clip_tgt", "clip_tgt_plus", "tifa", "clip_src", "clip_src_plus", "flow", "flow_plus", "fvd", "ssim", "clip_tc"]
    assert set(paper) <= set(cols)
    assert {c for c in paper if cols[c].percent} == {"clip_tgt", "clip_tgt_plus", "tifa", "clip_src", "clip_src_plus", "ssim", "clip_tc"}
    assert {c for c in paper if not cols[c].higher_is_better} == {"flow", "flow_plus", "fvd"}
    assert {cols[c].group for c in paper} == {"edit fidelity", "source faithfulness", "temporal consistency"}
    assert suite.tiny and "fvd" in suite.sets["fvd"].columns
