"""SVD's conditioning and denoiser call, shared by every method on this backbone.

Frames in and out (resize, VAE encode/decode), the image conditioning (CLIP embedding + noise-augmented image
latents + added time ids, with classifier-free guidance's zero negative branch), and `model(cond)`, which
turns the UNet into the `F(x, σ)` the inversion and sampling loops call. CLIP encoding reuses the library
pipeline's own helper so it matches `StableVideoDiffusionPipeline` exactly.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as Fnn
from diffusers.utils.torch_utils import randn_tensor

from videoshop.edm import c_in, c_noise
from videoshop.latents import standardize
from videoshop.models import SVDComponents


def resize_frames(frames: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 T×H×W×3 → uint8 T×h×w×3, bilinear with antialiasing (the release's resize; aspect not kept)."""
    if frames.shape[1:3] == tuple(size):
        return frames
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float()
    x = Fnn.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def to_pixels(frames: np.ndarray, c: SVDComponents) -> torch.Tensor:
    """uint8 T×h×w×3 → T×3×h×w in [−1, 1] on the components' device (float32)."""
    return torch.from_numpy(frames).to(c.device).permute(0, 3, 1, 2).float() / 127.5 - 1.0


@torch.no_grad()
def encode(c: SVDComponents, pixels: torch.Tensor) -> torch.Tensor:
    """VAE posterior mode of T×3×h×w pixels, unscaled, as 1×T×C×h/8×w/8 float32 (all frames in one batch)."""
    z = c.vae.encode(pixels.to(c.vae.dtype)).latent_dist.mode()
    return z.float()[None]


@torch.no_grad()
def decode(c: SVDComponents, latents: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """Scaled latents 1×T×C×h×w → uint8 T×H×W×3 at `size`, all frames decoded at once."""
    z = latents[0] / c.vae.config.scaling_factor
    x = c.vae.decode(z.to(c.vae.dtype), num_frames=z.shape[0]).sample.float().clamp(-1, 1)
    x = (x + 1) * 127.5
    if tuple(x.shape[-2:]) != tuple(size):
        x = Fnn.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


@dataclass
class Condition:
    """Everything the UNet is conditioned on besides x and σ, CFG-batched (negative first) when `guidance` is set."""

    embeds: torch.Tensor
    image_latents: torch.Tensor
    time_ids: torch.Tensor
    guidance: torch.Tensor | None  # 1×T×1×1×1 per-frame scale, None = no guidance (one branch)


@torch.no_grad()
def condition(c: SVDComponents, image: np.ndarray, num_frames: int, *, generator: torch.Generator,
              noise_aug: float, fps: int, motion_bucket_id: int, min_guidance: float = 1.0,
              max_guidance: float = 1.0, standardize_latents: bool = False) -> Condition:
    """SVD's conditioning on one uint8 h×w×3 image, in `StableVideoDiffusionPipeline`'s order of random draws.

    CLIP embedding of the clean image; VAE mode of the image plus `noise_aug`·N(0, 1) pixel noise (unscaled;
    with `standardize_latents`, one global mean/std then ÷ the VAE scale: the release's source conditioning);
    added time ids (fps − 1, motion bucket, noise_aug); per-frame guidance linspace(min, max) when max > 1.
    """
    cfg = max_guidance > 1.0
    embeds = c.helpers._encode_image(PIL.Image.fromarray(image), c.device, 1, cfg)
    pixels = to_pixels(image[None], c)
    pixels = pixels + noise_aug * randn_tensor(pixels.shape, generator=generator, device=c.device, dtype=pixels.dtype)
    lat = encode(c, pixels)[:, 0]  # 1×C×h×w
    if standardize_latents:
        lat = standardize(lat) / c.vae.config.scaling_factor
    lat = lat.to(embeds.dtype)[:, None].repeat(1, num_frames, 1, 1, 1)
    if cfg:
        lat = torch.cat([torch.zeros_like(lat), lat])
    time_ids = torch.tensor([[fps - 1, motion_bucket_id, noise_aug]], dtype=embeds.dtype, device=c.device)
    time_ids = time_ids.repeat(2 if cfg else 1, 1)
    guidance = None
    if cfg:
        guidance = torch.linspace(min_guidance, max_guidance, num_frames, device=c.device)[None, :, None, None, None]
    return Condition(embeds, lat, time_ids, guidance)


def model(c: SVDComponents, cond: Condition):
    """F(x, σ): the UNet's raw (v-prediction) output for float32 latents x at level σ, guidance applied."""

    @torch.no_grad()
    def F(x: torch.Tensor, sigma: float) -> torch.Tensor:
        inp = x * c_in(sigma)
        if cond.guidance is not None:
            inp = torch.cat([inp, inp])
        inp = torch.cat([inp, cond.image_latents.to(inp.dtype)], dim=2).to(c.dtype)
        t = torch.tensor(c_noise(sigma), dtype=torch.float32, device=c.device)
        out = c.counter(inp, t, encoder_hidden_states=cond.embeds, added_time_ids=cond.time_ids, return_dict=False)[0]
        out = out.float()
        if cond.guidance is None:
            return out
        uncond, cond_out = out.chunk(2)
        return uncond + cond.guidance * (cond_out - uncond)

    return F
