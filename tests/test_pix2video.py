"""Pix2Video with tiny SD 2 depth components: end to end, cross-frame attention against attention computed by
hand, the reduction to independent per-frame editing, inversion round trip, and the public defaults."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

import run
from baselines import injection, pix2video, resize
from harness.results import RunDir
from tests.conftest import first_sample, tiny_method

pytestmark = pytest.mark.usefixtures("one_thread")

ROUND_TRIP_TOL = 0.015  # mean |x0 − reconstruction| after 200 DDIM steps each way (tiny UNet, fp32)


def _inputs(method: pix2video.Pix2Video, sample):
    """Working-size latents, depth and prompt embeddings of `sample`, as the edit computes them."""
    h, w = resize.working_size(sample.size, method.sizes)
    frames = resize.to_working(sample.source, h, w, "cpu")
    vae = method.m.vae
    x0 = vae.encode(frames).latent_dist.mean * vae.config.scaling_factor
    text = [method._text(p) for p in ("", "a source prompt", "a target prompt")]
    return x0, method.depth(frames), text


def _hand_attention(attn, query_input: torch.Tensor, kv_input: torch.Tensor) -> torch.Tensor:
    """softmax(Q Kᵀ/√d) V per head, Q from `query_input`, K and V from `kv_input` (B×M×C), then the output projection."""
    b, n, _ = query_input.shape
    heads = attn.heads
    q, k, v = attn.to_q(query_input), attn.to_k(kv_input), attn.to_v(kv_input)
    d = q.shape[-1] // heads
    q, k, v = (x.view(b, -1, heads, d).transpose(1, 2) for x in (q, k, v))
    weights = torch.softmax(q @ k.transpose(-1, -2) / d ** 0.5, dim=-1)
    out = (weights @ v).transpose(1, 2).reshape(b, n, heads * d)
    return attn.to_out[1](attn.to_out[0](out))


@pytest.mark.slow
def test_runs_end_to_end_on_the_sample_track(compose, tmp_path):
    cfg = compose("method=pix2video", "models=tiny", "dataset.limit=2", "metrics=basic", "device=cpu")
    run.main(cfg)
    rows = RunDir(tmp_path / "results" / "sample" / "tiny" / "pix2video").rows()
    assert len(rows) == 2
    steps = cfg.models.sd2_depth.overrides.steps
    for row in rows:
        assert row.status == "ok", row.error
        assert row.costs.nfe == steps + 14 * steps  # one batched inversion call per step, one CFG call per step and frame
        info = row.info
        assert (info["nfe_inversion"], info["nfe_sampling"]) == (steps, 14 * steps)
        assert [name for name, _ in info["phases"]] == ["depth", "encode", "condition", "invert", "generate", "decode"]
        assert info["prompt_origin"] == "dataset" and info["inversion_prompt"] == info["source_prompt"]
        assert info["cross_frame"] and info["latent_update"] and info["dtype"] == "float32"


@torch.no_grad()
def test_decoder_attention_takes_keys_and_values_from_anchor_and_previous_frame(sample_track, monkeypatch):
    """Hooked processors during an edit of 3 frames: frame 0 attends to itself, frame 1 to [0 ‖ 0] (the code's
    concatenation; the same as frame 0 alone), frame 2 to [0 ‖ 1], at the same step, layer and CFG branch."""
    method = tiny_method("pix2video")
    calls = []
    real_call = injection.CrossFrameKVProcessor.__call__

    def recording_call(self, attn, hidden_states, *args, **kwargs):
        out = real_call(self, attn, hidden_states, *args, **kwargs)
        calls.append((self.layer, self.state.step, attn, hidden_states.clone(), out.clone()))
        return out

    monkeypatch.setattr(injection.CrossFrameKVProcessor, "__call__", recording_call)
    method.edit(first_sample(sample_track, 3), 0)
    monkeypatch.undo()
    layers = {layer for layer, *_ in calls}
    unet = method.m.unet
    decoder = {n for n, m in unet.named_modules() if n.startswith("up_blocks.") and n.endswith("attn1")}
    assert layers == decoder and len(decoder) == 9  # SD 2's nine decoder self-attentions
    per_frame = len(calls) // 3
    assert per_frame == method.steps * len(decoder)
    frames = [{(layer, step): (attn, h, out) for layer, step, attn, h, out in calls[f * per_frame:(f + 1) * per_frame]}
              for f in range(3)]
    for key, (attn, h2, out2) in frames[2].items():
        h0, h1 = frames[0][key][1], frames[1][key][1]
        assert h2.shape[0] == 2  # the CFG pair, each row attending to its own branch's stores
        torch.testing.assert_close(frames[0][key][2], _hand_attention(attn, h0, h0), atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(frames[1][key][2], _hand_attention(attn, frames[1][key][1], torch.cat([h0, h0], 1)),
                                   atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(out2, _hand_attention(attn, h2, torch.cat([h0, h1], 1)), atol=1e-5, rtol=1e-4)
    assert dict(unet.attn_processors).keys() == {n + ".processor" for n, m in unet.named_modules() if hasattr(m, "processor")}
    assert not any(isinstance(p, injection.CrossFrameKVProcessor) for p in unet.attn_processors.values())


@torch.no_grad()
def test_frame_1_depends_on_frame_0_through_cross_frame_attention(sample_track):
    """Changing frame 0's x_T changes frame 1's output with cross-frame attention, and not without it."""
    method = tiny_method("pix2video", latent_update=False)
    x0, depth, (empty, source, target) = _inputs(method, first_sample(sample_track, 2))
    x_T = method.invert(x0, depth, source)
    moved = x_T.clone()
    moved[0] = torch.randn(moved[0].shape, generator=torch.Generator().manual_seed(0))
    a, _ = method.generate(x_T, depth, empty, target, method.guidance_scale)
    b, _ = method.generate(moved, depth, empty, target, method.guidance_scale)
    assert (a[1] - b[1]).abs().max() > 1e-3
    method.cross_frame = False
    a, _ = method.generate(x_T, depth, empty, target, method.guidance_scale)
    b, _ = method.generate(moved, depth, empty, target, method.guidance_scale)
    torch.testing.assert_close(a[1], b[1])


@torch.no_grad()
def test_latent_update_pulls_toward_the_previous_frames_prediction(sample_track, monkeypatch):
    """Without cross-frame attention, frame 1 differs from its independent edit only by the update
    x_{t-1} -= 2w(x̂0 − x̂0_prev)/numel at steps i <= until·steps: replayed here from the recorded DDIM steps."""
    method = tiny_method("pix2video", cross_frame=False)
    x0, depth, (empty, source, target) = _inputs(method, first_sample(sample_track, 2))
    x_T = method.invert(x0, depth, source)
    steps = []
    real_step = method.scheduler.step

    def recording_step(eps, t, x):
        result = real_step(eps, t, x)
        steps.append((x, result.prev_sample, result.pred_original_sample))
        return result

    monkeypatch.setattr(method.scheduler, "step", recording_step)
    out, _ = method.generate(x_T, depth, empty, target, method.guidance_scale)
    n = method.steps
    prev_x0 = [p for _, _, p in steps[:n]]
    for i, (x_in, prev_sample, x0_hat) in enumerate(steps[n:]):
        nxt = steps[n + i + 1][0] if i + 1 < n else out[1:]
        expected = prev_sample - 2 * 100.0 * (x0_hat - prev_x0[i]) / x0_hat.numel() if i <= n // 2 else prev_sample
        torch.testing.assert_close(nxt, expected)
    assert (steps[n + 1][0] - steps[n][1]).abs().max() > 0  # the update did move frame 1


@torch.no_grad()
def test_without_cross_frame_and_update_it_is_independent_per_frame_editing(sample_track, monkeypatch):
    """`cross_frame: false`, `latent_update: false`: the edit's latents equal a per-frame loop written here with the
    same UNet and the public code's DDIM formulas (`next_step`/`prev_step`, two UNet calls per step)."""
    method = tiny_method("pix2video", cross_frame=False, latent_update=False)
    sample = first_sample(sample_track, 2)
    decoded = []
    vae = method.m.vae
    real_decode = vae.decode
    monkeypatch.setattr(vae, "decode", lambda z: decoded.append(z) or real_decode(z))
    edit = method.edit(sample, 0)
    monkeypatch.undo()
    latents = torch.cat(decoded) * vae.config.scaling_factor

    x0, depth, (empty, _, _) = _inputs(method, sample)
    source, target = method._text(edit.info["source_prompt"]), method._text(edit.info["target_prompt"])
    unet, alphas = method.m.unet, method.scheduler.alphas_cumprod
    n, gap = method.steps, 1000 // method.steps
    timesteps = [gap * k for k in range(n)]  # 0, gap, …: steps_offset 0 as in the code
    alpha = lambda t: alphas[t] if t >= 0 else alphas[0]  # noqa: E731 (set_alpha_to_one=False)

    def eps(x, d, t, cond, scale):
        uncond_eps = unet(torch.cat([x, d], 1), t, encoder_hidden_states=empty).sample
        cond_eps = unet(torch.cat([x, d], 1), t, encoder_hidden_states=cond).sample
        return uncond_eps + scale * (cond_eps - uncond_eps)

    reference = []
    for f in range(2):
        x, d = x0[f:f + 1], depth[f:f + 1]
        for t in timesteps:  # inversion: x at t − gap → x at t, guidance 1, source prompt
            e = eps(x, d, t, source, 1.0)
            a_from, a_to = alpha(t - gap), alpha(t)
            x = a_to.sqrt() * (x - (1 - a_from).sqrt() * e) / a_from.sqrt() + (1 - a_to).sqrt() * e
        for t in reversed(timesteps):  # sampling: x at t → x at t − gap, CFG
            e = eps(x, d, t, target, method.guidance_scale)
            a_from, a_to = alpha(t), alpha(t - gap)
            x = a_to.sqrt() * (x - (1 - a_from).sqrt() * e) / a_from.sqrt() + (1 - a_to).sqrt() * e
        reference.append(x)
    torch.testing.assert_close(latents, torch.cat(reference), atol=1e-4, rtol=1e-4)


@pytest.mark.slow
@torch.no_grad()
def test_inversion_then_reconstruction_returns_the_source_latents(sample_track):
    """DDIM inversion, then sampling with the source prompt and guidance 1, returns x0 up to DDIM's first-order
    discretization error, which the random tiny UNet makes large at few steps (mean |error| measured: 0.11 at
    10 steps, 0.032 at 50, 0.0093 at 200, for latents of mean |x0| 0.053): within ROUND_TRIP_TOL at 200 steps,
    and shrinking with the step count."""
    errors = {}
    for steps in (50, 200):
        method = tiny_method("pix2video", f"models.sd2_depth.overrides.steps={steps}", cross_frame=False,
                             latent_update=False)
        x0, depth, (_, source, _) = _inputs(method, first_sample(sample_track, 1))
        x_T = method.invert(x0, depth, source)
        back, nfe = method.generate(x_T, depth, source, source, 1.0)
        assert nfe == steps
        assert (x_T - x0).abs().mean() > 3 * x0.abs().mean()  # the inversion went somewhere
        errors[steps] = (back - x0).abs().mean().item()
    assert errors[200] < ROUND_TRIP_TOL and errors[200] < errors[50] / 2


def test_depth_is_scaled_to_the_latent_grid_in_minus_one_to_one(sample_track):
    method = tiny_method("pix2video")
    x0, depth, _ = _inputs(method, first_sample(sample_track, 3))
    assert depth.shape == (3, 1, *x0.shape[-2:])
    flat = depth.flatten(1)
    torch.testing.assert_close(flat.amin(1), -torch.ones(3))
    torch.testing.assert_close(flat.amax(1), torch.ones(3))


def test_config_holds_the_public_defaults(compose):
    """duyguceylan/pix2video code/test_cfg.py: 50 DDIM steps, CFG 7.5, 512×512 squash, anchor + previous frame,
    per-frame latent update with weight 100 for steps i <= 25, fp32; SD 2 depth at a pinned revision."""
    cfg = compose("method=pix2video", "models=svd").method
    assert (cfg.steps, cfg.guidance_scale, cfg.negative_prompt) == (50, 7.5, "")
    assert [list(s) for s in cfg.sizes] == [[512, 512]] and cfg.keep_aspect is False
    assert cfg.cross_frame and not cfg.anchor_only and cfg.latent_update
    assert (cfg.latent_update_weight, cfg.latent_update_until, cfg.dtype) == (100.0, 0.5, "float32")
    assert cfg.backbone.repo == "stabilityai/stable-diffusion-2-depth" and len(cfg.backbone.revision) == 40
    assert "overrides" not in cfg.backbone
    assert pix2video.SCHEDULER["steps_offset"] == 0 and not pix2video.SCHEDULER["set_alpha_to_one"]


def test_a_flat_depth_map_scales_to_minus_one_not_nan(monkeypatch):
    """A depth estimator that sees no depth cue returns a constant map; min–max scaling must not divide by zero."""
    method = tiny_method("pix2video")
    frames = torch.zeros(2, 3, 64, 64)

    class Flat(torch.nn.Module):
        def forward(self, pixel_values):
            return SimpleNamespace(predicted_depth=torch.ones(len(pixel_values), 16, 16))

    monkeypatch.setattr(method.m, "depth_estimator", Flat())
    depth = method.depth(frames)
    assert torch.isfinite(depth).all() and (depth == -1).all()
