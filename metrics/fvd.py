"""FVD (paper Table 2, source faithfulness): the Fréchet distance between I3D features of the set of
source videos and the set of edited videos of a run. Features: Kinetics-400 logits of the Inception-I3D
network averaged over time (the 400-d output every reference uses). With 14-frame clips this is FVD@14f;
a clip longer than `window` frames (16, I3D's training length) is cut into windows of that length that cover it
(consecutive, the last one ending at the clip's end) and its feature is the mean of its windows' features, so a
40-frame edit is compared window by window at the length I3D expects, and each video still counts once;
with few videos the covariances are rank-deficient, and the number of videos and frames is reported beside
the score (`fvd_n`, `fvd_frames`).

Published FVD implementations disagree on details that move the number; `convention` picks one
(`CONVENTIONS`): the BatchNorm epsilon the weights run with, how frames are resized to 224 (TF1's legacy
bilinear or torch's half-pixel bilinear, straight to 224×224 or short side + centre crop), the value range
the resize sees, the covariance normalisation (N - 1 or N) and the matrix square root (scipy's `sqrtm` or
TF-GAN's SVD-based trace). Statistics are computed in float64 under every convention.

The I3D weight file's sha256 is bound to the convention it belongs to (`i3d_sha256`: convention -> digest)
and checked; it travels with every video's features and into the run's summary (`metric_info.fvd_i3d`,
`metric_info.fvd_convention`), and FVD over features made with other weights or another convention is NaN
rather than a mix. I3D runs in fp32 everywhere (fp16 shifts the features, hence FVD).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.linalg
import torch
import torch.nn as nn
import torch.nn.functional as F

from harness.cache import cache_key, cached
from harness.metric import Column, SetMetric
from harness.types import EditSample
from harness.weights import MissingWeights
from metrics.checkpoints import load_state_dict, sha256
from metrics.regions import SampleCache

log = logging.getLogger(__name__)

#: BatchNorm epsilon of DeepMind's TF I3D (Sonnet's default; the TF-Hub FVD graph adds 0.001 to the variance).
TF_BN_EPS = 1e-3
#: BatchNorm epsilon of the PyTorch ports that ship the converted TF-Hub weights (VideoGPT, cd-fvd).
TORCH_BN_EPS = 1e-5
#: TF-GAN's symmetric square root leaves singular values below this unrooted (classifier_metrics.py:180).
SVD_EPS = 1e-10
#: The default convention (why: docs/metrics.md, "Conventions").
DEFAULT_CONVENTION = "stylegan_v"


def _same_pad(x: torch.Tensor, kernel: tuple[int, ...], stride: tuple[int, ...]) -> torch.Tensor:
    """TensorFlow's "SAME" padding for a 3-D conv/pool (the layout I3D's weights were trained with)."""
    pads = []
    for size, k, s in zip(reversed(x.shape[2:]), reversed(kernel), reversed(stride)):
        total = max(k - s, 0) if size % s == 0 else max(k - size % s, 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads)


class Unit3D(nn.Module):
    """Conv3d (+ BatchNorm + ReLU) with SAME padding."""

    def __init__(self, cin: int, cout: int, kernel=(1, 1, 1), stride=(1, 1, 1), bn: bool = True, relu: bool = True,
                 bias: bool = False, eps: float = TF_BN_EPS):
        super().__init__()
        self.kernel, self.stride, self.relu = tuple(kernel), tuple(stride), relu
        self.conv3d = nn.Conv3d(cin, cout, self.kernel, self.stride, bias=bias)
        self.bn = nn.BatchNorm3d(cout, eps=eps, momentum=0.01) if bn else None

    def forward(self, x):
        x = self.conv3d(_same_pad(x, self.kernel, self.stride))
        if self.bn is not None:
            x = self.bn(x)
        return F.relu(x) if self.relu else x


class MaxPoolSame(nn.Module):
    def __init__(self, kernel, stride):
        super().__init__()
        self.kernel, self.stride = tuple(kernel), tuple(stride)

    def forward(self, x):
        return F.max_pool3d(_same_pad(x, self.kernel, self.stride), self.kernel, self.stride)


class Mixed(nn.Module):
    """An Inception block: 1×1 | 1×1→3×3 | 1×1→3×3 | pool→1×1, concatenated."""

    def __init__(self, cin: int, c: tuple[int, int, int, int, int, int], eps: float = TF_BN_EPS):
        super().__init__()
        self.b0 = Unit3D(cin, c[0], eps=eps)
        self.b1a, self.b1b = Unit3D(cin, c[1], eps=eps), Unit3D(c[1], c[2], (3, 3, 3), eps=eps)
        self.b2a, self.b2b = Unit3D(cin, c[3], eps=eps), Unit3D(c[3], c[4], (3, 3, 3), eps=eps)
        self.b3a, self.b3b = MaxPoolSame((3, 3, 3), (1, 1, 1)), Unit3D(cin, c[5], eps=eps)
        self.out_channels = c[0] + c[2] + c[4] + c[5]

    def forward(self, x):
        return torch.cat([self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(self.b3a(x))], 1)


# Channel widths of the Inception-v1 blocks inflated to 3-D (Carreira & Zisserman 2017).
MIXED = {
    "Mixed_3b": (64, 96, 128, 16, 32, 32), "Mixed_3c": (128, 128, 192, 32, 96, 64),
    "Mixed_4b": (192, 96, 208, 16, 48, 64), "Mixed_4c": (160, 112, 224, 24, 64, 64),
    "Mixed_4d": (128, 128, 256, 24, 64, 64), "Mixed_4e": (112, 144, 288, 32, 64, 64),
    "Mixed_4f": (256, 160, 320, 32, 128, 128), "Mixed_5b": (256, 160, 320, 32, 128, 128),
    "Mixed_5c": (384, 192, 384, 48, 128, 128),
}


class InceptionI3D(nn.Module):
    """Inception-I3D with the usual parameter names (Conv3d_1a_7x7.conv3d.weight, Mixed_3b.b1b.bn.*, logits.conv3d.*),
    so Kinetics-400 checkpoints in that layout load as they are. `width` < 1 scales every block (tiny models only);
    `bn_eps` is the BatchNorm epsilon the weights run with (it belongs to the FVD convention)."""

    def __init__(self, num_classes: int = 400, width: float = 1.0, bn_eps: float = TF_BN_EPS):
        super().__init__()
        w = lambda c: max(1, int(round(c * width)))  # noqa: E731
        self.Conv3d_1a_7x7 = Unit3D(3, w(64), (7, 7, 7), (2, 2, 2), eps=bn_eps)
        self.MaxPool3d_2a_3x3 = MaxPoolSame((1, 3, 3), (1, 2, 2))
        self.Conv3d_2b_1x1 = Unit3D(w(64), w(64), eps=bn_eps)
        self.Conv3d_2c_3x3 = Unit3D(w(64), w(192), (3, 3, 3), eps=bn_eps)
        self.MaxPool3d_3a_3x3 = MaxPoolSame((1, 3, 3), (1, 2, 2))
        cin = w(192)
        pools = {"Mixed_4b": ((3, 3, 3), (2, 2, 2)), "Mixed_5b": ((2, 2, 2), (2, 2, 2))}
        for name, chans in MIXED.items():
            if name in pools:
                self.add_module(f"MaxPool3d_{name[-2]}a_{pools[name][0][0]}x{pools[name][0][0]}", MaxPoolSame(*pools[name]))
            block = Mixed(cin, tuple(w(c) for c in chans), bn_eps)
            self.add_module(name, block)
            cin = block.out_channels
        self.logits = Unit3D(cin, num_classes, bn=False, relu=False, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: B×3×T×224×224 in [-1, 1] (T >= 9) -> B×num_classes logits averaged over time."""
        for name, module in self.named_children():
            if name == "logits":
                break
            x = module(x)
        x = F.avg_pool3d(x, (2, 7, 7), stride=1)
        return self.logits(x).mean(dim=(2, 3, 4))


def load_i3d(checkpoint: str | None = None, sha256_hex: str | None = None, width: float = 1.0, tiny: bool = False,
             seed: int = 0, device: str = "cpu", bn_eps: float = TF_BN_EPS,
             sha256_setting: str = "models.i3d.sha256") -> InceptionI3D:
    """I3D from a local weight file (torch state dict loaded with weights_only=True, or safetensors) whose
    sha256 must equal `sha256_hex` (named `sha256_setting` in messages); seeded random weights when `tiny`.
    Once per process. The result's `weights_id` names the weights: the file's sha256, or `random(...)`."""
    key = cache_key("i3d", checkpoint, sha256_hex, width, tiny, seed, device, bn_eps)
    return cached(key, lambda: _build_i3d(checkpoint, sha256_hex, width, tiny, seed, device, bn_eps, sha256_setting))


def _build_i3d(checkpoint, sha256_hex, width, tiny, seed, device, bn_eps, sha256_setting) -> InceptionI3D:
    torch.manual_seed(seed)
    net = InceptionI3D(width=width, bn_eps=bn_eps)
    if tiny:  # He init keeps activations alive through the random network, so its features depend on the video
        for m in net.modules():
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
        net.weights_id = f"random(seed={seed},width={width})"
    else:
        if not checkpoint or not Path(checkpoint).is_file():
            raise MissingWeights(f"I3D Kinetics-400 weights: no file at models.i3d.checkpoint={checkpoint!r}. Put a state dict "
                                 "(Inception-I3D layout, .pt or .safetensors) there, or run with models=tiny")
        digest = sha256(checkpoint)
        if not sha256_hex:
            raise MissingWeights(f"I3D weights {checkpoint}: {sha256_setting} is not set; the file's sha256 is {digest}. "
                                 "Verify the file (e.g. against its publisher's checksum), then set "
                                 f"{sha256_setting}={digest}")
        if digest != str(sha256_hex).lower():
            raise MissingWeights(f"I3D weights {checkpoint}: sha256 {digest} != {sha256_setting}={sha256_hex}")
        net.load_state_dict(load_state_dict(checkpoint))
        net.weights_id = digest
    return net.eval().to(device)


@dataclass(frozen=True)
class FVDConvention:
    """One published FVD recipe: what I3D sees and how the Fréchet distance is estimated from its features."""

    bn_eps: float       # BatchNorm epsilon the I3D weights run with
    resize: str         # "tf1_bilinear" (tf.image.resize_bilinear, legacy corners, no antialias) | "torch_bilinear"
    keep_aspect: bool   # short side to `size`, then centre crop (else straight to size×size)
    value_max: float    # frames enter the resize in [0, value_max], then are mapped to I3D's [-1, 1]
    ddof: int           # covariance normalisation: N - ddof
    sqrtm: str          # "scipy": Re tr sqrtm(S1 S2) | "svd": TF-GAN's tr sqrt(A S2 A), A = sqrt(S1) by SVD
    reference: str


#: The conventions (reference file:line in docs/metrics.md). `stylegan_v` is the default (conf/metrics/paper.yaml).
CONVENTIONS = {
    # google-research frechet_video_distance.py (preprocess, TF-Hub i3d-kinetics-400/1) + TF-GAN's distance
    "tf": FVDConvention(TF_BN_EPS, "tf1_bilinear", False, 255.0, 1, "svd", "google-research/frechet_video_distance + TF-GAN"),
    # universome/stylegan-v: uint8 frames into the TorchScript port of the TF-Hub I3D (rescale=True, resize=True)
    "stylegan_v": FVDConvention(TF_BN_EPS, "torch_bilinear", False, 255.0, 0, "scipy", "universome/stylegan-v"),
    # wilson1yan/VideoGPT videogpt/fvd: short side to 224 + centre crop in [0, 1], eps 1e-5, TF-GAN-style distance
    "videogpt": FVDConvention(TORCH_BN_EPS, "torch_bilinear", True, 1.0, 1, "svd", "wilson1yan/VideoGPT"),
}


def tf1_resize_bilinear(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """TF1 `tf.image.resize_bilinear` (align_corners=False, half_pixel_centers=False): output pixel i samples
    input position i * in/out, no antialiasing. x: N×C×H×W float."""
    for dim, out in ((2, size[0]), (3, size[1])):
        n = x.shape[dim]
        pos = torch.arange(out, dtype=torch.float64) * (n / out)
        lo = pos.floor().long().clamp(max=n - 1)
        hi = (lo + 1).clamp(max=n - 1)
        shape = [1, 1, 1, 1]
        shape[dim] = out
        frac = (pos - lo).to(x.dtype).view(shape).to(x.device)
        a, b = x.index_select(dim, lo.to(x.device)), x.index_select(dim, hi.to(x.device))
        x = a + (b - a) * frac
    return x


def i3d_input(video: np.ndarray, convention: FVDConvention, size: int, device: str = "cpu") -> torch.Tensor:
    """uint8 T×H×W×3 frames -> the 1×3×T×size×size tensor in [-1, 1] that I3D sees under `convention`."""
    x = torch.from_numpy(np.ascontiguousarray(video)).to(device).permute(0, 3, 1, 2).float() * (convention.value_max / 255.0)
    h, w = x.shape[-2:]
    if convention.keep_aspect:
        scale = size / min(h, w)
        target = (size, math.ceil(w * scale)) if h < w else (math.ceil(h * scale), size)
    else:
        target = (size, size)
    if convention.resize == "tf1_bilinear":
        x = tf1_resize_bilinear(x, target)
    else:
        x = F.interpolate(x, size=target, mode="bilinear", align_corners=False, antialias=False)
    top, left = (x.shape[-2] - size) // 2, (x.shape[-1] - size) // 2
    x = x[..., top:top + size, left:left + size]
    return (x * (2.0 / convention.value_max) - 1).permute(1, 0, 2, 3)[None]


def feature_stats(feats: np.ndarray, ddof: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (normalised by N - ddof) of N×D features, in float64."""
    x = np.asarray(feats, np.float64)
    return x.mean(0), np.cov(x, rowvar=False, ddof=ddof)


def _psd_sqrt(mat: np.ndarray, eps: float = SVD_EPS) -> np.ndarray:
    """TF-GAN's symmetric square root: U diag(s') V^T from the SVD, s' = sqrt(s), or s where s < eps."""
    u, s, vt = np.linalg.svd(mat)
    return (u * np.where(s < eps, s, np.sqrt(s))) @ vt


def trace_sqrt_product(s1: np.ndarray, s2: np.ndarray, method: str = "scipy") -> float:
    """tr (S1 S2)^½: the real part of scipy's `sqrtm` of the product, or TF-GAN's tr sqrt(A S2 A), A = S1^½."""
    if method == "scipy":
        return float(np.trace(np.real(scipy.linalg.sqrtm(s1 @ s2))))
    if method == "svd":
        a = _psd_sqrt(s1)
        return float(np.trace(_psd_sqrt(a @ s2 @ a)))
    raise ValueError(f"sqrtm must be scipy or svd; got {method!r}")


def frechet_distance_from_stats(mu1: np.ndarray, s1: np.ndarray, mu2: np.ndarray, s2: np.ndarray,
                                sqrtm: str = "scipy") -> float:
    """||mu1 - mu2||² + tr(S1 + S2) - 2 tr (S1 S2)^½; at least 0 (identical sets give tiny negative values
    through the square root's round-off)."""
    d = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * trace_sqrt_product(s1, s2, sqrtm)
    return max(0.0, float(d))


def frechet_distance(feats_a: np.ndarray, feats_b: np.ndarray, convention: str = DEFAULT_CONVENTION) -> float:
    """The Fréchet distance between two sets of per-video features (N×D each) with `convention`'s statistics."""
    conv = CONVENTIONS[convention]
    return frechet_distance_from_stats(*feature_stats(feats_a, conv.ddof), *feature_stats(feats_b, conv.ddof), conv.sqrtm)


def weights_digest(convention: str, i3d_sha256: dict | None, pinned: str | None) -> tuple[str | None, str]:
    """The sha256 the I3D file must have under `convention` and the setting that says so: the convention's
    entry of `metrics.fvd.i3d_sha256`, else `models.i3d.sha256`. Both set and different is an error."""
    bound = (i3d_sha256 or {}).get(convention)
    if bound and pinned and str(bound).lower() != str(pinned).lower():
        raise MissingWeights(f"FVD convention {convention!r} needs the I3D weights with sha256 {bound} "
                             f"(metrics.fvd.i3d_sha256.{convention}) but models.i3d.sha256={pinned}: use that "
                             "convention's weights, or pick the convention these weights belong to (metrics.fvd.convention)")
    if bound:
        return str(bound), f"metrics.fvd.i3d_sha256.{convention}"
    return pinned, "models.i3d.sha256"


def windows(num_frames: int, window: int | None) -> list[int]:
    """First frames of the `window`-frame windows that cover `num_frames` frames: 0, w, 2w, … and a last one ending
    at the clip's end (overlapping the one before when w does not divide T); [0] (the whole clip) when T ≤ w."""
    if window is None or num_frames <= window:
        return [0]
    starts = list(range(0, num_frames - window + 1, window))
    return starts if starts[-1] + window == num_frames else [*starts, num_frames - window]


class FVD(SetMetric):
    """Per video: I3D features of the source and of the edit; over the set: their Fréchet distance."""

    columns = {
        "fvd": Column(percent=False, higher_is_better=False, group="source faithfulness"),
        "fvd_n": Column(percent=False, higher_is_better=True, group="set size"),
        "fvd_frames": Column(percent=False, higher_is_better=True, group="set size"),
    }

    def __init__(self, i3d: dict, convention: str = DEFAULT_CONVENTION, i3d_sha256: dict | None = None, size: int = 224,
                 min_frames: int = 9, window: int | None = None, source_cache_mb: float | None = None,
                 device: str = "cpu"):
        if convention not in CONVENTIONS:
            raise ValueError(f"metrics.fvd.convention must be one of {', '.join(CONVENTIONS)}; got {convention!r}")
        i3d = dict(i3d)
        digest, setting = weights_digest(convention, i3d_sha256, i3d.pop("sha256", None))
        self.tiny = bool(i3d.get("tiny", False))
        self.convention_name, self.convention = convention, CONVENTIONS[convention]
        self.net = load_i3d(**i3d, sha256_hex=digest, sha256_setting=setting, bn_eps=self.convention.bn_eps, device=device)
        if window is not None and window < min_frames:
            raise ValueError(f"metrics.fvd.window must be at least min_frames ({min_frames}), got {window}")
        self.size, self.min_frames, self.window, self.device = size, min_frames, window, device
        self._source = SampleCache(source_cache_mb)  # 400 floats per source

    @property
    def info(self) -> dict[str, str]:
        """What the run's summary records about the scores: the I3D weights (sha256 or random(...)) and the convention."""
        return {"fvd_i3d": self.net.weights_id, "fvd_convention": self.convention_name}

    @torch.no_grad()
    def embed(self, video: np.ndarray) -> np.ndarray:
        """The video's I3D feature: of the whole clip, or the mean over the windows that cover a longer one."""
        if len(video) < self.min_frames:
            raise ValueError(f"I3D needs at least {self.min_frames} frames, got {len(video)}")
        starts = windows(len(video), self.window)
        return np.mean([self.net(i3d_input(video[s:s + (self.window or len(video))], self.convention, self.size,
                                            self.device))[0].float().cpu().numpy() for s in starts], axis=0)

    def features(self, sample: EditSample, edited: np.ndarray) -> dict[str, np.ndarray]:
        real = self._source.get(sample, "i3d", lambda: self.embed(sample.source))
        return {"real": real, "fake": self.embed(edited), "frames": np.asarray(len(edited)),
                "i3d": np.asarray(self.net.weights_id), "convention": np.asarray(self.convention_name)}

    def compute(self, features: list[dict[str, np.ndarray]]) -> dict[str, float]:
        frames = {int(f["frames"]) for f in features}
        out = {"fvd_n": float(len(features)), "fvd_frames": float(frames.pop()) if len(frames) == 1 else float("nan")}
        made_with = [(str(f.get("i3d", "unrecorded")), str(f.get("convention", "unrecorded"))) for f in features]
        current = (self.net.weights_id, self.convention_name)
        if any(m != current for m in made_with):
            other = sorted({f"{w} ({c})" for w, c in made_with if (w, c) != current})
            log.error("FVD is NaN: features of %d videos were made with other I3D weights or convention (%s) than the "
                      "current ones (%s (%s)); re-score them with stage=score", sum(m != current for m in made_with),
                      ", ".join(other), *current)
            return {**out, "fvd": float("nan")}
        if len(features) < 2:
            log.warning("FVD needs at least 2 videos for a covariance; got %d", len(features))
            return {**out, "fvd": float("nan")}
        real = np.stack([f["real"] for f in features])
        fake = np.stack([f["fake"] for f in features])
        return {**out, "fvd": frechet_distance(real, fake, self.convention_name)}
