"""TokenFlow with tiny SD 2.1-base components: end to end, PnP injection, extended attention, propagation."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from diffusers.models.attention_processor import Attention
from omegaconf import OmegaConf

import run
from baselines import components
from baselines.tokenflow import TokenFlowAttnProcessor, TokenFlowState, install, neighbours
from harness.results import RunDir

TINY = OmegaConf.create({"kind": "sd21", "repo": "stabilityai/stable-diffusion-2-1-base", "tiny": True, "seed": 0})
ATTN = ["up_blocks.1.attentions.1.transformer_blocks.0.attn1", "up_blocks.2.attentions.0.transformer_blocks.0.attn1",
        "up_blocks.3.attentions.2.transformer_blocks.0.attn1"]
CONV = "up_blocks.1.resnets.1.conv2"


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models run fastest single-threaded; two threads on a shared 2-core machine oversubscribe badly."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.mark.slow
def test_runs_end_to_end_on_the_sample_track(compose, tmp_path):
    cfg = compose("method=tokenflow", "models=tiny", "dataset.limit=1", "device=cpu")
    run.main(cfg)
    rd = RunDir(tmp_path / "results" / "sample" / "tiny" / "tokenflow")
    (row,) = rd.rows()
    assert row.status == "ok", row.error
    over = cfg.models.sd21.overrides
    assert row.costs.nfe == over.inversion_steps + 2 * over.steps
    from data.sample_track import SampleTrack

    src = SampleTrack(data_dir=cfg.data_dir).load(row.sample_id).source
    out = rd.load_video(row.sample_id)
    assert out.shape == src.shape
    assert np.abs(out.astype(float) - src).mean() > 5  # not the identity


def test_group_size_must_divide_the_frame_count(compose, tmp_path):
    run.main(compose("method=tokenflow", "models=tiny", "dataset.limit=1", "device=cpu", "method.group_size=5"))
    (row,) = RunDir(tmp_path / "results" / "sample" / "tiny" / "tokenflow").rows()
    assert row.status == "failed" and "group_size=5 must divide the frame count 14" in row.error


def _method(**kw):
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from tests.conftest import REPO

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["method=tokenflow", "models=tiny", "device=cpu", "method.group_size=2"])
    return instantiate(cfg.method, **kw)


def test_injection_changes_the_edit(sample_track):
    full = sample_track.load(sample_track.ids()[0])
    sample = dataclasses.replace(full, source=full.source[:4])
    edit = _method().edit(sample, 0)
    without = _method(injection_until={"attn": 0, "conv": 0}).edit(sample, 0).frames
    assert np.abs(edit.frames.astype(float) - without).mean() > 0.5
    info = edit.info
    assert json.loads(json.dumps(info)) == info
    assert all(isinstance(v, (str, int, float, bool, list)) for v in info.values()), info
    assert info["working_size"] == [48, 80]  # the wide tiny size (TokenFlow's 384×672) for this 7:4 clip
    assert (info["target_prompt"], info["prompt_origin"], info["seed"]) == (sample.target_prompt, "dataset", 1)
    assert info["nfe_inversion"] + info["nfe_sampling"] == edit.nfe


def test_square_clips_run_square(sample_track):
    full = sample_track.load(sample_track.ids()[0])
    sample = dataclasses.replace(full, source=full.source[:2, :, :256], edited_frame=full.edited_frame[:, :256],
                                 mask=None if full.mask is None else full.mask[:, :256])
    edit = _method().edit(sample, 0)
    assert edit.info["working_size"] == [64, 64]  # the square tiny size (TokenFlow's 512×512), not stretched wide
    assert edit.frames.shape == sample.source.shape


def test_configured_layers_and_processors():
    """Extended attention on every self-attention; Q/K injection on the 8 decoder attn1 of PnP; one conv2 hook."""
    method = _method()
    unet = method.m.unet
    state = TokenFlowState(n_branches=3)
    restore = install(unet, state, method.layers["attn"], method.layers["conv"])
    try:
        procs = unet.attn_processors
        hooked = [n for n, m in unet.named_modules() if m._forward_hooks]
    finally:
        restore()
    ours = {n: p for n, p in procs.items() if isinstance(p, TokenFlowAttnProcessor)}
    self_attn = [n for n, m in unet.named_modules() if isinstance(m, Attention) and not m.is_cross_attention]
    assert sorted(ours) == sorted(n + ".processor" for n in self_attn) and len(ours) == 16
    injected = sorted(n for n, p in ours.items() if p.inject)
    assert injected == sorted(n + ".processor" for n in method.layers["attn"]) and len(injected) == 8
    assert all(n.startswith("up_blocks.") and n.endswith(".attn1.processor") for n in injected)
    assert hooked == [CONV]
    assert not any(isinstance(p, TokenFlowAttnProcessor) for p in unet.attn_processors.values())


def _inputs(unet, frames: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(frames, 4, 8, 8, generator=g), torch.randn(frames, 7, unet.config.cross_attention_dim, generator=g)


@torch.no_grad()
def test_keyframe_pass_with_an_identical_source_branch_equals_plain_attention():
    """Source = edit branch and identical keyframes: injected Q/K and extended attention change nothing."""
    from diffusers import UNet2DConditionModel

    unet = components.load(TINY, {"unet": UNet2DConditionModel}, "cpu").unet
    x, text = _inputs(unet, 1)
    plain = unet(x, 300, encoder_hidden_states=text).sample
    state = TokenFlowState(n_branches=2, active={"attn", "conv"}, mode="keyframes", keyframes=[0, 1])
    restore = install(unet, state, ATTN, [CONV])
    try:
        out = unet(x.repeat(4, 1, 1, 1), 300, encoder_hidden_states=text.repeat(4, 1, 1)).sample  # 2 branches × 2 keyframes
        y, text_y = _inputs(unet, 1, seed=1)  # a different source branch: the edit branch must change
        mixed = unet(torch.cat([y, y, x, x]), 300, encoder_hidden_states=torch.cat([text_y, text_y, text, text])).sample
        state.active = set()
        uninjected = unet(torch.cat([y, y, x, x]), 300, encoder_hidden_states=torch.cat([text_y, text_y, text, text])).sample
    finally:
        restore()
    for k in range(4):
        torch.testing.assert_close(out[k:k + 1], plain, atol=1e-5, rtol=1e-4)
    assert (mixed[2:3] - plain).abs().max() > 1e-3
    torch.testing.assert_close(uninjected[2:3], plain, atol=1e-5, rtol=1e-4)


@torch.no_grad()
def test_propagation_on_identical_frames_reproduces_the_keyframe_attention():
    torch.manual_seed(0)
    attn = Attention(query_dim=16, heads=2, dim_head=8).eval()
    T, N, nb, keys = 7, 12, 3, [2, 5]
    frame = torch.randn(nb, 1, N, 16)  # each branch its own frame, repeated over time
    video = frame.expand(nb, T, N, 16).reshape(nb * T, N, 16)
    state = TokenFlowState(n_branches=nb, active={"attn"}, mode="keyframes", keyframes=keys)
    proc = TokenFlowAttnProcessor(state, inject=True)
    key_out = proc(attn, frame.expand(nb, len(keys), N, 16).reshape(nb * len(keys), N, 16))
    state.mode = "propagate"
    prop = proc(attn, video).view(nb, T, N, 16)
    expected = key_out.view(nb, len(keys), N, 16)[:, :1].expand(nb, T, N, 16)
    torch.testing.assert_close(prop, expected, atol=1e-6, rtol=1e-6)


def test_propagation_takes_nearest_tokens_and_blends_by_distance():
    prev, nxt, w = neighbours(7, [1, 4])
    assert prev.tolist() == [0, 0, 0, 0, 1, 1, 1] and nxt.tolist() == [0, 0, 1, 1, 1, 1, 1]
    assert w.tolist() == pytest.approx([1, 1, 2 / 3, 1 / 3, 1, 1, 1])
    torch.manual_seed(0)
    attn = Attention(query_dim=8, heads=1, dim_head=8).eval()
    state = TokenFlowState(n_branches=1, mode="keyframes", keyframes=[0, 2])
    proc = TokenFlowAttnProcessor(state, inject=False)
    key_in = torch.randn(2, 5, 8)
    key_out = proc(attn, key_in)
    state.mode = "propagate"
    perm = torch.randperm(5)
    mid = (key_in[0, perm] * 1.0)[None]  # frame 1 shows keyframe 0's tokens, permuted
    video = torch.cat([key_in[:1], mid, key_in[1:]])
    prop = proc(attn, video)
    sim = torch.nn.functional.normalize(mid[0], dim=-1) @ torch.nn.functional.normalize(key_in[1], dim=-1).T
    expected_mid = 0.5 * key_out[0, perm] + 0.5 * key_out[1, sim.argmax(-1)]
    torch.testing.assert_close(prop[1], expected_mid)
    torch.testing.assert_close(prop[0], key_out[0])
    torch.testing.assert_close(prop[2], key_out[1])


def test_config_holds_the_published_defaults(compose):
    """TokenFlow's paper/code: seed 1, CFG 7.5, 50 steps, 500 inversion steps, 512² or 384×672, Q/K 50%, conv 80%."""
    cfg = compose("method=tokenflow", "models=svd").method
    assert (cfg.seed, cfg.guidance_scale, cfg.steps, cfg.inversion_steps) == (1, 7.5, 50, 500)
    assert [list(s) for s in cfg.sizes] == [[512, 512], [384, 672]] and cfg.keep_aspect is False
    assert dict(cfg.injection_until) == {"attn": 0.5, "conv": 0.8}
    assert "overrides" not in cfg.backbone and len(cfg.backbone.revision) == 40
