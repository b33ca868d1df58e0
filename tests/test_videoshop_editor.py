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
    base = _method(compose, "videoshop", "method.num_frames=4").edit(short, 42).frames
    for name in ABLATIONS:
        m = _method(compose, name, "method.num_frames=4")
        out = m.edit(short, 42)
        assert out.frames.shape == short.source.shape
        assert not np.array_equal(out.frames, base), name
        assert out.nfe == (25 if name == "bdia" else 26), name  # BDIA: 13 inversion + 12 from the state pair


def test_ablation_configs_flip_exactly_their_switch(compose):
    full = OmegaConf.to_container(compose("method=videoshop").method, resolve=True)
    expected = {"videoshop_no_norm": {"norm": "none", "standardize_source_latents": False},
                "videoshop_no_rescale": {"rescale": False},
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


def test_every_switch_acts_on_its_own(compose, short):
    """No switch is tied to another in code: under norm=none the source standardization still changes the edit."""
    a, b = (_method(compose, "videoshop_no_norm", "method.num_frames=4", f"method.standardize_source_latents={v}")
            for v in (True, False))
    assert (a.norm, a.standardize_source_latents, b.standardize_source_latents) == ("none", True, False)
    assert not np.array_equal(a.edit(short, 42).frames, b.edit(short, 42).frames)


def test_clip_length_must_match_the_backbone(compose, short):
    for name in ("videoshop", "svd_no_src"):
        assert compose(f"method={name}").method.num_frames == 14
        assert compose(f"method={name}", "models=svd_xt").method.num_frames == 25
        with pytest.raises(ValueError, match=r"has 4 frames but the SVD backbone is set for 14 \(models.svd_backbone"):
            _method(compose, name).edit(short, 42)


def test_clip_sees_the_original_frame_resized_straight_to_224(compose, short):
    """As the release: CLIP input = original image, bilinear antialiased resize to 224×224, CLIP mean/std
    (torchvision's transforms as the reference), not the 576×1024 working frame."""
    import torchvision.transforms.functional as TF

    m = _method(compose, "videoshop", "method.num_frames=4")
    seen = []
    hook = m.svd.image_encoder.register_forward_pre_hook(lambda mod, args, kwargs: seen.append(
        (kwargs.get("pixel_values") if "pixel_values" in kwargs else args[0]).clone()), with_kwargs=True)
    try:
        m.edit(short, 42)
    finally:
        hook.remove()
    mean, std = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]
    for got, image in zip(seen, (short.source[0], short.edited_frame)):
        x = torch.from_numpy(image).permute(2, 0, 1).float() / 255.0
        ref = TF.normalize(TF.resize(x, [224, 224], interpolation=TF.InterpolationMode.BILINEAR, antialias=True), mean, std)
        torch.testing.assert_close(got[0], ref, rtol=1e-5, atol=1e-5)
    assert len(seen) == 2


def test_fp16_vae_upcasts_for_the_image_latents_like_the_pipeline(compose):
    """svd_no_src encodes its conditioning image in fp32 when an fp16 VAE sets force_upcast (diffusers does);
    the VAE is left in fp16."""
    from videoshop import svd

    c = dataclasses.replace(load_svd(compose().models.svd_backbone, "cpu"))
    vae32 = c.vae
    c.vae = type(vae32).from_config(vae32.config).eval()
    c.vae.load_state_dict(vae32.state_dict())
    c.vae.half()
    assert c.vae.config.force_upcast
    x = torch.rand(1, 3, 64, 112, generator=torch.Generator().manual_seed(0)) * 2 - 1
    up = svd.encode(c, x, upcast=True)
    assert c.vae.dtype == torch.float16
    with torch.no_grad():
        ref = c.vae.float().encode(x).latent_dist.mode()[None]
    c.vae.half()
    torch.testing.assert_close(up, ref, rtol=0, atol=0)
    assert not torch.equal(svd.encode(c, x), up)  # without the upcast: fp16 arithmetic


def test_no_threshold_raises_nonfinite_with_its_cost(compose, short):
    with pytest.raises(NonFiniteEdit) as e:
        _method(compose, "videoshop_no_threshold", "method.num_frames=4").edit(short, 42)
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
    m = _method(compose, "svd_no_src", f"method.steps={steps}", "method.num_frames=4")
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


def test_benchmark_builds_the_configured_editor_and_times_each_pass(compose, monkeypatch):
    """The benchmark's editor is conf/method/videoshop.yaml's (settings and seed from the config, size and frames
    from the flags); warm figures by default; UNet calls timed apart for the inversion (batch 1) and CFG (batch 2)."""
    from videoshop import benchmark

    seen = {}
    monkeypatch.setattr(benchmark, "measure", lambda overrides, repeats, throughput: seen.update(o=overrides, r=repeats) or {})
    benchmark.main(["--frames", "3", "--height", "64", "--width", "112", "--steps", "4", "--device", "cpu",
                    "method.guidance=2.5"])
    assert seen["r"] == 2
    monkeypatch.undo()
    tiny = OmegaConf.to_container(compose().models.svd_backbone, resolve=True)
    r = benchmark.measure(seen["o"], architecture={k: tiny[k] for k in ("unet", "vae", "clip")}, throughput=2)
    full = OmegaConf.to_container(compose("method=videoshop").method, resolve=True)
    expected = {k: v for k, v in full.items() if k not in ("backbone", "_target_", "device")}
    expected.update(num_frames=3, height=64, width=112, steps=4, guidance=2.5)
    assert r["method_config"] == expected and r["seed"] == 42
    assert r["repeats"] == 2 and r["reported"].startswith("last")
    assert r["unet_calls_inversion"] == r["unet_calls_generation"] == 2 and r["nfe"] == 4  # int(4·0.55) = 2 each
    assert r["seconds_per_unet_call_inversion"] > 0 and r["seconds_per_unet_call_generation"] > 0
    assert set(r["phases"]) == {"encode", "condition", "invert", "generate", "decode"}
    assert r["loops_s"] < sum(r["phases"].values()) <= r["seconds_per_edit"]
    steady = r["throughput"]  # two more edits, run as stage=edit runs them: in turn, then with overlap
    assert steady["edits"] == 2
    for mode in ("in_turn", "overlap"):
        m = steady[mode]
        assert m["edits_per_hour"] == pytest.approx(3600 * 2 / m["seconds"])
        assert set(m["mean_phase_s"]) == {"encode", "condition", "invert", "generate", "decode"}
        assert 0 < sum(m["mean_phase_s"].values()) * 2 <= m["seconds"]
        assert m["mean_between_edits_s"] > 0  # at least the first sample's reading and the last one's writing
