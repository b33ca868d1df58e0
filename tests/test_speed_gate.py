"""The fast path and its tolerance gate (videoshop/speed.py, videoshop/gate.py) on tiny models: the gate passes a
speed-up that changes nothing beyond rounding, fails one that changes outputs, and speed is not part of a run's
identity."""
from __future__ import annotations

import pytest
import torch

from harness.runner import fingerprint_config
from videoshop import gate
from videoshop.speed import Speed

pytestmark = pytest.mark.usefixtures("one_thread")

CAPTURE = ["speed.compile=aot_eager", "speed.channels_last=true", "speed.sdpa=[math]", "metrics=basic", "threads=null"]


@pytest.mark.slow
def test_the_gate_passes_a_compiled_channels_last_unet():
    """Graph capture (aot_eager: dynamo's graph, no generated code), NHWC convolutions and the math attention kernel
    give the eager path's frames within rounding: every value within 2 levels, every score within tolerance."""
    torch._dynamo.reset()
    result = gate.run_gate(CAPTURE, n=1)
    assert result.passed, result.as_dict()
    assert "compile='aot_eager'" in result.speed and "channels_last=True" in result.speed
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > 0  # the UNet really ran compiled
    sample = result.samples[0]
    assert sample["pixels"]["share_within"] >= gate.PIXEL_SHARE and sample["pixels"]["max_abs"] <= 2
    assert {"ssim", "gt_psnr", "gt_ssim"} <= set(sample["scores"])


@pytest.mark.slow
def test_the_gate_fails_a_speed_up_that_changes_the_output(monkeypatch):
    """A "fast path" whose UNet output is off by 5% is caught: pixels and scores both fail."""
    import harness.cache

    monkeypatch.setattr(harness.cache, "_CACHE", {})  # the broken components stay out of the process's model cache
    apply = Speed.apply

    def wrong(self, unet, vae):
        apply(self, unet, vae)
        if self.eager:  # the reference path stays right
            return
        unet.register_forward_hook(lambda m, i, out: (out[0] * 1.05,) + tuple(out[1:]) if isinstance(out, tuple)
                                   else type(out)(sample=out.sample * 1.05))

    monkeypatch.setattr(Speed, "apply", wrong)
    result = gate.run_gate(["speed.channels_last=true", "metrics=basic", "threads=null"], n=1)
    assert not result.passed
    assert result.samples[0]["pixels"]["share_within"] < gate.PIXEL_SHARE
    assert gate.main(["--samples", "1", "speed.channels_last=true", "metrics=basic", "threads=null"]) == 1


def test_compare_and_score_tolerances_by_hand():
    import numpy as np

    a = np.zeros((2, 4, 4, 3), np.uint8)
    b = a.copy()
    b[0, 0, 0, 0] = 3
    assert gate.compare(a, b) == {"share_within": 1 - 1 / a.size, "max_abs": 3, "mean_abs": 3 / a.size}
    agree = gate.scores_agree({"x": 1.0, "y": float("nan"), "z": 0.5}, {"x": 1.0105, "y": float("nan")}, 1e-3, 1e-2)
    assert agree["x"]["ok"] and agree["y"]["ok"] and not agree["z"]["ok"]  # 0.0105 ≤ 0.001 + 0.01; z is missing
    assert not gate.scores_agree({"x": 1.0}, {"x": 1.02}, 1e-3, 1e-2)["x"]["ok"]


def test_speed_settings_resolve_per_device_and_are_checked():
    fast = {"compile": "auto", "mode": "max-autotune-no-cudagraphs", "channels_last": "auto", "sdpa": ["flash", "math"]}
    on_gpu, on_cpu = Speed.from_config(fast, "cuda"), Speed.from_config(fast, "cpu")
    assert on_gpu == Speed("inductor", "max-autotune-no-cudagraphs", True, ("flash", "math"))
    assert on_cpu == Speed(None, None, False, ("flash", "math"))
    assert Speed.from_config(None, "cuda").eager and Speed.from_config({"compile": None}, "cpu").eager
    with pytest.raises(ValueError, match="unknown backends"):
        Speed.from_config({"sdpa": ["fastest"]}, "cpu")


def test_speed_is_not_part_of_a_runs_identity(compose):
    base = fingerprint_config(compose("method=videoshop"), uses_models=True)
    assert fingerprint_config(compose("method=videoshop", "speed=fast"), uses_models=True) == base
    assert fingerprint_config(compose("method=videoshop", "method.guidance=2"), uses_models=True) != base


@pytest.mark.slow
def test_the_gate_at_full_size_edits_random_clips_on_random_weights(monkeypatch, compose):
    """`--full-size` swaps the backbone for random weights of the configured architecture (here the tiny one, so
    that it runs on a CPU) and edits random clips at the working size: both paths, same clips."""
    from omegaconf import OmegaConf

    import videoshop.models

    tiny = OmegaConf.to_container(compose().models.svd_backbone, resolve=True)
    monkeypatch.setattr(videoshop.models, "SVD_FULL", {k: tiny[k] for k in ("unet", "vae", "clip")})
    result = gate.run_gate(["speed.channels_last=true", "metrics=basic", "threads=null", "method.num_frames=3"],
                           n=2, full_size=True)
    assert result.passed and [s["sample"] for s in result.samples] == ["random0", "random1"]
    assert "gt_psnr" not in result.samples[0]["scores"]  # random clips have no ground truth
