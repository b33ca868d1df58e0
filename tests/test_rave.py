"""RAVE with tiny SD 1.5 + ControlNet + ZoeDepth: grid tiling and padding, seeded per-step shuffling, a 1×1 grid
against an independent per-frame ControlNet edit, and the end-to-end run on the sample track."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import run
from baselines import resize
from baselines.rave import PADDING, pad_frames, tile, untile
from harness.results import RunDir
from tests.conftest import first_sample, tiny_method

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("frames, grid", [(14, 3), (14, 2), (9, 3), (5, 1)])
def test_tiling_round_trips_exactly_with_padding(frames, grid):
    g = torch.Generator().manual_seed(frames)
    video = torch.randn(frames, 4, 6, 11, generator=g)
    padded, pad = pad_frames(video, grid)
    assert len(padded) % grid ** 2 == 0 and pad == -frames % grid ** 2 and pad < grid ** 2
    assert torch.equal(padded[:frames], video) and all(torch.equal(p, video[-1]) for p in padded[frames:])  # PADDING
    order = torch.randperm(len(padded), generator=g)
    grids = tile(padded, order, grid)
    assert grids.shape == (len(padded) // grid ** 2, 4, 6 * grid, 11 * grid)
    second = grids[0, :, :6, 11:22] if grid > 1 else grids[1]  # row-major: frame order[1] right of order[0]
    assert torch.equal(second, padded[order[1]])
    assert torch.equal(untile(grids, order, grid), padded)


def test_padding_frames_never_reach_the_output():
    """Marked padding frames, shuffled through grids and back: the kept frames are exactly the clip's."""
    video = torch.randn(14, 4, 6, 11)
    padded, pad = pad_frames(video, 3)
    padded[14:] = float("inf")
    order = torch.randperm(len(padded), generator=torch.Generator().manual_seed(0))
    kept = untile(tile(padded, order, 3), order, 3)[:14]
    assert pad == 4 and torch.isfinite(kept).all() and torch.equal(kept, video)


def test_permutations_are_seeded_and_change_every_step():
    method = tiny_method("rave")
    runs = [[method.permutation(18, gen).tolist() for _ in range(4)] for gen in
            (torch.Generator().manual_seed(0), torch.Generator().manual_seed(0))]
    assert runs[0] == runs[1]
    assert all(sorted(p) == list(range(18)) for p in runs[0])
    assert len({tuple(p) for p in runs[0]}) == 4  # a fresh permutation every step
    other = [method.permutation(18, torch.Generator().manual_seed(1)).tolist()]
    assert other[0] != runs[0][0]


def test_shuffling_changes_the_grid_mates_of_every_frame():
    """The configured method (shuffle: true, RAVE's default) regroups frames between steps; with shuffle: false
    each frame keeps its grid-mates and this test fails."""
    method = tiny_method("rave")
    gen = torch.Generator().manual_seed(0)
    grid = method.grid ** 2

    def mates(order: list[int]) -> dict[int, frozenset[int]]:
        return {f: frozenset(order[i // grid * grid:(i // grid + 1) * grid]) for i, f in enumerate(order)}

    steps = [mates(method.permutation(18, gen).tolist()) for _ in range(2)]
    assert all(steps[0][f] != steps[1][f] for f in range(18))


def test_shuffling_changes_the_edit(sample_track):
    sample = first_sample(sample_track, 5)  # grid 3: padded to 9
    shuffled = tiny_method("rave").edit(sample, 0)
    fixed = tiny_method("rave", "method.shuffle=false").edit(sample, 0)
    assert shuffled.frames.shape == fixed.frames.shape == sample.source.shape
    assert (shuffled.info["shuffle"], fixed.info["shuffle"]) == (True, False)
    assert np.abs(shuffled.frames.astype(float) - fixed.frames).mean() > 0.5


@torch.no_grad()
def test_a_grid_of_one_equals_per_frame_controlnet_editing(sample_track):
    """grid_size=1: an independent loop, frame by frame, with RAVE's inversion step written out (its `ddim_step`),
    ControlNet at scale 1 with the empty prompt, then CFG + ControlNet sampling, the first step unguided."""
    sample = first_sample(sample_track, 2)
    method = tiny_method("rave", "method.grid_size=1")
    edit = method.edit(sample, 0)
    assert edit.info["padding_frames"] == 0 and edit.nfe == method.inversion_steps + method.steps

    m = method.m
    h, w = edit.info["working_size"]
    frames = resize.to_working(sample.source, h, w, "cpu")
    control = method.depth_condition(frames)
    empty, negative = method._text(""), method._text("")
    target = method._text(sample.target_prompt)
    sf = m.vae.config.scaling_factor
    alphas = m.scheduler.alphas_cumprod

    def eps(x, t, text, cond):
        down, mid = m.controlnet(x, t, encoder_hidden_states=text, controlnet_cond=cond, conditioning_scale=1.0,
                                 return_dict=False)
        return m.unet(x, t, encoder_hidden_states=text, down_block_additional_residuals=down,
                      mid_block_additional_residual=mid).sample

    out = []
    for f in range(len(frames)):
        cond = control[f:f + 1]
        x = m.vae.encode(frames[f:f + 1]).latent_dist.mean * sf
        m.scheduler.set_timesteps(method.inversion_steps)
        inv_steps = m.scheduler.timesteps.flip(0)
        for i, t in enumerate(inv_steps):
            a_t = alphas[t]
            a_prev = alphas[inv_steps[i - 1]] if i > 0 else m.scheduler.final_alpha_cumprod
            e = eps(x, t, empty, cond)
            x0 = (x - (1 - a_prev) ** 0.5 * e) / a_prev ** 0.5
            x = a_t ** 0.5 * x0 + (1 - a_t) ** 0.5 * e
        m.scheduler.set_timesteps(method.steps)
        for i, t in enumerate(m.scheduler.timesteps):
            uncond, cond_eps = eps(torch.cat([x, x]), t, torch.cat([negative, target]), torch.cat([cond, cond])).chunk(2)
            scale = method.guidance_scale if i > 0 else 0.0
            x = m.scheduler.step(uncond + scale * (cond_eps - uncond), t, x).prev_sample
        out.append(m.vae.decode(x / sf).sample)
    expected = resize.to_benchmark(torch.cat(out), *sample.size)
    assert np.abs(edit.frames.astype(int) - expected).max() <= 1


def test_runs_end_to_end_on_the_sample_track(compose, tmp_path):
    cfg = compose("method=rave", "models=tiny", "dataset.limit=2", "metrics=basic", "device=cpu")
    run.main(cfg)
    rd = RunDir(tmp_path / "results" / "sample" / "tiny" / "rave")
    rows = rd.rows()
    assert len(rows) == 2
    from data.sample_track import SampleTrack

    track = SampleTrack(data_dir=cfg.data_dir)
    over = cfg.models.sd15_controlnet_depth.overrides
    for row in rows:
        assert row.status == "ok", row.error
        info = row.info
        assert json.loads(json.dumps(info)) == info
        src = track.load(row.sample_id).source
        assert rd.load_video(row.sample_id).shape == src.shape  # 14 frames in, 14 out
        assert (info["grid_size"], info["padding_frames"], info["frames_denoised"], info["padding"]) == (3, 4, 18, PADDING)
        assert info["nfe_inversion"] == over.inversion_steps and info["nfe_sampling"] == over.steps  # one call each
        assert row.costs.nfe == info["nfe_inversion"] + info["nfe_sampling"]
        assert [name for name, _ in info["phases"]] == ["depth", "encode", "condition", "invert", "generate", "decode"]
        assert info["prompt_origin"] == "dataset" and info["target_prompt"] == track.load(row.sample_id).target_prompt
        assert info["seed"] == 0 and info["shuffle"] is True and info["working_size"] == [48, 88]
