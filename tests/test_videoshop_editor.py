"""The Videoshop editor and svd_no_src on tiny random-weight SVD components (CPU, offline)."""
from __future__ import annotations

import dataclasses
import math
import time

import numpy as np
import PIL.Image
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

import run
from harness.method import NonFiniteEdit
from harness.results import RunDir
from harness.weights import MissingWeights
from videoshop.models import load_svd
from videoshop.pipeline import Videoshop
from videoshop.svd import resize_frames
from videoshop.svd_no_src import SVDNoSource

ABLATIONS = ["videoshop_no_norm", "videoshop_no_rescale", "videoshop_no_extrapolation", "videoshop_paper", "bdia"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models are all per-op overhead: on a shared 2-core machine intra-op threads only add contention
    (measured: 2.8 s of CPU per edit with 1 thread, 22 s with 2 under load)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def sample(sample_track):
    return sample_track.load(sample_track.ids()[0])


@pytest.fixture(scope="module")
def short(sample):
    """The first sample cut to 4 frames: the ablation tests need every variant's output, not 14 frames of it."""
    return dataclasses.replace(sample, source=sample.source[:4].copy())


def _method(compose, name, *overrides):
    return instantiate(compose(f"method={name}", "device=cpu", *overrides).method)


def test_default_run_is_videoshop_on_the_sample_track_with_tiny_models(compose):
    cfg = compose()
    assert (cfg.method.name, cfg.dataset.name, cfg.models.name) == ("videoshop", "sample", "tiny")


def test_release_defaults_cost_26_unet_calls_and_repeat_bit_for_bit(compose, sample):
    m = _method(compose, "videoshop")
    a, b = m.edit(sample, 42), m.edit(sample, 42)
    assert a.nfe == 26  # 13 inversion + 13 CFG-batched generation calls
    assert a.frames.shape == sample.source.shape and a.frames.dtype == np.uint8
    assert np.array_equal(a.frames, b.frames)
    assert not np.array_equal(a.frames, m.edit(sample, 7).frames)


def test_each_ablation_changes_the_output(compose, short):
    base = _method(compose, "videoshop").edit(short, 42).frames
    for name in ABLATIONS:
        m = _method(compose, name)
        out = m.edit(short, 42)
        assert out.frames.shape == short.source.shape
        assert not np.array_equal(out.frames, base), name
        assert out.nfe == (25 if name == "bdia" else 26), name  # BDIA: 13 inversion + 12 from the state pair


def test_ablation_configs_flip_exactly_their_switch(compose):
    full = OmegaConf.to_container(compose("method=videoshop").method, resolve=True)
    expected = {"videoshop_no_norm": {"norm": "none"}, "videoshop_no_rescale": {"rescale": False},
                "videoshop_no_extrapolation": {"inversion": "naive"}, "videoshop_no_threshold": {"threshold": None},
                "bdia": {"inversion": "bdia"},
                "videoshop_paper": {"norm": "channel", "noise": "fresh", "standardize_source_latents": False}}
    for name, switch in expected.items():
        cfg = OmegaConf.to_container(compose(f"method={name}").method, resolve=True)
        diff = {k: v for k, v in cfg.items() if full.get(k) != v and k != "name"}
        assert diff == switch, name
    assert _method(compose, "videoshop").svd is _method(compose, "bdia").svd  # SVD loaded once per process
    sweep = OmegaConf.load(run.REPO_ROOT / "conf/experiment/table5.yaml").hydra.sweeper.params.method.split(",")
    assert sweep == ["videoshop", "videoshop_no_norm", "videoshop_no_rescale", "videoshop_no_extrapolation",
                     "videoshop_no_threshold"]


def test_no_threshold_raises_nonfinite_with_its_cost(compose, short):
    with pytest.raises(NonFiniteEdit) as e:
        _method(compose, "videoshop_no_threshold").edit(short, 42)
    assert e.value.nfe == 13  # stopped after the inversion


def test_no_threshold_row_is_nan_and_the_run_goes_on(compose, tmp_path):
    run.main(compose("method=videoshop_no_threshold", "dataset.limit=2", "device=cpu"))
    rd = RunDir(tmp_path / "results" / "sample" / "tiny" / "videoshop_no_threshold")
    rows = list(rd.rows())
    assert len(rows) == 2 and all(r.status == "nan" for r in rows)
    assert all(r.scores and all(math.isnan(v) for v in r.scores.values()) for r in rows)
    assert all(r.costs.nfe == 13 for r in rows)


@pytest.mark.parametrize("steps", [3])
def test_svd_no_src_equals_the_diffusers_pipeline(compose, sample, steps):
    m = _method(compose, "svd_no_src", f"method.steps={steps}")
    assert isinstance(m, SVDNoSource)
    image = resize_frames(sample.edited_frame[None], m.size)[0]
    ours = m.latents(image, 4, seed=3)
    pipe = m.svd.pipeline(counted=False)
    ref = pipe(PIL.Image.fromarray(image), height=m.size[0], width=m.size[1], num_frames=4,
               num_inference_steps=steps, min_guidance_scale=1.0, max_guidance_scale=3.0, fps=7,
               motion_bucket_id=127, noise_aug_strength=0.02, generator=torch.Generator().manual_seed(3),
               output_type="latent").frames
    assert ours.shape == ref.shape
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)  # float32 rounding of σ and c_in only
    out = m.edit(dataclasses.replace(sample, source=sample.source[:4]), 3)
    assert out.nfe == steps and out.frames.shape == (4, *sample.source.shape[1:])


def test_tiny_components_round_trip_through_the_real_loader(compose, tmp_path):
    cfg = compose("method=videoshop")
    tiny = load_svd(cfg.models.svd_backbone, "cpu")
    tiny.save_pretrained(tmp_path / "stable-video-diffusion-img2vid")
    real_entry = OmegaConf.to_container(compose("models=svd").models.svd_backbone, resolve=True)
    real_entry.update(root=str(tmp_path), dtype="float32")
    loaded = load_svd(real_entry, "cpu")
    assert loaded is not tiny and not loaded.tiny
    for name in ("unet", "vae", "image_encoder"):
        a, b = getattr(tiny, name).state_dict(), getattr(loaded, name).state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    public = lambda c: {k: v for k, v in c.items() if not k.startswith("_")}  # noqa: E731
    assert public(loaded.scheduler.config) == public(tiny.scheduler.config)
    assert loaded.feature_extractor.to_dict() == tiny.feature_extractor.to_dict()
    assert load_svd(real_entry, "cpu") is loaded  # loaded once per process


def test_missing_real_weights_fail_fast_and_say_what_to_do(compose, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty_cache"))
    for extra in ([f"models.root={tmp_path / 'nowhere'}"], []):
        t0 = time.perf_counter()
        with pytest.raises(Exception) as e:  # hydra wraps it in an InstantiationException, message included
            _method(compose, "videoshop", "models=svd", *extra)
        assert time.perf_counter() - t0 < 10
        assert isinstance(e.value.__cause__, MissingWeights)
        assert "models.root" in str(e.value) and "models=tiny" in str(e.value)


def test_unknown_inversion_is_a_clear_error(compose):
    with pytest.raises(ValueError, match="inversion must be extrapolate, naive or bdia"):
        Videoshop("videoshop", backbone=compose().models.svd_backbone, inversion="ddim")
