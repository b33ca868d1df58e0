"""TokenFlow with tiny SD 2.1-base components: end to end, PnP injection, extended attention, propagation, and
the two variants (the released code, the paper's text)."""
from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from diffusers.models.attention_processor import Attention, AttnProcessor2_0
from omegaconf import OmegaConf

import run
from baselines import components, tokenflow
from baselines.tokenflow import TokenFlowAttnProcessor, TokenFlowState, install, neighbours
from harness.results import RunDir
from tests.conftest import tiny_method

TINY = OmegaConf.create({"kind": "sd21", "repo": "stabilityai/stable-diffusion-2-1-base", "tiny": True, "seed": 0})
ATTN = ["up_blocks.1.attentions.1.transformer_blocks.0.attn1", "up_blocks.2.attentions.0.transformer_blocks.0.attn1",
        "up_blocks.3.attentions.2.transformer_blocks.0.attn1"]
CONV = "up_blocks.1.resnets.1.conv2"


pytestmark = pytest.mark.usefixtures("one_thread")


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


def test_injection_changes_the_edit(sample_track):
    full = sample_track.load(sample_track.ids()[0])
    sample = dataclasses.replace(full, source=full.source[:4])
    edit = tiny_method("tokenflow", "method.group_size=2").edit(sample, 0)
    without = tiny_method("tokenflow", "method.group_size=2",
                          injection_until={"attn": 0, "conv": 0}).edit(sample, 0).frames
    assert np.abs(edit.frames.astype(float) - without).mean() > 0.5
    info = edit.info
    assert json.loads(json.dumps(info)) == info
    assert all(isinstance(v, (str, int, float, bool, list)) for v in info.values()), info
    assert info["working_size"] == [48, 80]  # the wide tiny size (TokenFlow's 384×672) for this 7:4 clip
    assert (info["target_prompt"], info["prompt_origin"], info["seed"]) == (sample.target_prompt, "dataset", 1)
    assert info["variant"] == "release"
    assert info["nfe_inversion"] + info["nfe_sampling"] == edit.nfe


def test_square_clips_run_square(sample_track):
    full = sample_track.load(sample_track.ids()[0])
    sample = dataclasses.replace(full, source=full.source[:2, :, :256], edited_frame=full.edited_frame[:, :256],
                                 mask=None if full.mask is None else full.mask[:, :256])
    edit = tiny_method("tokenflow", "method.group_size=2").edit(sample, 0)
    assert edit.info["working_size"] == [64, 64]  # the square tiny size (TokenFlow's 512×512), not stretched wide
    assert edit.frames.shape == sample.source.shape


def test_configured_layers_and_processors():
    """Extended attention on every self-attention; Q/K injection on the 8 decoder attn1 of PnP; one conv2 hook."""
    method = tiny_method("tokenflow", "method.group_size=2")
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


@pytest.mark.parametrize("variant", tokenflow.VARIANTS)
@torch.no_grad()
def test_keyframe_pass_with_an_identical_source_branch_equals_plain_attention(variant):
    """Source = edit branch and identical keyframes: injected Q/K and extended attention change nothing."""
    from diffusers import UNet2DConditionModel

    unet = components.load(TINY, {"unet": UNet2DConditionModel}, "cpu").unet
    x, text = _inputs(unet, 1)
    plain = unet(x, 300, encoder_hidden_states=text).sample
    state = TokenFlowState(n_branches=2, active={"attn", "conv"}, mode="keyframes", keyframes=[0, 1], variant=variant)
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


@pytest.mark.parametrize("variant", tokenflow.VARIANTS)
@torch.no_grad()
def test_propagation_on_identical_frames_reproduces_the_keyframe_attention(variant):
    torch.manual_seed(0)
    attn = Attention(query_dim=16, heads=2, dim_head=8).eval()
    T, N, nb, keys = 6, 12, 3, [2, 5]  # groups of 3
    frame = torch.randn(nb, 1, N, 16)  # each branch its own frame, repeated over time
    video = frame.expand(nb, T, N, 16).reshape(nb * T, N, 16)
    state = TokenFlowState(n_branches=nb, active={"attn"}, mode="keyframes", keyframes=keys, variant=variant)
    proc = TokenFlowAttnProcessor(state, inject=True)
    key_out = proc(attn, frame.expand(nb, len(keys), N, 16).reshape(nb * len(keys), N, 16))
    state.mode = "propagate"
    prop = proc(attn, video).view(nb, T, N, 16)
    expected = key_out.view(nb, len(keys), N, 16)[:, :1].expand(nb, T, N, 16)
    torch.testing.assert_close(prop, expected, atol=1e-6, rtol=1e-6)


def test_paper_propagation_takes_nearest_tokens_and_blends_by_distance():
    prev, nxt, w = neighbours("paper", 7, [1, 4])
    assert prev.tolist() == [0, 0, 0, 0, 1, 1, 1] and nxt.tolist() == [0, 0, 1, 1, 1, 1, 1]
    assert w.tolist() == pytest.approx([1, 1, 2 / 3, 1 / 3, 1, 1, 1])
    torch.manual_seed(0)
    attn = Attention(query_dim=8, heads=1, dim_head=8).eval()
    state = TokenFlowState(n_branches=1, mode="keyframes", keyframes=[0, 2], variant="paper")
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


def _expected_weights(variant: str, num_frames: int, keyframes: list[int]) -> list[tuple[int, int, float]]:
    """(first keyframe, second keyframe, first one's weight) per frame, written out from each variant's definition."""
    rows = []
    n = num_frames // len(keyframes)
    for f in range(num_frames):
        if variant == "paper":  # previous and next keyframe in time, linear in the distance
            a = max(i for i, k in enumerate(keyframes) if k <= f) if keyframes[0] <= f else 0
            b = min(i for i, k in enumerate(keyframes) if k >= f) if keyframes[-1] >= f else len(keyframes) - 1
            ka, kb = keyframes[a], keyframes[b]
            rows.append((a, b, 1.0 if ka == kb else (kb - f) / (kb - ka)))
        else:  # own group g and group g-1; sigmoid of distances to the groups' middle frames g·n + n//2
            g = f // n
            if g == 0:
                rows.append((0, 0, 1.0))
                continue
            d_own, d_prev = abs(f - (g * n + n // 2)), abs(f - ((g - 1) * n + n // 2))
            rows.append((g, g - 1, 1 / (1 + math.exp(-d_prev / (d_own + d_prev)))))
    return rows


@pytest.mark.parametrize("variant", tokenflow.VARIANTS)
@pytest.mark.parametrize("num_frames,keyframes", [(14, [3, 10]), (14, [0, 13]), (12, [1, 5, 10]), (14, [1, 2, 4, 7, 9, 10, 13])])
def test_propagation_weights_are_each_variants_closed_form(variant, num_frames, keyframes):
    first, second, w = neighbours(variant, num_frames, keyframes)
    got = list(zip(first.tolist(), second.tolist(), w.tolist()))
    for (a, b, wa), (ea, eb, ew) in zip(got, _expected_weights(variant, num_frames, keyframes), strict=True):
        assert (a, b) == (ea, eb) and wa == pytest.approx(ew, abs=1e-6)


def test_the_variants_blend_differently():
    """14 frames, keyframes 3 and 10: frame 13 takes 100% of keyframe 10 in the paper and 68/32 (10/3) in the
    released code; frame 5 takes 71/29 (3/10) in the paper and 100% of keyframe 3 in the released code."""
    first, second, w = neighbours("paper", 14, [3, 10])
    assert (first[13], second[13], w[13]) == (1, 1, 1.0) and (first[5], second[5]) == (0, 1) and w[5] == pytest.approx(5 / 7)
    first, second, w = neighbours("release", 14, [3, 10])
    assert (first[13], second[13]) == (1, 0) and w[13] == pytest.approx(0.683, abs=1e-3)
    assert (first[5], second[5], w[5]) == (0, 0, 1.0)


@pytest.mark.parametrize("variant", tokenflow.VARIANTS)
@torch.no_grad()
def test_propagation_blends_nearest_tokens_with_the_variants_weights(variant):
    """Four frames in groups of 2, keyframes 0 and 2: each frame's output is its variant's blend of the two
    keyframes' outputs at the nearest tokens (cosine similarity of the attention inputs)."""
    torch.manual_seed(0)
    attn = Attention(query_dim=8, heads=1, dim_head=8).eval()
    nb, N, keys = 2, 5, [0, 2]
    state = TokenFlowState(n_branches=nb, mode="keyframes", keyframes=keys, variant=variant)
    proc = TokenFlowAttnProcessor(state, inject=False)
    key_in = torch.randn(nb, len(keys), N, 8)
    key_out = proc(attn, key_in.reshape(-1, N, 8)).view(nb, len(keys), N, 8)
    video = torch.stack([key_in[:, 0], key_in[:, 0, torch.randperm(N)], key_in[:, 1], torch.randn(nb, N, 8)], dim=1)
    state.mode = "propagate"
    prop = proc(attn, video.reshape(-1, N, 8)).view(nb, 4, N, 8)
    normed = torch.nn.functional.normalize
    for f, (a, b, w) in enumerate(_expected_weights(variant, 4, keys)):
        nn_a = (normed(video[0, f], dim=-1) @ normed(key_in[0, a], dim=-1).T).argmax(-1)
        nn_b = (normed(video[0, f], dim=-1) @ normed(key_in[0, b], dim=-1).T).argmax(-1)
        torch.testing.assert_close(prop[:, f], w * key_out[:, a, nn_a] + (1 - w) * key_out[:, b, nn_b])
    if variant == "release":  # frame 3 (group 1) blends its own keyframe 2 with group 0's keyframe 0
        assert _expected_weights(variant, 4, keys)[3] == (1, 0, pytest.approx(0.7311, abs=1e-4))  # sigmoid(1)


@pytest.mark.parametrize("variant", tokenflow.VARIANTS)
@torch.no_grad()
def test_keyframe_pass_source_branch_attention(variant, monkeypatch):
    """Released code: the source branch attends within each keyframe (keys of length N); the paper variant
    extends it over all keyframes like the edit branches (keys of length K·N)."""
    torch.manual_seed(0)
    attn = Attention(query_dim=16, heads=2, dim_head=8).eval()
    N, nb, keys = 6, 3, [1, 4, 8]
    K = len(keys)
    x = torch.randn(nb, K, N, 16)  # distinct keyframes in every branch
    state = TokenFlowState(n_branches=nb, mode="keyframes", keyframes=keys, variant=variant)
    proc = TokenFlowAttnProcessor(state, inject=False)
    calls = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def recording_sdpa(q, k, v, *args, **kwargs):
        calls.append((q.shape[0], k.shape[-2]))  # (rows attended together, key length)
        return sdpa(q, k, v, *args, **kwargs)

    monkeypatch.setattr(tokenflow.F, "scaled_dot_product_attention", recording_sdpa)
    out = proc(attn, x.reshape(nb * K, N, 16)).view(nb, K, N, 16)
    monkeypatch.undo()
    assert calls == ([(K, N), (nb - 1, K * N)] if variant == "release" else [(nb, K * N)])

    plain = AttnProcessor2_0()

    def extended(branch: int, frame: int) -> torch.Tensor:
        return plain(attn, x[branch, frame][None], encoder_hidden_states=x[branch].reshape(1, K * N, 16))[0]

    for f in range(K):
        for b in range(1, nb):
            torch.testing.assert_close(out[b, f], extended(b, f))
        own_frame = plain(attn, x[0, f][None])[0]
        torch.testing.assert_close(out[0, f], own_frame if variant == "release" else extended(0, f))
    assert (plain(attn, x[0, 0][None])[0] - extended(0, 0)).abs().max() > 1e-3  # the two are distinguishable


@pytest.mark.parametrize("variant", tokenflow.VARIANTS)
@torch.no_grad()
def test_edit_uses_its_variants_starting_latent_and_weights(variant, sample_track, monkeypatch):
    """Hooks on a whole edit: the latent of the first propagation pass (the starting latent) and the weights
    propagation used, against closed forms computed here from the inversion and the scheduler's ᾱ."""
    full = sample_track.load(sample_track.ids()[0])
    sample = dataclasses.replace(full, source=full.source[:4])  # two groups of 2
    trajectories, weights, calls = [], [], []
    invert, real_neighbours, real_install = tokenflow.ddim.invert, tokenflow.neighbours, tokenflow.install

    def recording_invert(*args, **kwargs):
        trajectories.append(invert(*args, **kwargs))
        return trajectories[-1]

    def recording_neighbours(v, num_frames, keyframes):
        result = real_neighbours(v, num_frames, keyframes)
        weights.append((v, num_frames, list(keyframes), result))
        return result

    def recording_install(unet, state, *args):
        restore = real_install(unet, state, *args)
        handle = unet.register_forward_pre_hook(lambda _, inputs: calls.append((state.mode, list(state.keyframes), inputs[0].clone())))

        def undo():
            handle.remove()
            restore()

        return undo

    monkeypatch.setattr(tokenflow.ddim, "invert", recording_invert)
    monkeypatch.setattr(tokenflow, "neighbours", recording_neighbours)
    monkeypatch.setattr(tokenflow, "install", recording_install)
    # inverted up to t=876, sampling from 751
    method = tiny_method("tokenflow", "method.group_size=2", "models.sd21.overrides.inversion_steps=8", variant=variant)
    edit = method.edit(sample, 0)
    assert edit.info["variant"] == variant

    (traj,) = trajectories
    sched = method.m.scheduler
    t0, t_last = int(sched.timesteps[0]), max(traj.latents)
    assert t_last > t0
    a0, a_last = sched.alphas_cumprod[t0].double(), sched.alphas_cumprod[t_last].double()
    x0, z_last = traj.latents[-1].double(), traj.latents[t_last].double()
    renoised = a0.sqrt() * x0 + (1 - a0).sqrt() * (z_last - a_last.sqrt() * x0) / (1 - a_last).sqrt()
    inverted = traj.latents[t0].double()
    assert (renoised - inverted).abs().max() > 1e-2
    T = sample.num_frames
    modes = [mode for mode, _, _ in calls]
    assert modes == ["keyframes", "propagate"] * method.steps
    start = calls[1][2][T:2 * T].double()  # the propagation pass's batch: [source, x, x]
    torch.testing.assert_close(start, renoised if variant == "release" else inverted, atol=1e-5, rtol=1e-5)

    assert weights and all(v == variant and n == T for v, n, _, _ in weights)
    for _, n, keys, (first, second, w) in weights:
        expected = _expected_weights(variant, n, keys)
        assert [(a, b) for a, b, _ in expected] == list(zip(first.tolist(), second.tolist()))
        assert w.tolist() == pytest.approx([e for _, _, e in expected], abs=1e-6)


def test_unknown_variant_is_refused():
    from hydra.errors import InstantiationException

    with pytest.raises(InstantiationException, match="variant='official', expected one of"):
        tiny_method("tokenflow", "method.group_size=2", variant="official")


def test_config_holds_the_published_defaults(compose):
    """TokenFlow's paper/code: seed 1, CFG 7.5, 50 steps, 500 inversion steps, 512² or 384×672, Q/K 50%, conv 80%."""
    cfg = compose("method=tokenflow", "models=svd").method
    assert (cfg.seed, cfg.guidance_scale, cfg.steps, cfg.inversion_steps) == (1, 7.5, 50, 500)
    assert cfg.variant == "release"  # the code that produced the published results
    assert [list(s) for s in cfg.sizes] == [[512, 512], [384, 672]] and cfg.keep_aspect is False
    assert dict(cfg.injection_until) == {"attn": 0.5, "conv": 0.8}
    assert "overrides" not in cfg.backbone and len(cfg.backbone.revision) == 40
