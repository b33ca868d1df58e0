"""Long videos, SVD-xt and AnimateLCM-SVD-xt (paper Sec. 4.2): block editing, clips of any length with ground truth,
AnimateLCM's few-step schedule, and the tiny builds' round trips through the real loaders (CPU, tiny models)."""
from __future__ import annotations

import dataclasses
import shutil

import numpy as np
import pytest
import torch
from diffusers import CMStochasticIterativeScheduler
from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

import run  # noqa: F401  (registers the config resolvers)
from data import sample_track as st
from data.folder import FolderDataset
from data.video_io import evenly_spaced, write_image
from harness.method import Phases
from tests.conftest import REPO
from videoshop import pipeline as vs_pipeline
from videoshop.edm import model_output_for, schedule
from videoshop.inversion import invert, sample as euler_sample
from videoshop.models import CountingUNet, load_svd
from videoshop.pipeline import Videoshop, block_starts

pytestmark = pytest.mark.usefixtures("one_thread")

CLIP = "chelsea_color_ball"
N = 40


@pytest.fixture
def compose(tmp_path):
    """compose(*overrides): run.py's config, without building the 14-frame track (these tests bring their clips)."""

    def _compose(*overrides: str):
        with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
            return hydra_compose(config_name="config", overrides=[
                f"results_dir={tmp_path / 'results'}", f"data_dir={tmp_path / 'data'}", "device=cpu", *overrides])

    return _compose


@pytest.fixture(scope="module")
def long_dir(tmp_path_factory):
    """One sample-track clip rendered at 40 frames, in the common layout (ground truth included)."""
    d = tmp_path_factory.mktemp("long") / "sample_long_40f"
    st.build(d, only=[CLIP], num_frames=N)
    return d


@pytest.fixture(scope="module")
def long_sample(long_dir):
    return FolderDataset(long_dir, num_frames=N).load(CLIP)


def test_blocks_tile_any_length_with_one_shared_frame():
    assert block_starts(40, 14) == [0, 13, 26] and block_starts(14, 14) == [0] and block_starts(15, 14) == [0, 13]
    assert block_starts(50, 25) == [0, 24, 48]
    for L in (2, 14, 25):
        for n in range(2, 80):
            starts = block_starts(n, L)
            ends = [min(s + L, n) for s in starts]
            assert starts[0] == 0 and ends[-1] == n
            assert all(b == e - 1 for e, b in zip(ends[:-1], starts[1:]))  # the seam frame is shared
            assert all(2 <= e - s <= L for s, e in zip(starts, ends))  # only the last block may be shorter


def test_long_clips_follow_the_same_motion_with_exact_ground_truth(long_sample):
    clip = next(c for c in st.clips() if c.id == CLIP)
    short = st.build_clip(clip)  # the 14-frame clip: the same motion sampled at 14 instants
    s = long_sample
    assert s.source.shape == (N, st.HEIGHT, st.WIDTH, 3) and s.truth.video.shape == s.source.shape
    assert s.truth.masks.shape == (N, st.HEIGHT, st.WIDTH) and s.truth.flow.shape == (N - 1, st.HEIGHT, st.WIDTH, 2)
    np.testing.assert_array_equal(s.source[0], short.source[0])  # same first and last instant, same edit
    np.testing.assert_array_equal(s.source[-1], short.source[-1])
    np.testing.assert_array_equal(s.edited_frame, short.target[0])
    np.testing.assert_array_equal(s.truth.video[-1], short.target[-1])
    from tests.test_sample_track import _warp_back

    v = torch.from_numpy(s.source).float().permute(0, 3, 1, 2)
    for t in (0, 19, 38):  # the flow is exact at this length too
        valid = torch.from_numpy(s.truth.flow_valid[t])
        err = (_warp_back(v[t + 1], torch.from_numpy(s.truth.flow[t].astype(np.float32))) - v[t]).abs().mean(0)[valid]
        assert valid.float().mean() > 0.85 and err.mean() < 1.5, (t, float(err.mean()))


def test_datasets_keep_all_even_or_first_frames(long_dir, long_sample, tmp_path):
    d = tmp_path / "plain" / CLIP
    d.mkdir(parents=True)
    shutil.copy(long_dir / CLIP / "source.mkv", d / "source.mkv")
    write_image(d / "edited.png", long_sample.edited_frame)
    full = long_sample.source
    load = lambda **kw: FolderDataset(d.parent, **kw).load(CLIP).source  # noqa: E731
    np.testing.assert_array_equal(load(num_frames=None), full)
    np.testing.assert_array_equal(load(num_frames=14), full[evenly_spaced(N, 14)])
    np.testing.assert_array_equal(load(num_frames=14, frame_pick="first"), full[:14])
    np.testing.assert_array_equal(load(num_frames=25, frame_pick="first"), full[:25])
    frames = d.parent / "frames" / CLIP  # a folder of image frames is picked the same way
    for i, f in enumerate(full):
        write_image(frames / "source" / f"{i:03d}.png", f)
    write_image(frames / "edited.png", long_sample.edited_frame)
    np.testing.assert_array_equal(FolderDataset(frames.parent, num_frames=14, frame_pick="first").load(CLIP).source, full[:14])
    with pytest.raises(ValueError, match="frame_pick"):
        FolderDataset(d.parent, frame_pick="last")


def test_dataset_configs_follow_the_backbones_length(compose):
    assert compose().dataset.num_frames == 14
    assert compose("models=svd_xt").dataset.num_frames == 25
    assert compose("models=tiny_xt", "dataset=folder", "dataset.root=x").dataset.num_frames == 25
    assert compose("dataset=sample_long").dataset.num_frames == 40


def _closed_form(c, cond):
    """A closed-form stand-in for the UNet whose denoised sample is half the conditioning image's latents."""
    target = cond.image_latents[-1:].float()

    def F(x, sigma):
        return model_output_for(x, 0.5 * target.expand_as(x), sigma)

    return F


@pytest.mark.slow
def test_block_editing_equals_editing_each_block_with_its_conditioning(compose, long_sample, monkeypatch):
    m = instantiate(compose("method=videoshop", "method.long_video=blocks").method)
    monkeypatch.setattr(vs_pipeline.svd, "model", _closed_form)
    calls, edit_block = [], Videoshop.edit_block

    def hooked(self, sample, source, frame, seed, phases):
        out = edit_block(self, sample, source, frame, seed, phases)
        assert not out[2]  # computed, not reused
        calls.append((source, frame, seed, out[0]))
        return out

    monkeypatch.setattr(Videoshop, "edit_block", hooked)
    out = m.edit(long_sample, 42)
    assert out.frames.shape == long_sample.source.shape and out.info["block_starts"] == [0, 13, 26]
    assert [len(src) for src, *_ in calls] == [14, 14, 14]
    for k, (s, (src, frame, seed, frames)) in enumerate(zip([0, 13, 26], calls)):
        np.testing.assert_array_equal(src, long_sample.source[s:s + 14])  # inverted from its own source frames
        # conditioned on the user's edit (block 0) or exactly on block k−1's last output frame, the shared seam frame
        np.testing.assert_array_equal(frame, long_sample.edited_frame if k == 0 else calls[k - 1][3][-1])
        if k:
            np.testing.assert_array_equal(out.frames[s], frame)  # the seam frame is block k−1's output, kept
        assert seed == 42 + k
        # editing the block alone with that conditioning gives the same frames
        np.testing.assert_array_equal(edit_block(m, long_sample, src, frame, seed, Phases())[0], frames)
        np.testing.assert_array_equal(out.frames[s + (k > 0):s + 14], frames[k > 0:])
    # the conditioning matters: block 1 conditioned on the user's edit instead gives other frames
    other = edit_block(m, long_sample, calls[1][0], long_sample.edited_frame, 43, Phases())[0]
    assert np.abs(other.astype(int) - calls[1][3]).max() > 0


@pytest.mark.slow
def test_one_block_is_the_plain_edit(compose, long_sample):
    sample = dataclasses.replace(long_sample, source=long_sample.source[:14].copy(), truth=None)
    plain = instantiate(compose("method=videoshop").method).edit(sample, 42)
    blocks = instantiate(compose("method=videoshop", "method.long_video=blocks").method).edit(sample, 42)
    np.testing.assert_array_equal(plain.frames, blocks.frames)
    assert plain.nfe == blocks.nfe == 26 and blocks.info["block_starts"] == [0]
    with pytest.raises(ValueError, match=r"40 frames but the SVD backbone is set for 14.*method.long_video=blocks"):
        instantiate(compose("method=videoshop").method).edit(long_sample, 42)


@pytest.mark.slow
def test_forty_frames_on_the_tiny_unet_cost_three_edits(compose, long_sample):
    out = instantiate(compose("method=videoshop", "method.long_video=blocks").method).edit(long_sample, 42)
    assert out.frames.shape == long_sample.source.shape and out.nfe == 3 * 26
    assert dict(out.info["phases"]).keys() == {"encode", "condition", "invert", "generate", "decode"}


def _animatelcm_levels(steps: int) -> list[float]:
    """AnimateLCM-SVD-xt's σ levels written out from its scheduler's definition: training timesteps
    0, 40/steps, … reversed, Karras ramp t/39 between σ_max = 700 and σ_min = 0.002 with ρ = 7, then 0."""
    ts = np.arange(steps) * (40 // steps)
    ramp = ts / 39
    lo, hi = 0.002 ** (1 / 7), 700.0 ** (1 / 7)
    return [*((hi + ramp * (lo - hi)) ** 7).tolist(), 0.0]


def test_animatelcm_schedule_and_round_trip_on_closed_form_denoisers(compose):
    cfg = compose("method=videoshop_animatelcm")
    m = cfg.method
    assert (m.steps, m.guidance) == (4, 1.0)  # what differs from SVD: a few steps, no CFG
    sched = CMStochasticIterativeScheduler.from_config(OmegaConf.to_container(cfg.models.animatelcm_backbone.scheduler.config))
    np.testing.assert_allclose(schedule(sched, 4), _animatelcm_levels(4), rtol=1e-6)
    sigmas = schedule(sched, 4, m.strength)
    np.testing.assert_allclose(sigmas, _animatelcm_levels(4)[2:], rtol=1e-6)  # [13.68, 0.497, 0]
    # point mass: inversion then regeneration with the same conditioning lands exactly on the input, as for SVD
    mu = torch.randn(1, 3, 4, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    F = lambda x, s: model_output_for(x, mu.expand_as(x), s)  # noqa: E731
    for threshold in (m.threshold, 1.0):
        xT = invert(F, mu, sigmas, threshold=threshold, generator=torch.Generator().manual_seed(1))
        torch.testing.assert_close(euler_sample(F, xT, sigmas), mu, rtol=1e-12, atol=1e-12)
    # Gaussian mixture: the round trip stays close to the input; fresh noise at σ_start does not
    from tests.test_videoshop_math import _mixture_denoiser

    means, weights = torch.tensor([-1.0, 0.5, 1.5], dtype=torch.float64), torch.tensor([0.3, 0.4, 0.3], dtype=torch.float64)
    g = torch.Generator().manual_seed(4)
    x0 = (means[torch.multinomial(weights, 4096, replacement=True, generator=g)]
          + 0.2 * torch.randn(4096, dtype=torch.float64, generator=g)).reshape(1, 4, 4, 16, 16)
    F = _mixture_denoiser(means, weights, 0.2)
    xT = invert(F, x0, sigmas, threshold=m.threshold, generator=torch.Generator().manual_seed(5))
    mae = (euler_sample(F, xT, sigmas) - x0).abs().mean().item()
    fresh = (euler_sample(F, torch.randn(x0.shape, dtype=torch.float64, generator=g) * sigmas[0], sigmas) - x0).abs().mean().item()
    assert mae < 0.1 and mae < 0.15 * fresh, (mae, fresh)


def test_animatelcm_edit_runs_without_guidance(compose, long_sample, monkeypatch):
    batches, forward = [], CountingUNet.forward
    monkeypatch.setattr(CountingUNet, "forward", lambda self, *a, **kw: (batches.append(a[0].shape[0]), forward(self, *a, **kw))[1])
    m = instantiate(compose("method=videoshop_animatelcm").method)
    assert type(m.svd.scheduler) is CMStochasticIterativeScheduler
    sample = dataclasses.replace(long_sample, source=long_sample.source[:14].copy(), truth=None)
    out = m.edit(sample, 42)
    assert out.nfe == 4 and batches == [1, 1, 1, 1]  # 2 inversion + 2 generation calls, one branch each
    assert out.info["sigma_start"] == pytest.approx(13.678, abs=1e-3)
    svd = instantiate(compose("method=videoshop").method)
    assert not torch.equal(m.svd.unet.conv_in.weight, svd.svd.unet.conv_in.weight)  # its own UNet ...
    assert torch.equal(m.svd.vae.encoder.conv_in.weight, svd.svd.vae.encoder.conv_in.weight)  # ... on SVD's other parts


def _state(module) -> dict:
    return {k: v.clone() for k, v in module.state_dict().items()}


def test_tiny_xt_and_animatelcm_round_trip_through_the_real_loaders(compose, tmp_path):
    """The tiny SVD-xt saved in the hub repo's layout and the tiny AnimateLCM UNet saved as its single safetensors
    file load back through `models=svd_xt`'s entries (`from_pretrained`, then the strict state-dict load)."""
    tiny = compose("models=tiny_xt").models
    xt, lcm = load_svd(tiny.svd_backbone, "cpu"), load_svd(tiny.animatelcm_backbone, "cpu")
    assert xt.unet.config.num_frames == 25 and tiny.svd_backbone.num_frames == tiny.animatelcm_backbone.num_frames == 25
    root = tmp_path / "weights"
    xt.save_pretrained(root / "stable-video-diffusion-img2vid-xt")
    (root / "AnimateLCM-SVD-xt").mkdir()
    lcm.save_unet_file(root / "AnimateLCM-SVD-xt" / "AnimateLCM-SVD-xt-1.1.safetensors")
    real = compose("models=svd_xt", f"models.root={root}").models
    for entry, want, unet in ((real.svd_backbone, xt, xt), (real.animatelcm_backbone, xt, lcm)):
        entry = {**OmegaConf.to_container(entry, resolve=True), "dtype": "float32"}
        got = load_svd(entry, "cpu")
        for name, ref in (("unet", unet), ("vae", want), ("image_encoder", want)):
            a, b = _state(getattr(got, name)), _state(getattr(ref, name))
            assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
        assert type(got.scheduler) is type(unet.scheduler)
        np.testing.assert_allclose(schedule(got.new_scheduler(), 4), schedule(unet.new_scheduler(), 4))
    assert got.weights_revision.endswith("AnimateLCM-SVD-xt/AnimateLCM-SVD-xt-1.1.safetensors")
    assert not torch.equal(xt.unet.conv_in.weight, lcm.unet.conv_in.weight)
    from safetensors.torch import load_file, save_file

    path = root / "AnimateLCM-SVD-xt" / "AnimateLCM-SVD-xt-1.1.safetensors"
    weights = load_file(str(path))
    weights.pop("conv_in.weight")
    save_file(weights, str(path))
    with pytest.raises(ValueError, match="(?s)AnimateLCM-SVD-xt-1.1.safetensors: not a state dict .*conv_in.weight"):
        load_svd({**entry, "seed": "another cache key"}, "cpu")


def test_seam_pairs_start_at_the_shared_frames():
    from metrics.seams import seam_pairs, seam_scores

    assert np.flatnonzero(seam_pairs(40, 14)).tolist() == [13, 26]
    assert np.flatnonzero(seam_pairs(50, 25)).tolist() == [24, 48] and not seam_pairs(14, 14).any()
    assert seam_scores("flow", np.ones(13), 14) == {} and seam_scores("flow", np.ones(39), None) == {}


@pytest.mark.slow
def test_metrics_on_forty_frames_and_the_seam_diagnostic(compose, long_sample):
    """CLIP_TC and flow over all 39 pairs equal the pair-weighted means over the three blocks' pairs; a jump at
    the seams shows in the seam columns; FVD's feature of a long clip is the mean of its 16-frame windows."""
    from metrics.fvd import windows

    cfg = compose("metrics=paper", "models.flow.kind=dis")
    clip, flow, fvd = (instantiate(cfg.metrics[k]) for k in ("clip", "flow", "fvd"))
    src = long_sample.source
    jump = src.copy()  # every block after the first shifted by 8 more pixels: motion only across the seams
    jump[14:] = np.roll(src[14:], 8, axis=2)
    jump[27:] = np.roll(src[27:], 16, axis=2)
    plain = dataclasses.replace(long_sample, mask=None)
    for m, name in ((clip, "clip_tc"), (flow, "flow")):
        whole = m.score(plain, jump)
        chunks = [m.score(dataclasses.replace(plain, source=src[s:s + 14]), jump[s:s + 14])[name] for s in (0, 13, 26)]
        assert whole[name] == pytest.approx(np.mean(chunks), rel=1e-5, abs=1e-6)  # 13 pairs in each block
        assert whole[name] == pytest.approx((2 * whole[f"{name}_seam"] + 37 * whole[f"{name}_inner"]) / 39, rel=1e-5)
    jumped = flow.score(plain, jump)
    # the 8-pixel jumps (4 px at the 128×224 flow size) at the seams, nowhere else
    assert jumped["flow_seam"] == pytest.approx(4.0, abs=0.5) and jumped["seam_flow_ratio"] > 10, jumped
    assert clip.score(plain, jump)["seam_clip_tc_ratio"] <= 1.0
    assert windows(40, 16) == [0, 16, 24] and windows(32, 16) == [0, 16] and windows(14, 16) == [0]
    fvd.window = None
    parts = [fvd.embed(src[s:s + 16]) for s in (0, 16, 24)]
    fvd.window = 16
    np.testing.assert_allclose(fvd.embed(src), np.mean(parts, axis=0), rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_svd_xt_length_runs_videoshop_and_svd_no_src_at_25_frames(compose, long_sample):
    """models=tiny_xt (SVD-xt's 25 frames): svd_no_src equals StableVideoDiffusionPipeline at 25 frames and
    Videoshop edits a 25-frame clip (the release's 26 UNet calls); 14 frames are refused."""
    import PIL.Image

    from videoshop.svd import resize_frames

    sample = dataclasses.replace(long_sample, source=long_sample.source[:25].copy(), truth=None)
    m = instantiate(compose("models=tiny_xt", "method=svd_no_src", "method.steps=3").method)
    image = resize_frames(sample.edited_frame[None], m.size)[0]
    ref = m.svd.pipeline(counted=False)(PIL.Image.fromarray(image), height=m.size[0], width=m.size[1], num_frames=25,
                                        num_inference_steps=3, generator=torch.Generator().manual_seed(3),
                                        output_type="latent").frames
    torch.testing.assert_close(m.latents(image, 25, seed=3), ref, rtol=1e-4, atol=1e-4)
    v = instantiate(compose("models=tiny_xt", "method=videoshop").method)
    out = v.edit(sample, 42)
    assert out.frames.shape == sample.source.shape and out.nfe == 26
    with pytest.raises(ValueError, match="14 frames but the SVD backbone is set for 25"):
        v.edit(dataclasses.replace(sample, source=sample.source[:14]), 42)


def test_hdvila_builder_keeps_the_first_or_every_frame_of_the_span(tmp_path):
    """Span 1.0..4.0 s of a 10 fps clip whose frame i is grey level 4·i: frames 10..40 (31 frames)."""
    from data.hdvila import HDVILAExpert
    from data.video_io import write_video_viewable

    raw = tmp_path / "raw"
    raw.mkdir()
    write_video_viewable(raw / "a.mp4", np.stack([np.full((90, 120, 3), 4 * i, np.uint8) for i in range(50)]), 10)
    write_image(raw / "a_edit.png", np.zeros((90, 120, 3), np.uint8))
    (raw / "m.csv").write_text("clip_id,video,start,end,edited,instruction\na,a.mp4,1.0,4.0,a_edit.png,make it grey\n")
    for kw, frames in (({"num_frames": 20, "frame_pick": "first"}, np.arange(10, 30)),
                       ({"num_frames": None}, np.arange(10, 41))):
        data = tmp_path / f"data_{len(frames)}"
        ds = HDVILAExpert(data, manifest=str(raw / "m.csv"), size=(36, 64), **kw)
        assert ds.ids() == ["a"]  # built on first use
        grey = ds.load("a").source[:, 18, 32, 0].astype(int)
        np.testing.assert_allclose(grey, 4 * frames, atol=3)
