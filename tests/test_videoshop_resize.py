"""Videoshop's pixels reach the VAE as the release prepares them: resized in float, never rounded to 8 bits.

The release (`data_module.py`) divides by 255, applies torchvision's `Resize((576, 1024), BILINEAR,
antialias=True)` to the float tensor and then `Normalize(0.5, 0.5)`. The references below are written with
torchvision, independently of `videoshop.svd`.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from hydra.utils import instantiate

from videoshop import svd


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def method(compose):
    return instantiate(compose("method=videoshop", "device=cpu", "method.num_frames=4").method)


def _at(sample, frames: int, height: int, width: int):
    """The sample cut to `frames` frames and resampled (nearest) to height×width: a plain uint8 input of that size."""
    def pick(a):
        ys = np.arange(height) * a.shape[-3] // height
        xs = np.arange(width) * a.shape[-2] // width
        return np.ascontiguousarray(a[..., ys, :, :][..., :, xs, :])

    return dataclasses.replace(sample, source=pick(sample.source[:frames]), edited_frame=pick(sample.edited_frame))


def _release_pixels(frames: np.ndarray, size) -> torch.Tensor:
    """The release's preparation of uint8 T×H×W×3 frames, with torchvision: ÷255, float resize, Normalize(0.5, 0.5)."""
    x = torch.from_numpy(frames).permute(0, 3, 1, 2) / 255.0
    x = TF.resize(x, list(size), interpolation=TF.InterpolationMode.BILINEAR, antialias=True)
    return TF.normalize(x, [0.5], [0.5])


def _quantized_pixels(frames: np.ndarray, size) -> torch.Tensor:
    """What the project did before: the resized frames rounded to uint8, then x/127.5 − 1."""
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float()
    x = TF.resize(x, list(size), interpolation=TF.InterpolationMode.BILINEAR, antialias=True).round().clamp(0, 255)
    return x / 127.5 - 1


def _old_to_pixels(frames: np.ndarray, size, device) -> torch.Tensor:
    """The project's preparation before the float resize: uint8 resize (rounded), then x/127.5 − 1."""
    return torch.from_numpy(svd.resize_frames(frames, size)).permute(0, 3, 1, 2).float().to(device) / 127.5 - 1.0


def _edit_recording(method, sample, monkeypatch):
    """Edit `sample`, recording every input of the VAE encoder, every conditioning image and every resize's size."""
    encoded, conditioned, sizes = [], [], []
    encode, condition, resize = svd.encode, svd.condition, svd.resize
    monkeypatch.setattr(svd, "encode", lambda c, pixels, **kw: encoded.append(pixels.clone()) or encode(c, pixels, **kw))
    monkeypatch.setattr(svd, "condition", lambda c, pixels, *a, **kw: conditioned.append(pixels.clone())
                        or condition(c, pixels, *a, **kw))
    monkeypatch.setattr(svd, "resize", lambda x, size: sizes.append(tuple(size)) or resize(x, size))
    out = method.edit(sample, 42)
    return out, encoded, conditioned, sizes


def test_frames_twice_the_working_size_reach_the_vae_resized_in_float(method, sample_track, monkeypatch):
    h, w = method.size
    sample = _at(sample_track.load(sample_track.ids()[0]), 4, 2 * h, 2 * w)
    out, encoded, conditioned, _ = _edit_recording(method, sample, monkeypatch)
    video, edited = _release_pixels(sample.source, (h, w)), _release_pixels(sample.edited_frame[None], (h, w))
    # the video (first encode), the clean edited frame (the rescaling's encode, last), and the conditioning images
    # (source frame 0 as the release resizes it: alone, as an image; the edited frame)
    torch.testing.assert_close(encoded[0], video, rtol=0, atol=0)
    torch.testing.assert_close(encoded[-1], edited, rtol=0, atol=0)
    torch.testing.assert_close(conditioned[0], _release_pixels(sample.source[:1], (h, w)), rtol=0, atol=0)
    torch.testing.assert_close(conditioned[1], edited, rtol=0, atol=0)
    # ... which is not what rounding the resized frames to 8 bits gives, nor is the edit
    assert not torch.allclose(encoded[0], _quantized_pixels(sample.source, (h, w)), rtol=0, atol=1e-3)
    assert out.frames.shape == sample.source.shape and out.frames.dtype == np.uint8
    monkeypatch.setattr(svd, "to_pixels", _old_to_pixels)
    assert not np.array_equal(method.edit(sample, 42).frames, out.frames)


def test_the_working_size_path_resizes_nothing_and_encodes_the_old_pixels(method, sample_track, monkeypatch):
    """At the working size no resize runs (the CLIP input, 224×224 from the original frame, is the only one), the
    VAE gets x/127.5 − 1 of the uint8 frames bit for bit (the release's (x/255 − 0.5)/0.5 is the same number for
    every uint8 x), and the edit equals the one made with the old, quantizing preparation."""
    h, w = method.size
    sample = _at(sample_track.load(sample_track.ids()[0]), 4, h, w)
    out, encoded, conditioned, sizes = _edit_recording(method, sample, monkeypatch)
    assert set(sizes) == {(224, 224)}
    old = lambda f: torch.from_numpy(f).permute(0, 3, 1, 2).float() / 127.5 - 1.0  # noqa: E731  the old helper
    assert torch.equal(encoded[0], old(sample.source)) and torch.equal(encoded[-1], old(sample.edited_frame[None]))
    assert torch.equal(conditioned[0], old(sample.source[:1])) and torch.equal(conditioned[1], old(sample.edited_frame[None]))
    values = torch.arange(256, dtype=torch.uint8)
    assert torch.equal(TF.normalize((values / 255.0)[None, :, None], [0.5], [0.5])[0, :, 0], values.float() / 127.5 - 1)
    monkeypatch.setattr(svd, "to_pixels", _old_to_pixels)
    assert np.array_equal(method.edit(sample, 42).frames, out.frames)
