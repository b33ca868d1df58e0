"""AnyV2V with tiny I2VGen-XL components, and the helpers it shares with TokenFlow (DDIM inversion, resizing, injection)."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

import run
from baselines import components, ddim, injection, resize
from harness.results import RunDir



@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models run fastest single-threaded; two threads on a shared 2-core machine oversubscribe badly."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


TINY = OmegaConf.create({"kind": "i2vgen", "repo": "ali-vilab/i2vgen-xl", "tiny": True, "seed": 0})


def _method(**kw):
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from tests.conftest import REPO

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["method=anyv2v", "models=tiny", "device=cpu"])
    return instantiate(cfg.method, **kw)


@pytest.mark.slow
def test_runs_end_to_end_on_the_sample_track(compose, tmp_path):
    cfg = compose("method=anyv2v", "models=tiny", "dataset.limit=1", "device=cpu")
    run.main(cfg)
    rd = RunDir(tmp_path / "results" / "sample" / "tiny" / "anyv2v")
    (row,) = rd.rows()
    assert row.status == "ok", row.error
    over = cfg.models.i2vgen.overrides
    assert row.costs.nfe == over.inversion_steps + over.steps - over.first_step
    from data.sample_track import SampleTrack

    ds = SampleTrack(data_dir=cfg.data_dir)
    src = ds.load(row.sample_id).source
    out = rd.load_video(row.sample_id)
    assert out.shape == src.shape
    assert np.abs(out.astype(float) - src).mean() > 5  # not the identity


def test_injection_changes_the_edit(sample_track):
    full = sample_track.load(sample_track.ids()[0])
    sample = dataclasses.replace(full, source=full.source[:5])  # AnyV2V takes any frame count; fewer is faster
    with_inj = _method().edit(sample, 0).frames
    without = _method(injection_until={"conv": 0, "spatial": 0, "temporal": 0}).edit(sample, 0).frames
    assert with_inj.shape == without.shape == sample.source.shape
    assert np.abs(with_inj.astype(float) - without).mean() > 0.5
    np.testing.assert_array_equal(_method().edit(sample, 123).frames, with_inj)  # the published seed, whatever the run's


def test_non_finite_latents_raise_with_their_cost(sample_track):
    from harness.method import NonFiniteEdit

    full = sample_track.load(sample_track.ids()[0])
    sample = dataclasses.replace(full, source=full.source[:3])
    method = _method(guidance_scale=float("inf"))
    with pytest.raises(NonFiniteEdit) as err:
        method.edit(sample, 0)
    assert err.value.nfe == method.inversion_steps + 1


def _unet_inputs(unet, batch: int, frames: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    cfg = unet.config
    return dict(
        sample=torch.randn(batch, 4, frames, 8, 8, generator=g),
        timestep=torch.tensor(500),
        fps=torch.full((batch,), 8),
        image_latents=torch.randn(batch, 4, frames, 8, 8, generator=g),
        image_embeddings=torch.randn(batch, 1, cfg.cross_attention_dim, generator=g),
        encoder_hidden_states=torch.randn(batch, 7, cfg.cross_attention_dim, generator=g),
    )


LAYERS = {
    "spatial": ["up_blocks.1.attentions.1", "up_blocks.2.attentions.0", "up_blocks.3.attentions.2"],
    "temporal": ["up_blocks.1.temp_attentions.1", "up_blocks.3.temp_attentions.0"],
}


@torch.no_grad()
def test_injection_from_an_identical_source_branch_equals_plain_attention():
    from diffusers import I2VGenXLUNet

    unet = components.load(TINY, {"unet": I2VGenXLUNet}, "cpu").unet
    one = _unet_inputs(unet, 1)
    plain = unet(**one).sample
    state = injection.InjectionState(n_branches=2, active={"conv", "spatial", "temporal"})
    restore = injection.install(unet, state, LAYERS, {"conv": ["up_blocks.1.resnets.1"]})
    try:
        both = {k: torch.cat([v, v]) if v.ndim else v for k, v in one.items()}
        injected = unet(**both).sample
        other = _unet_inputs(unet, 1, seed=1)  # a different source branch: the edit half must change
        mixed = {k: torch.cat([other[k], one[k]]) if v.ndim else v for k, v in one.items()}
        changed = unet(**mixed).sample[1:]
        state.active = set()
        unchanged = unet(**mixed).sample[1:]
    finally:
        restore()
    torch.testing.assert_close(injected[1:], plain, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(injected[:1], plain, atol=1e-5, rtol=1e-4)
    assert (changed - plain).abs().max() > 1e-3
    torch.testing.assert_close(unchanged, plain, atol=1e-5, rtol=1e-4)
    assert all(type(p).__name__ != "QKInjectionProcessor" for p in unet.attn_processors.values())


def test_ddim_inversion_is_exact_for_a_constant_noise_prediction():
    """With ε(x, t) = c, DDIM (eq. 12, σ = 0) run backwards then forwards returns x0 (a closed form)."""
    from diffusers import DDIMScheduler

    sched = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
                          set_alpha_to_one=False, steps_offset=1)
    x0 = torch.randn(2, 4, 8, 8, dtype=torch.float64)
    c = torch.randn_like(x0)
    traj = ddim.invert(lambda x, t: c, x0, sched.config, 10)
    assert len(traj.latents) == 11
    sched.set_timesteps(10)
    x = traj.at(sched.timesteps[0])
    for t in sched.timesteps:
        x = sched.step(c, t, x).prev_sample
    torch.testing.assert_close(x, x0, atol=1e-8, rtol=1e-6)
    assert traj.at(sched.timesteps[3]) is traj.latents[int(sched.timesteps[3])]


def test_resize_round_trip():
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (3, 16, 24, 3), dtype=np.uint8)
    same = resize.to_benchmark(resize.to_working(frames, 16, 24, "cpu"), 16, 24)
    np.testing.assert_array_equal(same, frames)
    smooth = np.broadcast_to(np.linspace(0, 255, 24, dtype=np.float32)[None, None, :, None], (2, 16, 24, 3)).astype(np.uint8)
    back = resize.to_benchmark(resize.to_working(smooth, 32, 32, "cpu"), 16, 24)
    assert back.shape == smooth.shape
    assert np.abs(back.astype(float) - smooth).mean() < 3


def test_prompts_from_the_dataset_else_captions_of_both_first_frames(sample_track):
    from baselines.prompts import captioner, prompts

    cap_cfg = OmegaConf.create({"tiny": True, "seed": 0, "max_new_tokens": 5})
    sample = sample_track.load(sample_track.ids()[0])
    assert prompts(sample, cap_cfg, "cpu") == (sample.source_prompt, sample.target_prompt, "dataset")
    bare = dataclasses.replace(sample, source_prompt=None, target_prompt=None)
    src, tgt, origin = prompts(bare, cap_cfg, "cpu")
    cap = captioner(cap_cfg, "cpu")
    assert origin == "captioner"
    assert (src, tgt) == (cap([sample.source[0]])[0], cap([sample.edited_frame])[0])


@torch.no_grad()
def test_real_loading_path_reads_a_saved_model_folder():
    """The tiny build saved to disk loads through `models.root` + `from_pretrained`, as real weights do."""
    from diffusers import AutoencoderKL, I2VGenXLUNet

    from harness.weights import MissingWeights

    tiny = components.load(TINY, {"unet": I2VGenXLUNet, "vae": AutoencoderKL}, "cpu")
    real_cfg = OmegaConf.create({"kind": "i2vgen", "repo": "ali-vilab/i2vgen-xl", "revision": None,
                                 "root": str(tiny.folder), "tiny": False})
    real = components.load(real_cfg, {"unet": I2VGenXLUNet, "vae": AutoencoderKL}, "cpu")
    assert real.unet is not tiny.unet
    for a, b in zip(real.unet.state_dict().values(), tiny.unet.state_dict().values()):
        torch.testing.assert_close(a, b)
    missing = OmegaConf.create({**real_cfg, "root": str(tiny.folder / "nowhere")})
    with pytest.raises(MissingWeights, match="i2vgen-xl"):
        components.load(missing, {"unet": I2VGenXLUNet}, "cpu")


@torch.no_grad()
def test_conditioning_matches_diffusers_i2vgenxl_pipeline():
    """Text and CLIP-image conditioning as diffusers' own I2VGenXLPipeline computes them (the reference)."""
    import PIL.Image
    from diffusers import I2VGenXLPipeline

    method = _method()
    m = method.m
    pipe = I2VGenXLPipeline(vae=m.vae, text_encoder=m.text_encoder, tokenizer=m.tokenizer, image_encoder=m.image_encoder,
                            feature_extractor=m.feature_extractor, unet=m.unet, scheduler=m.scheduler)
    pipe._guidance_scale = 1.0
    cond, _ = pipe.encode_prompt("a red ball on a table", "cpu", 1, None)
    torch.testing.assert_close(method._text("a red ball on a table"), cond)
    rng = np.random.default_rng(0)
    smooth = np.kron(rng.integers(0, 256, (4, 4, 3)), np.ones((8, 8, 1))).astype(np.uint8)  # 32×32, the encoder's size
    ref = pipe._encode_image([PIL.Image.fromarray(smooth)], "cpu", 1)
    mine = method._image_embedding(resize.to_working(smooth, 32, 32, "cpu"))
    torch.testing.assert_close(mine, ref, atol=1e-5, rtol=1e-4)
