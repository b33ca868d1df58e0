"""Spacetime with a tiny ZeroScope (UNet3DConditionModel): the feature loss against a hand-written reference and its
true invariances, the truncated UNet (later blocks never run, features equal a full forward's, no gradient reaches
the weights, the UNet restored), the optimization lowering the loss, the schedule, seeding, and end to end."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import run
from baselines import ddim, spacetime
from harness.results import RunDir
from tests.conftest import first_sample, tiny_method

pytestmark = pytest.mark.usefixtures("one_thread")


def _reference_loss(source: torch.Tensor, target: torch.Tensor) -> float:
    """The code's loop, written out: for each anchor i, 1 − mean_j cos(g_j − g_i, s_j − s_i) with cos of a zero vector 0."""
    s, g = source.double().mean(dim=(2, 3)), target.double().mean(dim=(2, 3))
    T = len(s)
    total = 0.0
    for i in range(T):
        cos = []
        for j in range(T):
            a, b = g[j] - g[i], s[j] - s[i]
            na, nb = float(a.norm()), float(b.norm())
            cos.append(0.0 if na == 0 or nb == 0 else float(a @ b) / (na * nb))
        total += 1 - sum(cos) / T
    return total / T


def _features(T=5, C=3, seed=0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(T, C, 4, 6, generator=g), torch.randn(T, C, 4, 6, generator=g)


def test_feature_loss_matches_the_codes_loop_written_by_hand():
    for seed in range(3):
        source, target = _features(seed=seed)
        assert float(spacetime.smm_diff_loss(source, target)) == pytest.approx(_reference_loss(source, target), abs=1e-6)


def test_feature_loss_floor_and_its_true_invariances():
    """Identical features: every pair j ≠ i has cosine 1 and the zero self-pair 0, so the loss is 1/T (the code's
    constant floor, no gradient). A shift common to all frames cancels in the differences, and so does a positive
    scale of the target; a per-frame shift does not."""
    source, target = _features(T=5)
    assert float(spacetime.smm_diff_loss(source, source)) == pytest.approx(1 / 5, abs=1e-6)
    base = float(spacetime.smm_diff_loss(source, target))
    common = torch.randn(1, 3, 1, 1) + torch.randn(1, 3, 4, 6)  # the same for every frame (any spatial pattern)
    assert float(spacetime.smm_diff_loss(source + 2 * common, target + common)) == pytest.approx(base, abs=1e-5)
    assert float(spacetime.smm_diff_loss(source, 3.5 * target)) == pytest.approx(base, abs=1e-5)
    per_frame = torch.randn(5, 3, 1, 1)
    assert abs(float(spacetime.smm_diff_loss(source, target + per_frame)) - base) > 1e-3


def test_truncated_forward_stops_after_up_block_1_with_the_full_forwards_features():
    method = tiny_method("spacetime")
    unet = method.m.unet
    g = torch.Generator().manual_seed(0)
    x, text = torch.randn(1, 4, 3, 8, 16, generator=g), torch.randn(1, 77, 32, generator=g)
    t = torch.tensor(501)
    later = [unet.up_blocks[2], unet.up_blocks[3], unet.conv_norm_out, unet.conv_act, unet.conv_out]
    calls, full = [], {}
    handles = [m.register_forward_hook(lambda *a, i=i: calls.append(i)) for i, m in enumerate(later)]
    handles += [unet.get_submodule(n).register_forward_hook(lambda m, i, o, n=n: full.__setitem__(n, o.clone()))
                for n in spacetime.FEATURES]
    try:
        with spacetime.TruncatedFeatures(unet) as features:
            cut = features(x, t, text)
        assert calls == []  # nothing after the cut ran
        unet(x, t, encoder_hidden_states=text)
        assert sorted(calls) == list(range(len(later)))  # the counting hooks do see a full forward
    finally:
        for h in handles:
            h.remove()
    assert list(cut) == list(spacetime.FEATURES)
    for name in spacetime.FEATURES:
        assert cut[name].shape[0] == 3  # frames first: (batch·frames) × C × h × w
        torch.testing.assert_close(cut[name], full[name], rtol=0, atol=0)
    h, w = cut["up_blocks.1.temp_convs.1"].shape[-2:]
    assert cut["up_blocks.1.upsamplers.0"].shape[-2:] == (2 * h, 2 * w)


def test_the_real_unet_has_the_hooked_modules_and_missing_weights_are_a_clear_error(tmp_path):
    """ZeroScope's UNet (the default `UNet3DConditionModel` config, built on the meta device: no weights) has the cut
    and the three feature modules in its second up block; real weights that are absent raise `MissingWeights`."""
    from diffusers import UNet3DConditionModel
    from diffusers.models.unets.unet_3d_blocks import CrossAttnUpBlock3D
    from omegaconf import OmegaConf

    from baselines import components
    from harness.weights import MissingWeights

    with torch.device("meta"):
        unet = UNet3DConditionModel()
    assert isinstance(unet.get_submodule(spacetime.CUT), CrossAttnUpBlock3D) and len(unet.up_blocks) == 4
    assert [type(unet.get_submodule(n)).__name__ for n in spacetime.FEATURES] == ["Conv2d", "TemporalConvLayer", "Upsample2D"]
    missing = OmegaConf.create({"repo": "cerspense/zeroscope_v2_576w", "revision": None, "root": str(tmp_path), "tiny": False})
    with pytest.raises(MissingWeights, match="zeroscope_v2_576w"):
        components.load_zeroscope(missing, "cpu")


def _guided_inputs(method, frames=3):
    g = torch.Generator().manual_seed(1)
    shape = (1, 4, frames, 8, 16)
    source_latent, x = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
    source, target = method._text("a dog running"), method._text("a cat running")
    return x, source_latent, source, target


def _loss(method, x, t, source_latent, source, target) -> float:
    with spacetime.TruncatedFeatures(method.m.unet) as features:
        src, tgt = features(source_latent, t, source), features(x, t, target)
    return float(sum(spacetime.smm_diff_loss(src[k], tgt[k]) for k in spacetime.FEATURES))


@torch.no_grad()  # as the harness calls methods: the optimization must enable gradients itself
def test_ten_adam_steps_lower_the_loss_and_no_gradient_reaches_the_weights():
    method = tiny_method("spacetime")
    method.optimization_steps = 10  # the published count (the tiny overrides lower it for the end-to-end runs)
    unet = method.m.unet
    x, source_latent, source, target = _guided_inputs(method)
    t = torch.tensor(761)
    before = _loss(method, x, t, source_latent, source, target)
    with spacetime.TruncatedFeatures(unet) as features:
        out, losses = method.optimize(x, t, source_latent, source, target, 0.05, features)
    after = _loss(method, out, t, source_latent, source, target)
    assert len(losses) == 10 and losses[0] == pytest.approx(before, rel=1e-5)
    assert after < before and losses[-1] < losses[0]
    assert not out.requires_grad and not torch.equal(out, x)
    assert all(p.grad is None for p in unet.parameters())


def test_the_edit_restores_the_unet_and_freezes_it_while_optimizing(sample_track, monkeypatch):
    method = tiny_method("spacetime")
    unet = method.m.unet
    g = torch.Generator().manual_seed(2)
    x, text = torch.randn(1, 4, 2, 8, 16, generator=g), torch.randn(1, 77, 32, generator=g)
    with torch.no_grad():
        plain = unet(x, 301, encoder_hidden_states=text).sample
    trainable = list(unet.parameters())[::7]
    for p in trainable:  # a caller's flags, which the edit must give back
        p.requires_grad_(True)
    hooks = sum(len(m._forward_hooks) for m in unet.modules())
    frozen = []
    call = spacetime.TruncatedFeatures.__call__

    def recording(self, *args):
        frozen.append(not any(p.requires_grad for p in self.unet.parameters()))
        return call(self, *args)

    monkeypatch.setattr(spacetime.TruncatedFeatures, "__call__", recording)
    method.edit(first_sample(sample_track, 2), 0)
    assert frozen and all(frozen)
    assert [p.requires_grad for p in unet.parameters()] == [any(p is q for q in trainable) for p in unet.parameters()]
    unet.requires_grad_(False)
    assert sum(len(m._forward_hooks) for m in unet.modules()) == hooks
    assert all(p.grad is None for p in unet.parameters())
    with torch.no_grad():
        torch.testing.assert_close(unet(x, 301, encoder_hidden_states=text).sample, plain, rtol=0, atol=0)


def test_optimization_lowers_the_feature_loss_at_every_guided_step(sample_track, monkeypatch):
    """During a real edit, each guided step's optimized latent has a lower feature loss than the latent it started
    from. Without the optimization (optimization_steps=0, or `optimize` skipped) this fails."""
    method = tiny_method("spacetime")
    seen = []
    optimize = spacetime.Spacetime.optimize

    def recording(self, x, t, source_latent, source, target, lr, features):
        out, losses = optimize(self, x, t, source_latent, source, target, lr, features)
        seen.append((x.clone(), out.clone(), t, source_latent, source, target))
        return out, losses

    monkeypatch.setattr(spacetime.Spacetime, "optimize", recording)
    edit = method.edit(first_sample(sample_track, 3), 0)
    _, guided = method.schedule()
    assert len(seen) == guided == edit.info["guided_steps"] == 2
    for x, out, t, source_latent, source, target in seen:
        assert _loss(method, out, t, source_latent, source, target) < _loss(method, x, t, source_latent, source, target)


def test_published_schedule_learning_rates_and_inversion_timesteps():
    """50 steps: timesteps 981, …, 1, the first 20 optimized with lr 0.007 → 0.004; the 999-step inversion keeps a
    latent at every sampling timestep; restart makes 2·50 − 1 CFG calls."""
    method = tiny_method("spacetime")
    method.steps = 50
    timesteps, guided = method.schedule()
    assert timesteps.tolist() == list(range(981, 0, -20)) and guided == 20
    rates = method.learning_rates(guided)
    assert rates[0] == pytest.approx(0.007) and rates[-1] == pytest.approx(0.004) and np.all(np.diff(rates) < 0)
    traj = ddim.invert(lambda x, t: torch.zeros_like(x), torch.zeros(1, 1, 1, 1, 1), method.scheduler.config, 999)
    assert set(timesteps.tolist()) <= set(traj.latents) and max(traj.latents) == 999


def test_low_frequency_initialization_keeps_the_latents_low_and_the_noises_high_frequencies():
    g = torch.Generator().manual_seed(3)
    latent, noise = torch.randn(1, 4, 3, 16, 32, generator=g), torch.randn(1, 4, 3, 16, 32, generator=g)
    torch.testing.assert_close(spacetime.low_freq_init(latent, latent, 4), latent)
    flat = torch.full_like(latent, 0.7) + torch.randn(1, 4, 3, 1, 1, generator=g)  # one value per channel and frame
    torch.testing.assert_close(spacetime.low_freq_init(flat, torch.zeros_like(noise), 4), flat)  # the low-pass keeps it
    mixed = spacetime.low_freq_init(latent, noise, 4)
    torch.testing.assert_close(mixed - spacetime.low_freq_init(latent, torch.zeros_like(noise), 4),
                               spacetime.low_freq_init(torch.zeros_like(latent), noise, 4))


@pytest.mark.slow
def test_the_seed_makes_the_edit(sample_track):
    method = tiny_method("spacetime")
    sample = first_sample(sample_track, 3)
    a, b, c = method.edit(sample, 0), method.edit(sample, 0), method.edit(sample, 1)
    assert np.array_equal(a.frames, b.frames)
    assert np.abs(a.frames.astype(float) - c.frames).mean() > 0.5


@pytest.mark.slow
def test_runs_end_to_end_on_the_sample_track(compose, tmp_path):
    cfg = compose("method=spacetime", "models=tiny", "dataset.limit=2", "metrics=basic", "device=cpu")
    run.main(cfg)
    rd = RunDir(tmp_path / "results" / "sample" / "tiny" / "spacetime")
    rows = rd.rows()
    assert len(rows) == 2
    from data.sample_track import SampleTrack

    track = SampleTrack(data_dir=cfg.data_dir)
    over = cfg.models.zeroscope.overrides
    guided = over.steps - int(over.steps * cfg.method.min_guidance_timestep)
    for row in rows:
        assert row.status == "ok", row.error
        info = row.info
        assert json.loads(json.dumps(info)) == info
        src = track.load(row.sample_id).source
        assert len(src) == 14 and rd.load_video(row.sample_id).shape == src.shape  # 14 frames in, 14 out
        assert info["nfe_inversion"] == info["inversion_steps"] == over.inversion_steps
        assert info["nfe_sampling"] == 2 * over.steps - 1  # CFG step, restart and again, but at the last step
        assert row.costs.nfe == info["nfe_inversion"] + info["nfe_sampling"]
        assert info["guided_steps"] == info["nfe_source_features"] == guided
        assert info["optimization_passes"] == guided * over.optimization_steps
        assert [name for name, _ in info["phases"]] == ["encode", "condition", "invert", "generate", "decode"]
        assert info["prompt_origin"] == "dataset" and info["target_prompt"] == track.load(row.sample_id).target_prompt
        assert info["edit_prompt"] == cfg.method.prompt_prefix + info["target_prompt"]
        assert info["seed"] == cfg.seed and info["working_size"] == list(over.sizes[0]) and info["hand_tuned"] is False
