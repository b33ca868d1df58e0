"""FVD (paper Table 2, source faithfulness): the Fréchet distance between I3D features of the set of
source videos and the set of edited videos. Features: Kinetics-400 logits of the Inception-I3D network
averaged over time, frames resized straight to 224×224 with values in [-1, 1]. With 14-frame clips this is
FVD@14f; with few videos the covariances are rank-deficient, so the matrix square root's real part is used
and the number of videos and frames is reported beside the score (`fvd_n`, `fvd_frames`).

The weight file's sha256 must be configured (`models.i3d.sha256`) and is checked; it travels with every
video's features and into the run's summary (`metric_info.fvd_i3d`), and FVD over features made with another
I3D is NaN rather than a mix. I3D runs in fp32 everywhere (fp16 shifts the features, hence FVD).
"""
from __future__ import annotations

import logging
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
from metrics.tensors import resize, to_tensor

log = logging.getLogger(__name__)


def _same_pad(x: torch.Tensor, kernel: tuple[int, ...], stride: tuple[int, ...]) -> torch.Tensor:
    """TensorFlow's "SAME" padding for a 3-D conv/pool (the layout I3D's weights were trained with)."""
    pads = []
    for size, k, s in zip(reversed(x.shape[2:]), reversed(kernel), reversed(stride)):
        total = max(k - s, 0) if size % s == 0 else max(k - size % s, 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads)


class Unit3D(nn.Module):
    """Conv3d (+ BatchNorm + ReLU) with SAME padding."""

    def __init__(self, cin: int, cout: int, kernel=(1, 1, 1), stride=(1, 1, 1), bn: bool = True, relu: bool = True, bias: bool = False):
        super().__init__()
        self.kernel, self.stride, self.relu = tuple(kernel), tuple(stride), relu
        self.conv3d = nn.Conv3d(cin, cout, self.kernel, self.stride, bias=bias)
        self.bn = nn.BatchNorm3d(cout, eps=1e-3, momentum=0.01) if bn else None

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

    def __init__(self, cin: int, c: tuple[int, int, int, int, int, int]):
        super().__init__()
        self.b0 = Unit3D(cin, c[0])
        self.b1a, self.b1b = Unit3D(cin, c[1]), Unit3D(c[1], c[2], (3, 3, 3))
        self.b2a, self.b2b = Unit3D(cin, c[3]), Unit3D(c[3], c[4], (3, 3, 3))
        self.b3a, self.b3b = MaxPoolSame((3, 3, 3), (1, 1, 1)), Unit3D(cin, c[5])
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
    so Kinetics-400 checkpoints in that layout load as they are. `width` < 1 scales every block (tiny models only)."""

    def __init__(self, num_classes: int = 400, width: float = 1.0):
        super().__init__()
        w = lambda c: max(1, int(round(c * width)))  # noqa: E731
        self.Conv3d_1a_7x7 = Unit3D(3, w(64), (7, 7, 7), (2, 2, 2))
        self.MaxPool3d_2a_3x3 = MaxPoolSame((1, 3, 3), (1, 2, 2))
        self.Conv3d_2b_1x1 = Unit3D(w(64), w(64))
        self.Conv3d_2c_3x3 = Unit3D(w(64), w(192), (3, 3, 3))
        self.MaxPool3d_3a_3x3 = MaxPoolSame((1, 3, 3), (1, 2, 2))
        cin = w(192)
        pools = {"Mixed_4b": ((3, 3, 3), (2, 2, 2)), "Mixed_5b": ((2, 2, 2), (2, 2, 2))}
        for name, chans in MIXED.items():
            if name in pools:
                self.add_module(f"MaxPool3d_{name[-2]}a_{pools[name][0][0]}x{pools[name][0][0]}", MaxPoolSame(*pools[name]))
            block = Mixed(cin, tuple(w(c) for c in chans))
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
             seed: int = 0, device: str = "cpu") -> InceptionI3D:
    """I3D from a local weight file (torch state dict loaded with weights_only=True, or safetensors) whose
    sha256 must equal `sha256_hex`; seeded random weights when `tiny`. Once per process. The result's
    `weights_id` names the weights: the file's sha256, or `random(...)` for tiny ones."""
    key = cache_key("i3d", checkpoint, sha256_hex, width, tiny, seed, device)
    return cached(key, lambda: _build_i3d(checkpoint, sha256_hex, width, tiny, seed, device))


def _build_i3d(checkpoint, sha256_hex, width, tiny, seed, device) -> InceptionI3D:
    torch.manual_seed(seed)
    net = InceptionI3D(width=width)
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
            raise MissingWeights(f"I3D weights {checkpoint}: models.i3d.sha256 is not set; the file's sha256 is {digest}. "
                                 "Verify the file (e.g. against its publisher's checksum), then set "
                                 f"models.i3d.sha256={digest}")
        if digest != str(sha256_hex).lower():
            raise MissingWeights(f"I3D weights {checkpoint}: sha256 {digest} != models.i3d.sha256={sha256_hex}")
        net.load_state_dict(load_state_dict(checkpoint))
        net.weights_id = digest
    return net.eval().to(device)


class FVD(SetMetric):
    """Per video: I3D features of the source and of the edit; over the set: their Fréchet distance."""

    columns = {
        "fvd": Column(percent=False, higher_is_better=False, group="source faithfulness"),
        "fvd_n": Column(percent=False, higher_is_better=True, group="set size"),
        "fvd_frames": Column(percent=False, higher_is_better=True, group="set size"),
    }

    def __init__(self, i3d: dict, size: int = 224, min_frames: int = 9, source_cache_mb: float | None = None,
                 device: str = "cpu"):
        i3d = dict(i3d)
        if "sha256" in i3d:
            i3d["sha256_hex"] = i3d.pop("sha256")
        self.tiny = bool(i3d.get("tiny", False))
        self.net = load_i3d(**i3d, device=device)
        self.size, self.min_frames, self.device = size, min_frames, device
        self._source = SampleCache(source_cache_mb)  # 400 floats per source

    @property
    def info(self) -> dict[str, str]:
        """What the run's summary records about the scores: the I3D weights (sha256 or random(...))."""
        return {"fvd_i3d": self.net.weights_id}

    @torch.no_grad()
    def embed(self, video: np.ndarray) -> np.ndarray:
        if len(video) < self.min_frames:
            raise ValueError(f"I3D needs at least {self.min_frames} frames, got {len(video)}")
        x = resize(to_tensor(video, self.device), (self.size, self.size)).clamp(0, 1) * 2 - 1
        x = x.permute(1, 0, 2, 3)[None]  # 1×3×T×H×W, fp32
        return self.net(x)[0].float().cpu().numpy()

    def features(self, sample: EditSample, edited: np.ndarray) -> dict[str, np.ndarray]:
        real = self._source.get(sample, "i3d", lambda: self.embed(sample.source))
        return {"real": real, "fake": self.embed(edited), "frames": np.asarray(len(edited)),
                "i3d": np.asarray(self.net.weights_id)}

    def compute(self, features: list[dict[str, np.ndarray]]) -> dict[str, float]:
        real = np.stack([f["real"] for f in features]).astype(np.float64)
        fake = np.stack([f["fake"] for f in features]).astype(np.float64)
        frames = {int(f["frames"]) for f in features}
        out = {"fvd_n": float(len(features)), "fvd_frames": float(frames.pop()) if len(frames) == 1 else float("nan")}
        made_with = [str(f.get("i3d", "unrecorded")) for f in features]
        if any(d != self.net.weights_id for d in made_with):
            other = sorted(set(made_with) - {self.net.weights_id})
            log.error("FVD is NaN: features of %d videos were made with other I3D weights (%s) than the current ones "
                      "(%s); re-score them with stage=score", sum(d in other for d in made_with), ", ".join(other),
                      self.net.weights_id)
            return {**out, "fvd": float("nan")}
        if len(features) < 2:
            log.warning("FVD needs at least 2 videos for a covariance; got %d", len(features))
            return {**out, "fvd": float("nan")}
        return {**out, "fvd": frechet_distance(real.mean(0), np.cov(real, rowvar=False), fake.mean(0), np.cov(fake, rowvar=False))}


def frechet_distance(mu1: np.ndarray, s1: np.ndarray, mu2: np.ndarray, s2: np.ndarray) -> float:
    """||mu1 - mu2||² + tr(S1 + S2 - 2 (S1 S2)^½), the square root's real part (rank-deficient sets); at least 0
    (identical sets give tiny negative values through the square root's round-off)."""
    covmean = np.real(scipy.linalg.sqrtm(s1 @ s2))
    return max(0.0, float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean)))
