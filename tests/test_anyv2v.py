"""AnyV2V with tiny I2VGen-XL components, and the helpers it shares with TokenFlow (DDIM inversion, resizing, injection)."""
from __future__ import annotations

from pathlib import Path

import dataclasses
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

import run
from baselines import components, ddim, injection, resize
from harness.results import RunDir
from tests.conftest import tiny_method


pytestmark = pytest.mark.usefixtures("one_thread")


TINY = OmegaConf.create({"kind": "i2vgen", "repo": "ali-vilab/i2vgen-xl", "tiny": True, "seed": 0})


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


def _plain_json(value) -> bool:
    """Only str/int/float/bool and lists of them: what a row.json can hold as is."""
    if isinstance(value, list):
        return all(_plain_json(v) for v in value)
    return isinstance(value, (str, int, float, bool))


def test_injection_changes_the_edit(sample_track):
    full = sample_track.load(sample_track.ids()[0])
    sample = dataclasses.replace(full, source=full.source[:5])  # AnyV2V takes any frame count; fewer is faster
    edit = tiny_method("anyv2v").edit(sample, 0)
    with_inj = edit.frames
    without = tiny_method("anyv2v", injection_until={"conv": 0, "spatial": 0, "temporal": 0}).edit(sample, 0).frames
    assert with_inj.shape == without.shape == sample.source.shape
    assert np.abs(with_inj.astype(float) - without).mean() > 0.5
    # the published seed, whatever the run's
    np.testing.assert_array_equal(tiny_method("anyv2v").edit(sample, 123).frames, with_inj)
    info = edit.info
    assert all(_plain_json(v) for v in info.values()), info
    assert json.loads(json.dumps(info)) == info
    assert info["working_size"] == [64, 64]  # the tiny stand-in for the published 512×512, whatever the clip's aspect
    assert (info["source_prompt"], info["target_prompt"], info["prompt_origin"]) == (sample.source_prompt, sample.target_prompt, "dataset")
    assert info["nfe_inversion"] + info["nfe_sampling"] == edit.nfe and info["seed"] == 8888


def test_keep_aspect_runs_at_the_clip_aspect_and_maps_back(sample_track):
    full = sample_track.load(sample_track.ids()[0])
    sample = dataclasses.replace(full, source=full.source[:3], source_prompt=None, target_prompt=None)
    assert sample.size == (256, 448)  # wide (7:4), like HD-VILA's 16:9 clips
    fallback = OmegaConf.create({"fallback": "caption_edited", "captioner": {"tiny": True, "seed": 0, "max_new_tokens": 5}})
    edit = tiny_method("anyv2v", keep_aspect=True, prompts=fallback).edit(sample, 0)
    assert edit.info["working_size"] == [48, 80]  # 64² pixels at 7:4, sides multiples of 16 (tiny overrides)
    assert edit.frames.shape == sample.source.shape
    assert edit.info["prompt_origin"] == "caption_edited" and edit.info["prompts_made_by"] == "captioner tiny random BLIP (seed 0)"
    assert json.loads(json.dumps(edit.info)) == edit.info


def test_working_size_follows_the_clip_aspect():
    tokenflow = [[512, 512], [384, 672]]
    assert resize.working_size((512, 512), tokenflow) == (512, 512)  # MagicBrush: square
    assert resize.working_size((720, 1280), tokenflow) == (384, 672)  # HD-VILA: 16:9
    assert resize.working_size((500, 520), tokenflow) == (512, 512)
    assert resize.working_size((720, 1280), [[512, 512]]) == (512, 512)  # AnyV2V as published: fixed
    assert resize.working_size((720, 1280), [[512, 512]], keep_aspect=True, multiple=64) == (384, 704)
    assert resize.working_size((512, 512), [[512, 512]], keep_aspect=True, multiple=64) == (512, 512)
    h, w = resize.working_size((1080, 1440), [[512, 512]], keep_aspect=True, multiple=8)  # 4:3
    assert h % 8 == 0 and w % 8 == 0 and abs(w / h - 4 / 3) < 0.02 and abs(h * w / 512**2 - 1) < 0.03
    with pytest.raises(ValueError, match="multiple of 8"):
        resize.candidates([[500, 512]], "anyv2v")


def test_non_finite_latents_raise_with_their_cost(sample_track):
    from harness.method import NonFiniteEdit

    full = sample_track.load(sample_track.ids()[0])
    sample = dataclasses.replace(full, source=full.source[:3])
    method = tiny_method("anyv2v", guidance_scale=float("inf"))
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
    "spatial": ["up_blocks.1.attentions.1.transformer_blocks.0.attn1", "up_blocks.2.attentions.0.transformer_blocks.0.attn1",
                "up_blocks.3.attentions.2.transformer_blocks.0.attn1"],
    "temporal": ["up_blocks.1.temp_attentions.1.transformer_blocks.0.attn1",
                 "up_blocks.3.temp_attentions.0.transformer_blocks.0.attn1"],
}
CONV = "up_blocks.1.resnets.1.conv2"


@torch.no_grad()
def test_injection_from_an_identical_source_branch_equals_plain_attention():
    from diffusers import I2VGenXLUNet

    unet = components.load(TINY, {"unet": I2VGenXLUNet}, "cpu").unet
    one = _unet_inputs(unet, 1)
    plain = unet(**one).sample
    state = injection.InjectionState(n_branches=2, active={"conv", "spatial", "temporal"})
    restore = injection.install(unet, state, LAYERS, {"conv": [CONV]})
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


@torch.no_grad()
def test_conv_injection_replaces_only_the_residual_branch():
    """Hooked on `conv2`, the edit branch's ResNet output is its own skip path plus the source's residual branch."""
    from diffusers import I2VGenXLUNet

    unet = components.load(TINY, {"unet": I2VGenXLUNet}, "cpu").unet
    block = unet.get_submodule(CONV.rsplit(".", 1)[0])
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, block.in_channels, 8, 8, generator=g)  # chunk 0: source, chunk 1: edit
    temb = torch.randn(2, block.time_emb_proj.in_features, generator=g)
    plain = block(x, temb)
    state = injection.InjectionState(n_branches=2, active={"conv"})
    restore = injection.install(unet, state, {}, {"conv": [CONV]})
    try:
        injected = block(x, temb)
    finally:
        restore()
    assert not block.conv2._forward_hooks and not block._forward_hooks  # restored

    def residual(out, inp):  # the conv2 output inside the block
        return out * block.output_scale_factor - block.conv_shortcut(inp)

    torch.testing.assert_close(injected[:1], plain[:1])
    torch.testing.assert_close(residual(injected[1:], x[1:]), residual(plain[:1], x[:1]), atol=1e-5, rtol=1e-4)
    assert (injected[1:] - plain[:1]).abs().max() > 1e-2  # the edit keeps its own skip path: not the source's output
    assert (injected[1:] - plain[1:]).abs().max() > 1e-2  # and injection changed it


@torch.no_grad()
def test_configured_layers_inject_only_attn1_of_temporal_and_spatial_blocks():
    """AnyV2V's config injects attn1 of 8 spatial and 8 temporal decoder blocks; the temporal blocks' attn2
    (also a self-attention in I2VGen-XL) and everything else keep their processors."""
    method = tiny_method("anyv2v")
    unet = method.m.unet
    attention = {k: v for k, v in method.layers.items() if k != "conv"}
    assert set(attention) == {"spatial", "temporal"} and method.layers["conv"] == [CONV]
    restore = injection.install(unet, injection.InjectionState(n_branches=2), attention, {"conv": method.layers["conv"]})
    try:
        procs = unet.attn_processors
        hooked = [n for n, m in unet.named_modules() if m._forward_hooks]
    finally:
        restore()
    injected = {n: p.kind for n, p in procs.items() if isinstance(p, injection.QKInjectionProcessor)}
    kinds = list(injected.values())
    assert len(injected) == 16 and kinds.count("spatial") == 8 and kinds.count("temporal") == 8
    assert all(n.startswith("up_blocks.") and n.endswith(".transformer_blocks.0.attn1.processor") for n in injected)
    assert all(".temp_attentions." in n for n, k in injected.items() if k == "temporal")
    blocks = {n.rsplit(".transformer_blocks", 1)[0] for n in attention["temporal"]}
    temp_attn2 = [n for n in procs if n.endswith("attn2.processor") and n.rsplit(".transformer_blocks", 1)[0] in blocks]
    assert len(temp_attn2) == 8 and not any(n in injected for n in temp_attn2)
    assert not unet.get_submodule(temp_attn2[0].removesuffix(".processor")).is_cross_attention  # why naming attn1 matters
    assert hooked == [CONV]
    assert not any(isinstance(p, injection.QKInjectionProcessor) for p in unet.attn_processors.values())


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
    assert tiny.weights_revision is None and real.weights_revision == str(Path(tiny.folder).absolute())
    for a, b in zip(real.unet.state_dict().values(), tiny.unet.state_dict().values()):
        torch.testing.assert_close(a, b)
    missing = OmegaConf.create({**real_cfg, "root": str(tiny.folder / "nowhere")})
    with pytest.raises(MissingWeights, match="i2vgen-xl"):
        components.load(missing, {"unet": I2VGenXLUNet}, "cpu")


def _pipeline(method):
    from diffusers import I2VGenXLPipeline

    m = method.m
    return I2VGenXLPipeline(vae=m.vae, text_encoder=m.text_encoder, tokenizer=m.tokenizer, image_encoder=m.image_encoder,
                            feature_extractor=m.feature_extractor, unet=m.unet, scheduler=m.scheduler)


class _FlatCLIPTextModel:
    """A CLIP text encoder seen with the `text_model` level that the I2VGen-XL pipeline's `clip_skip` path reads
    (transformers 5 flattened `CLIPTextModel`; the weights and the call are the encoder's own)."""

    def __init__(self, encoder):
        self.encoder = encoder
        self.text_model = getattr(encoder, "text_model", encoder)

    def __call__(self, *args, **kwargs):
        return self.encoder(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.encoder, name)


@torch.no_grad()
def test_prompt_embeddings_match_the_i2vgenxl_pipeline_call():
    """Every prompt encoded as `I2VGenXLPipeline.__call__` encodes it: its `encode_prompt` (called unbound on the
    tiny tokenizer and text encoder) with `__call__`'s default `clip_skip` (penultimate layer + final layer norm,
    as AnyV2V), CFG on, and the negative prompt, or the empty one, as the unconditional prompt."""
    import inspect

    from diffusers import I2VGenXLPipeline

    method = tiny_method("anyv2v")
    clip_skip = inspect.signature(I2VGenXLPipeline.__call__).parameters["clip_skip"].default
    assert clip_skip == 1
    pipe = SimpleNamespace(tokenizer=method.m.tokenizer, text_encoder=_FlatCLIPTextModel(method.m.text_encoder),
                           unet=method.m.unet, do_classifier_free_guidance=method.guidance_scale > 1)

    def encode(prompt, negative_prompt):
        return I2VGenXLPipeline.encode_prompt(pipe, prompt, "cpu", 1, negative_prompt, clip_skip=clip_skip)

    prompt = "a red ball on a table"
    cond, uncond = encode(prompt, method.negative_prompt)
    assert torch.equal(method._text(prompt), cond)
    assert torch.equal(method._text(method.negative_prompt), uncond)
    _, empty = encode(prompt, None)  # no negative prompt: the empty one
    assert torch.equal(method._text(""), empty)  # also AnyV2V's inversion and source-branch prompt
    last_layer = components.encode_text(method.m, prompt, "cpu")
    assert (last_layer - cond).abs().max() > 1e-2  # the pipeline's layer is not the last one


@torch.no_grad()
def test_image_conditioning_matches_diffusers_i2vgenxl_pipeline():
    """CLIP-image conditioning as diffusers' own I2VGenXLPipeline computes it (the reference)."""
    import PIL.Image

    method = tiny_method("anyv2v")
    pipe = _pipeline(method)
    pipe._guidance_scale = 1.0
    rng = np.random.default_rng(0)
    smooth = np.kron(rng.integers(0, 256, (4, 4, 3)), np.ones((8, 8, 1))).astype(np.uint8)  # 32×32, the encoder's size
    ref = pipe._encode_image([PIL.Image.fromarray(smooth)], "cpu", 1)
    mine = method._image_embedding(resize.to_working(smooth, 32, 32, "cpu"))
    torch.testing.assert_close(mine, ref, atol=1e-5, rtol=1e-4)


def test_config_holds_the_published_defaults(compose):
    """AnyV2V's paper/code: seed 8888, CFG 9, 50 steps from t≈961, 500 inversion steps, 512×512, 20/20/50% injection."""
    cfg = compose("method=anyv2v", "models=svd").method
    assert (cfg.seed, cfg.guidance_scale, cfg.steps, cfg.first_step, cfg.inversion_steps) == (8888, 9.0, 50, 1, 500)
    assert [list(s) for s in cfg.sizes] == [[512, 512]] and cfg.keep_aspect is False
    assert dict(cfg.injection_until) == {"conv": 0.2, "spatial": 0.2, "temporal": 0.5}
    assert "overrides" not in cfg.backbone and len(cfg.backbone.revision) == 40


def test_inversion_past_the_last_training_timestep_is_a_clear_error():
    """1000 DDIM inversion steps would end at t=1000, where diffusers' inverse step indexes past its tables."""
    from diffusers import DDIMScheduler

    from baselines.ddim import invert

    cfg = DDIMScheduler(num_train_timesteps=1000, steps_offset=1, timestep_spacing="leading").config
    x0 = torch.zeros(1, 4, 2, 2)
    with pytest.raises(ValueError, match="reach timestep 1000"):
        invert(lambda x, t: torch.zeros_like(x), x0, cfg, 1000)
    assert sorted(invert(lambda x, t: torch.zeros_like(x), x0, cfg, 500).latents)[-1] == 999
