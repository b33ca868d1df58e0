"""Videoshop's math against references: diffusers' Euler step, closed-form denoisers, exact round trips."""
from __future__ import annotations

import pytest
import torch
from diffusers import EulerDiscreteScheduler

from videoshop.edm import euler_step, euler_step_inverse, model_output_for, schedule
from videoshop.inversion import bdia_invert, bdia_sample, invert, sample
from videoshop.latents import normalize, rescale
from videoshop.models import SVD_SCHEDULER_CONFIG


@pytest.fixture(scope="module")
def sigmas() -> list[float]:
    """The release's schedule: 25 Karras steps, strength 0.55."""
    return schedule(EulerDiscreteScheduler.from_config(SVD_SCHEDULER_CONFIG), 25, 0.55)


def test_schedule_is_the_release_one(sigmas):
    assert len(sigmas) - 1 == 13 and sigmas[-1] == 0.0
    assert sigmas[0] == pytest.approx(15.59, abs=0.01)  # index 12 of 25 (spec)
    up = sigmas[::-1][:-1]  # σ_t of each inversion step
    assert sum(s > 1 for s in up) == 5 and sum(s <= 1 for s in up) == 8  # spec: 5 above Σ = 1, 8 below


def test_euler_step_matches_diffusers_scheduler(sigmas):
    sched = EulerDiscreteScheduler.from_config(SVD_SCHEDULER_CONFIG)
    sched.set_timesteps(25)
    sched.set_begin_index(12)
    g = torch.Generator().manual_seed(0)
    x, F = torch.randn(2, 3, 4, 8, generator=g) * 15, torch.randn(2, 3, 4, 8, generator=g)
    for i, t in enumerate(sched.timesteps[12:]):
        ref = sched.step(F, t, x).prev_sample
        ours = euler_step(x, F, sigmas[i], sigmas[i + 1])
        torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
        x = ref


def test_inverse_step_undoes_the_euler_step(sigmas):
    g = torch.Generator().manual_seed(1)
    for s_lo, s_hi in zip(sigmas[::-1][:-1], sigmas[::-1][1:]):
        x_hi = torch.randn(64, generator=g, dtype=torch.float64) * (1 + s_hi)
        F = torch.randn(64, generator=g, dtype=torch.float64)
        x_lo = euler_step(x_hi, F, s_hi, s_lo)
        torch.testing.assert_close(euler_step_inverse(x_lo, F, s_lo, s_hi), x_hi, rtol=1e-12, atol=1e-12)


def _recorded(F):
    seen = []

    def G(x, s):
        seen.append((s, x.clone()))
        return F(x, s)

    return G, seen


def test_point_mass_extrapolated_inversion_is_exact(sigmas):
    """D(x;σ) = μ: trajectories are straight lines to μ, so Eq. 6 lands on them and regenerating from the inverted
    latent revisits every inversion state above Σ exactly; below Σ only the release's fixed noise stays on one line."""
    mu = torch.randn(1, 2, 4, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    F = lambda x, s: model_output_for(x, mu.expand_as(x), s)  # noqa: E731
    levels = sigmas[::-1][1:]  # σ_{t+1} of each inversion step
    for noise in ("fixed", "fresh"):
        G, seen = _recorded(F)
        xT = invert(G, mu, sigmas, threshold=1.0, noise=noise, generator=torch.Generator().manual_seed(3))
        inv_states = [x for _, x in seen]  # where the inversion evaluated the model: σ_1 … σ_N
        seen.clear()
        sample(G, xT, sigmas)
        regen = [x for _, x in seen][::-1]  # the sampler's states at σ_1 … σ_N
        rel = {s: ((a - b).abs().max() / (b - mu).abs().max()).item() for s, a, b in zip(levels, inv_states, regen)}
        # above Σ (σ_t > 1, i.e. evaluating at the last five levels) the round trip is exact
        assert max(rel[s] for s in levels[-5:]) < 1e-12, rel
        below = max(rel[s] for s in levels[:-5])
        assert below < 1e-12 if noise == "fixed" else below > 0.1, (noise, rel)


def _mixture_denoiser(means, weights, s):
    """Exact D(x;σ) of an elementwise 1-D Gaussian mixture Σ w_k N(μ_k, s²) under VE noise σ."""

    def D(x, sigma):
        v = s**2 + sigma**2
        r = torch.softmax(torch.log(weights) - (x[..., None] - means) ** 2 / (2 * v), -1)
        return (r * (means + s**2 / v * (x[..., None] - means))).sum(-1)

    return lambda x, sigma: model_output_for(x, D(x, sigma), sigma)


@pytest.mark.parametrize("s", [0.1, 0.2, 0.3])
def test_mixture_extrapolation_reconstructs_better_than_naive(sigmas, s):
    """Exact mixture denoiser: extrapolating at every level above σ = 0 beats naive inversion by ≥ 15 % (MAE)."""
    means = torch.tensor([-1.0, 0.5, 1.5], dtype=torch.float64)
    weights = torch.tensor([0.3, 0.4, 0.3], dtype=torch.float64)
    g = torch.Generator().manual_seed(4)
    k = torch.multinomial(weights, 4096, replacement=True, generator=g)
    x0 = (means[k] + s * torch.randn(4096, dtype=torch.float64, generator=g)).reshape(1, 4, 4, 16, 16)
    F = _mixture_denoiser(means, weights, s)
    mae = {}
    for mode in ("extrapolate", "naive"):
        xT = invert(F, x0, sigmas, mode=mode, threshold=0.0, generator=torch.Generator().manual_seed(5))
        mae[mode] = (sample(F, xT, sigmas) - x0).abs().mean().item()
    assert mae["extrapolate"] < 0.85 * mae["naive"], mae


def test_bdia_inversion_is_exact_for_the_same_model(sigmas):
    means = torch.tensor([-1.0, 1.0], dtype=torch.float64)
    F = _mixture_denoiser(means, torch.tensor([0.5, 0.5], dtype=torch.float64), 0.2)
    x0 = torch.randn(1, 2, 4, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    pair = bdia_invert(F, x0, sigmas, gamma=0.94)
    torch.testing.assert_close(bdia_sample(F, pair, sigmas, gamma=0.94), x0, rtol=1e-9, atol=1e-9)


def test_no_threshold_divides_by_zero_sigma(sigmas):
    x0 = torch.randn(1, 2, 4, 8, 8)
    xT = invert(lambda x, s: 0.5 * x, x0, sigmas, threshold=None)
    assert torch.isnan(xT).all()


def test_normalize_and_rescale_statistics():
    g = torch.Generator().manual_seed(7)
    x = torch.randn(1, 5, 4, 6, 8, generator=g) * torch.linspace(0.5, 3, 5)[None, :, None, None, None] + 2
    f = normalize(x, "frame").flatten(2)
    torch.testing.assert_close(f.mean(-1), torch.zeros(1, 5), atol=1e-5, rtol=0)
    torch.testing.assert_close(f.std(-1), torch.ones(1, 5), atol=1e-4, rtol=0)
    c = normalize(x, "channel").transpose(1, 2).flatten(2)
    torch.testing.assert_close(c.std(-1), torch.ones(1, 4), atol=1e-5, rtol=0)
    assert torch.equal(normalize(x, "none"), x)
    ref = torch.randn(1, 4, 6, 8, generator=g) * 0.7 - 1
    out = rescale(x, ref)
    torch.testing.assert_close(out[:, 0].flatten(2).mean(-1), ref.flatten(2).mean(-1), atol=1e-5, rtol=0)
    torch.testing.assert_close(out[:, 0].flatten(2).std(-1), ref.flatten(2).std(-1), atol=1e-5, rtol=0)
    # one affine map per channel for every frame: frame differences only scale
    ratio = (out[:, 2] - out[:, 1]) / (x[:, 2] - x[:, 1])
    torch.testing.assert_close(ratio, ratio[..., :1, :1].expand_as(ratio), rtol=1e-4, atol=1e-4)
