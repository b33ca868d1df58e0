"""The embedded sample track: deterministic, and its ground truth consistent with its videos."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import binary_dilation

from data import sample_track as st

EDIT_KINDS = {"add_object", "remove_object", "replace_object", "change_color", "change_appearance"}


def test_track_covers_the_edit_kinds_at_16_9(sample_track):
    ids = sample_track.ids()
    assert len(ids) >= 8
    kinds = set()
    for sid in ids[:: max(1, len(ids) // 4)] + ids[-1:]:
        s = sample_track.load(sid)
        assert s.source.shape == (14, 256, 448, 3) and s.source.dtype == np.uint8
        assert s.instruction and s.source_prompt and s.target_prompt
    kinds = {c.edit.kind for c in st.clips()}
    assert kinds == EDIT_KINDS


def test_build_is_deterministic():
    clip = st.clips()[1]
    a, b = st.build_clip(clip), st.build_clip(clip)
    for name in ("source", "target", "masks", "flow", "flow_valid"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)


def test_ground_truth_frame0_and_mask_match_the_edit(sample_track):
    for sid in sample_track.ids():
        s = sample_track.load(sid)
        np.testing.assert_array_equal(s.truth.video[0], s.edited_frame)
        np.testing.assert_array_equal(s.truth.masks[0], s.mask)
        changed = np.abs(s.edited_frame.astype(int) - s.source[0]).max(-1) > 8
        # The edit changes nothing beyond the mask's soft edge (3 px), and the mask is where it changed.
        near = binary_dilation(s.mask, iterations=3)
        assert changed[~near].mean() < 1e-4, sid
        assert changed[s.mask].mean() > 0.5, sid


def _warp_back(nxt: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Sample frame t+1 at x + flow(x): equals frame t where the flow is right."""
    _, h, w = nxt.shape
    ys, xs = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
    grid = torch.stack([(xs + flow[..., 0]) / w * 2 - 1, (ys + flow[..., 1]) / h * 2 - 1], -1)
    return F.grid_sample(nxt[None], grid[None].float(), align_corners=False)[0]


def test_ground_truth_flow_warps_each_frame_onto_the_next(sample_track):
    """Mean |frame_t − warp(frame_{t+1})| over valid pixels is under 1.5 grey levels (bilinear resampling
    error) and under a quarter of the unwarped frame difference; ≥ 85% of pixels are valid."""
    for sid in sample_track.ids()[::3]:
        s = sample_track.load(sid)
        v = torch.from_numpy(s.source).float().permute(0, 3, 1, 2)
        for t in range(0, 13, 4):
            valid = torch.from_numpy(s.truth.flow_valid[t])
            err = (_warp_back(v[t + 1], torch.from_numpy(s.truth.flow[t])) - v[t]).abs().mean(0)[valid].mean()
            still = (v[t + 1] - v[t]).abs().mean(0)[valid].mean()
            assert valid.float().mean() > 0.85, sid
            assert err < 1.5 and err < 0.25 * still, (sid, t, float(err), float(still))
