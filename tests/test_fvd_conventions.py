"""FVD conventions against independent transcriptions of each reference: its frame preprocessing (resize
kernel, value range, crop), the BatchNorm epsilon its I3D runs with, and its statistics (covariance
normalisation, matrix square root). Identical random weights and inputs; the conventions must also differ
from one another where the references do. The weight file's sha256 is bound to the convention."""
from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import scipy.linalg
import torch

from harness.weights import MissingWeights
from metrics.checkpoints import sha256
from metrics.fvd import CONVENTIONS, FVD, frechet_distance

SIZE = 224
FRAMES = 9
WIDTH = 0.125  # a narrow I3D: the real layout and padding, few channels
#: The BatchNorm epsilon each reference's I3D runs with (TF-Hub graph: variance + 0.001; the StyleGAN-V
#: TorchScript is a port of that graph; VideoGPT's pytorch_i3d: BatchNorm3d(eps=1e-5)).
REF_EPS = {"tf": 1e-3, "stylegan_v": 1e-3, "videogpt": 1e-5}
TINY_I3D = {"tiny": True, "seed": 0, "checkpoint": None, "sha256": None, "width": WIDTH}


def resize_matrix(n_in: int, n_out: int, half_pixel: bool) -> np.ndarray:
    """Rows of bilinear weights: TF1's legacy mapping (src = i·in/out) or torch's half-pixel one
    (src = (i + ½)·in/out − ½, clamped at 0); neighbours floor(src) and the next one, clamped at the edge."""
    m = np.zeros((n_out, n_in))
    for i in range(n_out):
        src = (i + 0.5) * n_in / n_out - 0.5 if half_pixel else i * n_in / n_out
        src = max(src, 0.0)
        y0 = int(math.floor(src))
        y1 = min(y0 + 1, n_in - 1)
        f = src - y0
        m[i, y0] += 1 - f
        m[i, y1] += f
    return m


def resize(video: np.ndarray, out_hw: tuple[int, int], half_pixel: bool) -> np.ndarray:
    """T×H×W×3 float -> T×h×w×3, separable bilinear without antialiasing."""
    rh = resize_matrix(video.shape[1], out_hw[0], half_pixel)
    rw = resize_matrix(video.shape[2], out_hw[1], half_pixel)
    return np.einsum("jw,tiwc->tijc", rw, np.einsum("ih,thwc->tiwc", rh, video))


def reference_input(video: np.ndarray, convention: str) -> np.ndarray:
    """What each reference feeds I3D (T×224×224×3 in [-1, 1]), from uint8 frames."""
    x = video.astype(np.float64)
    if convention == "tf":  # frechet_video_distance.py preprocess: resize_bilinear on 0..255, then 2x/255 - 1
        return 2 * resize(x, (SIZE, SIZE), half_pixel=False) / 255 - 1
    if convention == "stylegan_v":  # uint8 into the detector: rescale x/255*2-1, resize to 224×224 (torch)
        return resize(x / 255 * 2 - 1, (SIZE, SIZE), half_pixel=True)
    # videogpt data.preprocess: /255, short side to 224 (long side ceil), centre crop, -0.5; fvd.preprocess: *2
    h, w = x.shape[1:3]
    s = SIZE / min(h, w)
    hw = (SIZE, math.ceil(w * s)) if h < w else (math.ceil(h * s), SIZE)
    y = resize(x / 255, hw, half_pixel=True)
    top, left = (y.shape[1] - SIZE) // 2, (y.shape[2] - SIZE) // 2
    return (y[:, top:top + SIZE, left:left + SIZE] - 0.5) * 2


def reference_features(net: torch.nn.Module, video: np.ndarray, convention: str) -> np.ndarray:
    ref = copy.deepcopy(net)
    for m in ref.modules():
        if isinstance(m, torch.nn.BatchNorm3d):
            m.eps = REF_EPS[convention]
    x = torch.from_numpy(reference_input(video, convention)).float().permute(3, 0, 1, 2)[None]
    with torch.no_grad():
        return ref(x)[0].numpy()


def _svd_sqrt(mat: np.ndarray) -> np.ndarray:
    u, s, vt = np.linalg.svd(mat)
    return u @ np.diag(np.where(s < 1e-10, s, np.sqrt(s))) @ vt


def reference_distance(real: np.ndarray, fake: np.ndarray, convention: str) -> float:
    real, fake = real.astype(np.float64), fake.astype(np.float64)
    if convention == "stylegan_v":
        # metric_utils.FeatureStats: raw sums, cov = XᵀX/N − μμᵀ; frechet_video_distance.compute_fvd: scipy sqrtm
        def stats(x):
            mu = x.sum(0) / len(x)
            return mu, x.T @ x / len(x) - np.outer(mu, mu)

        mu_r, s_r = stats(real)
        mu_g, s_g = stats(fake)
        s = scipy.linalg.sqrtm(s_g @ s_r)
        return float(np.real(np.square(mu_g - mu_r).sum() + np.trace(s_g + s_r - s * 2)))
    # TF-GAN frechet_classifier_distance_from_activations (VideoGPT's fvd.py is its transcription):
    # N/(N-1) × covariance, tr sqrt(A S2 A) with A = sqrt(S1) by SVD
    def cov(x):
        c = x - x.mean(0)
        return c.T @ c / (len(x) - 1)

    s1, s2 = cov(real), cov(fake)
    a = _svd_sqrt(s1)
    return float(np.trace(s1 + s2) - 2 * np.trace(_svd_sqrt(a @ s2 @ a)) + np.sum((real.mean(0) - fake.mean(0)) ** 2))


@pytest.fixture(scope="module")
def clips():
    """Two non-square clips with texture (one downscaled, one upscaled to 224)."""
    rng = np.random.default_rng(0)
    big = rng.integers(0, 256, (FRAMES, 256, 448, 3), dtype=np.uint8)
    small = np.repeat(np.repeat(rng.integers(0, 256, (FRAMES, 40, 60, 3), dtype=np.uint8), 3, 1), 3, 2)
    return [big, small]


def _nontrivial_bn(net: torch.nn.Module, seed: int = 1) -> None:
    """Random BatchNorm statistics with small variances, so that the epsilon matters as in trained nets."""
    g = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm3d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
            m.running_var.copy_(torch.exp(torch.empty(n).uniform_(math.log(1e-3), 0, generator=g)))


@pytest.fixture(scope="module")
def metrics_by_convention():
    out = {name: FVD(TINY_I3D, convention=name) for name in CONVENTIONS}
    for m in out.values():
        m.net = copy.deepcopy(m.net)  # the loaded net is shared through the process-wide model cache
        _nontrivial_bn(m.net)
    return out


@pytest.mark.parametrize("convention", list(CONVENTIONS))
def test_features_match_the_reference_transcription(convention, clips, metrics_by_convention):
    m = metrics_by_convention[convention]
    assert all(b.eps == REF_EPS[convention] for b in m.net.modules() if isinstance(b, torch.nn.BatchNorm3d))
    for clip in clips:
        got, want = m.embed(clip), reference_features(m.net, clip, convention)
        assert np.abs(got - want).max() <= 1e-5 * max(1.0, np.abs(want).max())


def test_conventions_see_different_inputs_and_features(clips, metrics_by_convention):
    """tf vs stylegan_v: resize kernel only; stylegan_v vs videogpt: crop and BatchNorm epsilon."""
    clip = clips[0]
    inputs = {c: reference_input(clip, c) for c in CONVENTIONS}
    assert np.abs(inputs["tf"] - inputs["stylegan_v"]).mean() > 0.05
    assert np.abs(inputs["stylegan_v"] - inputs["videogpt"]).mean() > 0.05
    feats = {c: m.embed(clip) for c, m in metrics_by_convention.items()}
    scale = np.abs(feats["tf"]).max()
    assert np.abs(feats["tf"] - feats["stylegan_v"]).max() > 1e-3 * scale
    assert np.abs(feats["stylegan_v"] - feats["videogpt"]).max() > 1e-3 * scale
    # the epsilon alone: the same input through eps 1e-3 and 1e-5
    x = torch.from_numpy(inputs["videogpt"]).float().permute(3, 0, 1, 2)[None]
    with torch.no_grad():
        by_eps = [metrics_by_convention[c].net(x)[0].numpy() for c in ("stylegan_v", "videogpt")]
    assert np.abs(by_eps[0] - by_eps[1]).max() > 1e-3 * np.abs(by_eps[1]).max()


@pytest.mark.parametrize("n", [20, 150])
def test_distances_match_the_reference_statistics(n):
    """Rank-deficient (N < D) and full-rank sets; shifted, rescaled and correlated features."""
    rng = np.random.default_rng(n)
    d = 64
    mix = rng.normal(size=(d, d)) / np.sqrt(d)
    real = rng.normal(size=(n, d)) @ mix * 3 + 1
    fake = rng.normal(size=(n, d)) @ mix * 2.5 + 1.3
    got = {c: frechet_distance(real, fake, c) for c in CONVENTIONS}
    for c in CONVENTIONS:
        assert got[c] == pytest.approx(reference_distance(real, fake, c), rel=1e-5)
    # N - 1 vs N: the TF/VideoGPT estimate is larger by the covariance traces' factor N/(N-1)
    assert got["tf"] > got["stylegan_v"] * (1 + 0.1 / n)
    assert got["videogpt"] == pytest.approx(got["tf"], rel=1e-6)  # the same statistics (TF-GAN's)


def test_fvd_compute_uses_its_conventions_statistics(metrics_by_convention):
    rng = np.random.default_rng(3)
    real, fake = rng.normal(size=(30, 400)), rng.normal(size=(30, 400)) + 0.2
    for name, m in metrics_by_convention.items():
        made = {"frames": np.asarray(FRAMES), "i3d": np.asarray(m.net.weights_id), "convention": np.asarray(name)}
        got = m.compute([{"real": r, "fake": f, **made} for r, f in zip(real, fake)])
        assert got["fvd"] == pytest.approx(reference_distance(real, fake, name), rel=1e-5)
    assert metrics_by_convention["tf"].info == {"fvd_i3d": "random(seed=0,width=0.125)", "fvd_convention": "tf"}


def test_weights_sha256_is_bound_to_the_convention(tmp_path):
    from metrics.fvd import load_i3d

    path = tmp_path / "i3d.pt"
    torch.save(load_i3d(width=WIDTH, tiny=True, seed=4).state_dict(), path)
    digest, other = sha256(path), "ab" * 32
    real = {"tiny": False, "seed": 0, "checkpoint": str(path), "sha256": None, "width": WIDTH}
    bound = {"tf": other, "stylegan_v": digest, "videogpt": None}
    fvd = FVD(real, convention="stylegan_v", i3d_sha256=bound)
    assert fvd.info == {"fvd_i3d": digest, "fvd_convention": "stylegan_v"}
    # the file is not the convention's weights: both digests and the setting are named
    with pytest.raises(MissingWeights, match=f"(?s){digest}.*metrics.fvd.i3d_sha256.tf={other}"):
        FVD(real, convention="tf", i3d_sha256=bound)
    # the convention's digest and models.i3d.sha256 disagree: both named
    with pytest.raises(MissingWeights, match=f"(?s){digest}.*metrics.fvd.i3d_sha256.stylegan_v.*models.i3d.sha256={other}"):
        FVD({**real, "sha256": other}, convention="stylegan_v", i3d_sha256=bound)
    # no digest for the convention: models.i3d.sha256 pins the file, else the file's digest is asked for
    assert FVD({**real, "sha256": digest}, convention="videogpt", i3d_sha256=bound).net.weights_id == digest
    with pytest.raises(MissingWeights, match=f"models.i3d.sha256={digest}"):
        FVD(real, convention="videogpt", i3d_sha256=bound)
    with pytest.raises(ValueError, match="tf, stylegan_v, videogpt"):
        FVD(TINY_I3D, convention="pytorch")


def test_paper_config_names_a_convention_and_its_weights(compose):
    cfg = compose("metrics=paper").metrics.fvd
    assert cfg.convention in CONVENTIONS and set(cfg.i3d_sha256) == set(CONVENTIONS) and cfg.size == SIZE
