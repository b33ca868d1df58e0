"""SVD's conditioning and denoiser call, shared by every method on this backbone.

Frames in and out (pixels at the working size, VAE encode/decode), the image conditioning (CLIP embedding +
noise-augmented image latents + added time ids, with classifier-free guidance's zero negative branch), and
`model(cond)`, which turns the UNet into the `F(x, σ)` the inversion and sampling loops call. Pixels are
prepared as the Videoshop release prepares them (`to_pixels`); the CLIP embedding is either the release's
(`clip_embeds`: the original image resized straight to CLIP's input) or the library pipeline's own
(`pipeline_clip_embeds`, so that `svd_no_src` matches `StableVideoDiffusionPipeline` exactly).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as Fnn
from diffusers.utils.torch_utils import randn_tensor

from harness.types import EditSample
from videoshop.edm import c_in, c_noise
from videoshop.latents import standardize
from videoshop.models import SVDComponents


def check_num_frames(name: str, sample: EditSample, num_frames: int, hint: str = "") -> None:
    """The SVD methods edit clips of the backbone's trained length (`models.svd_backbone.num_frames`: 14 for
    img2vid, 25 for img2vid-xt); any other length is an error that says how to match them (plus `hint`)."""
    if sample.num_frames != num_frames:
        raise ValueError(
            f"{name}: sample {sample.id} has {sample.num_frames} frames but the SVD backbone is set for "
            f"{num_frames} (models.svd_backbone.num_frames). Use a dataset of {num_frames}-frame clips "
            f"(dataset.num_frames={num_frames}) or a backbone trained for the clip's length (models=svd: 14 frames, "
            f"models=svd_xt: 25){hint}.")


def resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Float N×C×H×W → N×C×h×w, bilinear with antialiasing: torchvision's `Resize(BILINEAR, antialias=True)` on a
    tensor, the release's resize (`data_module.py`), which is this very `interpolate` call."""
    return Fnn.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)


def resize_frames(frames: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 T×H×W×3 → uint8 T×h×w×3 (bilinear, antialiased, rounded): an *image* at the working size, for
    `svd_no_src`, whose input is an image as `StableVideoDiffusionPipeline`'s is. Videoshop uses `to_pixels`."""
    if frames.shape[1:3] == tuple(size):
        return frames
    x = resize(torch.from_numpy(frames).permute(0, 3, 1, 2).float(), size)
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def to_pixels(frames: np.ndarray, size: tuple[int, int], device: torch.device) -> torch.Tensor:
    """uint8 T×H×W×3 → float32 T×3×h×w in [−1, 1] at the working `size`, on `device`, as the release prepares
    frames (`data_module.py`: ÷255, `Resize((h, w), BILINEAR, antialias=True)` in float on the CPU, then
    `Normalize(0.5, 0.5)`): never rounded to 8 bits in between. At the working size nothing is resized, and
    (x/255 − 0.5)/0.5 equals x/127.5 − 1 bit for bit for every uint8 x."""
    x = torch.from_numpy(frames).permute(0, 3, 1, 2) / 255.0
    if tuple(x.shape[-2:]) != tuple(size):
        x = resize(x, size)
    return ((x - 0.5) / 0.5).to(device)


@torch.no_grad()
def encode(c: SVDComponents, pixels: torch.Tensor, upcast: bool = False) -> torch.Tensor:
    """VAE posterior mode of T×3×h×w pixels, unscaled, as 1×T×C×h/8×w/8 float32 (all frames in one batch).

    `upcast`: an fp16 VAE whose config sets `force_upcast` encodes in fp32, as `StableVideoDiffusionPipeline`
    does for its image latents (the VAE is cast there and back, as the library does).
    """
    vae = c.vae
    upcast = upcast and vae.dtype == torch.float16 and bool(vae.config.get("force_upcast", False))
    if upcast:
        vae.to(torch.float32)
    try:
        z = vae.encode(pixels.to(vae.dtype)).latent_dist.mode()
    finally:
        if upcast:
            vae.to(torch.float16)
    return z.float()[None]


@torch.no_grad()
def clip_embeds(c: SVDComponents, image: np.ndarray) -> torch.Tensor:
    """CLIP image embedding (1×1×D) of a uint8 h×w×3 image resized straight to CLIP's input size, bilinear with
    antialiasing, then CLIP-normalized: the Videoshop release's CLIP input (from the original image)."""
    fe = c.feature_extractor
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255.0
    x = resize(x, (fe.crop_size["height"], fe.crop_size["width"]))
    mean, std = (torch.tensor(v, dtype=x.dtype)[None, :, None, None] for v in (fe.image_mean, fe.image_std))
    x = ((x - mean) / std).to(c.device, c.image_encoder.dtype)
    return c.image_encoder(x).image_embeds[:, None]


@torch.no_grad()
def pipeline_clip_embeds(c: SVDComponents, image: np.ndarray) -> torch.Tensor:
    """CLIP image embedding (1×1×D) of a uint8 image at the working size through `StableVideoDiffusionPipeline`'s
    own helper (its Gaussian-blur antialiased resize to 224), as the pipeline computes it."""
    return c.helpers._encode_image(PIL.Image.fromarray(image), c.device, 1, False)


@torch.no_grad()
def decode(c: SVDComponents, latents: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """Scaled latents 1×T×C×h×w → uint8 T×H×W×3 at `size`, all frames decoded at once."""
    z = latents[0] / c.vae.config.scaling_factor
    x = c.vae.decode(z.to(c.vae.dtype), num_frames=z.shape[0]).sample.float().clamp(-1, 1)
    x = (x + 1) * 127.5
    if tuple(x.shape[-2:]) != tuple(size):
        x = resize(x, size)
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


@dataclass
class Condition:
    """Everything the UNet is conditioned on besides x and σ, CFG-batched (negative first) when `guidance` is set."""

    embeds: torch.Tensor
    image_latents: torch.Tensor
    time_ids: torch.Tensor
    guidance: torch.Tensor | None  # 1×T×1×1×1 per-frame scale, None = no guidance (one branch)


@torch.no_grad()
def condition(c: SVDComponents, pixels: torch.Tensor, embeds: torch.Tensor, num_frames: int, *,
              generator: torch.Generator, noise_aug: float, fps: int, motion_bucket_id: int, min_guidance: float = 1.0,
              max_guidance: float = 1.0, standardize_latents: bool = False, upcast_vae: bool = False) -> Condition:
    """SVD's conditioning on one image, in `StableVideoDiffusionPipeline`'s order of random draws.

    `pixels`: the image as 1×3×h×w in [−1, 1] at the working size (`to_pixels`); `embeds`: its clean CLIP
    embedding, 1×1×D (`clip_embeds` or `pipeline_clip_embeds`). VAE mode of the pixels plus `noise_aug`·N(0, 1)
    pixel noise (unscaled; in fp32 with `upcast_vae`, see `encode`; with `standardize_latents`, one global
    mean/std then ÷ the VAE scale: the release's source conditioning); added time ids (fps − 1, motion bucket,
    noise_aug); per-frame guidance linspace(min, max) when max > 1, with zero embeddings and latents as negatives.
    """
    cfg = max_guidance > 1.0
    if cfg:
        embeds = torch.cat([torch.zeros_like(embeds), embeds])
    pixels = pixels + noise_aug * randn_tensor(pixels.shape, generator=generator, device=c.device, dtype=pixels.dtype)
    lat = encode(c, pixels, upcast=upcast_vae)[:, 0]  # 1×C×h×w
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
