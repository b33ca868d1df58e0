"""RAVE (Kara et al., CVPR 2024): randomized noise shuffling for video editing with an image model, Stable Diffusion
1.5 + ControlNet v1.1 depth, as the public code (rehg-lab/RAVE) runs it.

0. Resize every frame to about 512² pixels at the clip's aspect (680×384 for 16:9) and pad the clip to a multiple
   of grid² frames by repeating its last frame (the Videoshop authors output 14 frames; RAVE's own loader drops the
   remainder instead). The padding frames are denoised with the others and dropped at the end.
1. Depth of every frame with ZoeDepth, normalized as RAVE's annotator does: the frame edge-padded to multiples of 64,
   depth scaled between its 2nd and 85th percentiles, inverted, quantized to 8 bits, un-padded; the ControlNet
   condition is that map in [0, 1] on three channels.
2. VAE-encode grids of consecutive frames (grid_size×grid_size frames per image), as RAVE encodes its grid images.
3. DDIM-invert every frame on its own (a batch of frames, not grids) with ControlNet and the inversion prompt ("").
4. At every sampling step, draw a seeded random permutation of all frames, tile latents and depth conditions into
   grids in that order, and denoise each grid as one image with classifier-free guidance and ControlNet (DDIM, η = 0).
5. VAE-decode the last step's grids, un-tile, drop the padding, resize back to the benchmark's size.

Cost: `nfe` counts UNet forward calls (each with its ControlNet call): per inversion step one per batch of
`batch_size`·grid² frames, per sampling step one per batch of `batch_size` grids (the CFG pair in the same batch).
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from baselines import components, ddim, resize
from baselines.prompts import checked_config, prompts_for
from baselines.text_method import TextDrivenMethod
from harness.method import NonFiniteEdit, Phases
from harness.types import EditedVideo, EditSample

PADDING = "repeat_last"  # how the clip is padded to a multiple of grid² frames
DEPTH_PAD_MULTIPLE = 64  # RAVE's `resize_image_with_pad` edge-pads each frame to multiples of 64 before depth
DEPTH_RANGE = (0.02, 0.85)  # the percentiles mapped to far (0) and near (1) by RAVE's Zoe annotator
DEPTH_BATCH = 8  # frames per depth-estimator call
INVERSION_CONTROL_SCALE = 1.0  # RAVE's inversion calls ControlNet with conditioning_scale=1, whatever the config's


def tile(frames: torch.Tensor, order: torch.Tensor, grid: int) -> torch.Tensor:
    """N×C×h×w frames → (N/grid²)×C×(grid·h)×(grid·w) grids holding frames `order[0], order[1], …` row-major."""
    n, c, h, w = frames.shape
    x = frames[order].reshape(n // grid ** 2, grid, grid, c, h, w)
    return x.permute(0, 3, 1, 4, 2, 5).reshape(n // grid ** 2, c, grid * h, grid * w)


def untile(grids: torch.Tensor, order: torch.Tensor, grid: int) -> torch.Tensor:
    """The inverse of `tile`: grids → N×C×h×w frames back in frame order."""
    g, c, gh, gw = grids.shape
    h, w = gh // grid, gw // grid
    x = grids.reshape(g, c, grid, h, grid, w).permute(0, 2, 4, 1, 3, 5).reshape(g * grid ** 2, c, h, w)
    out = torch.empty_like(x)
    out[order] = x
    return out


def pad_frames(frames: torch.Tensor, grid: int) -> tuple[torch.Tensor, int]:
    """Repeat the last frame until the count is a multiple of grid²; returns the padded frames and the padding."""
    pad = -len(frames) % grid ** 2
    return torch.cat([frames, frames[-1:].expand(pad, *frames.shape[1:])]), pad


def normalize_depth(depth: torch.Tensor) -> torch.Tensor:
    """RAVE's Zoe annotator on one H×W depth map: (d − p2) / (p85 − p2), inverted (near = 1), quantized to uint8
    (truncation, as `astype(np.uint8)`) and returned in [0, 1]."""
    d = depth.float()
    lo, hi = torch.quantile(d.flatten(), torch.tensor(DEPTH_RANGE, device=d.device))
    d = 1.0 - (d - lo) / (hi - lo).clamp(min=1e-8)  # the clamp only guards a constant map, where RAVE divides by 0
    return (d * 255.0).clamp(0, 255).floor() / 255.0


class RAVE(TextDrivenMethod):
    """RAVE on Stable Diffusion 1.5 + ControlNet depth; every number comes from the method config (public defaults)."""

    def __init__(self, name: str, backbone: Any, prompts: Any, device: str = "cpu", sizes: Any = ((512, 512),),
                 size_multiple: int = 8, grid_size: int = 3, batch_size: int = 4, inversion_steps: int = 50,
                 steps: int = 50, guidance_scale: float = 7.5, guidance_start: float = 0.0,
                 controlnet_conditioning_scale: float = 1.0, control_start: float = 0.0, control_end: float = 1.0,
                 control_inversion: bool = True, inversion_prompt: str = "", negative_prompt: str = "",
                 shuffle: bool = True, seed: int | None = 0):
        super().__init__(name, device)
        settings, self.overrides = components.with_overrides(backbone, sizes=sizes, inversion_steps=inversion_steps,
                                                             steps=steps)
        self.sizes = resize.candidates(settings["sizes"], name)
        self.size_multiple = int(size_multiple)
        self.inversion_steps, self.steps = int(settings["inversion_steps"]), int(settings["steps"])
        self.grid, self.batch_size = int(grid_size), int(batch_size)
        if self.grid < 1 or self.batch_size < 1 or self.steps < 1:
            raise ValueError(f"{name}: grid_size, batch_size and steps must be positive")
        self.guidance_scale, self.guidance_start = float(guidance_scale), float(guidance_start)
        self.control_scale = float(controlnet_conditioning_scale)
        self.control_start, self.control_end = float(control_start), float(control_end)
        self.control_inversion, self.shuffle = bool(control_inversion), bool(shuffle)
        self.inversion_prompt, self.negative_prompt, self.seed = inversion_prompt, negative_prompt, seed
        self.prompts_cfg = checked_config(prompts)
        self.m = components.load_sd15_controlnet_depth(backbone, device)
        self.weights_revision = self.m.weights_revision
        self.dtype = components.dtype_for(device)


    @torch.no_grad()
    def depth_condition(self, frames: torch.Tensor) -> torch.Tensor:
        """ControlNet conditions of N×3×H×W frames in [-1, 1]: N×3×H×W normalized ZoeDepth maps in [0, 1]."""
        n, _, h, w = frames.shape
        pixels = frames.float().add(1).mul(127.5).round().clamp(0, 255).to(torch.uint8)  # the frames RAVE reads
        ph, pw = -h % DEPTH_PAD_MULTIPLE, -w % DEPTH_PAD_MULTIPLE
        padded = F.pad(pixels.float(), (0, pw, 0, ph), mode="replicate").to(torch.uint8)
        images = list(padded.permute(0, 2, 3, 1).cpu().numpy())
        depth, processor = self.m.depth, self.m.depth_processor
        maps = []
        for i in range(0, n, DEPTH_BATCH):
            inputs = processor(images=images[i:i + DEPTH_BATCH], return_tensors="pt").to(self.device)
            out = depth(**inputs)
            flipped = depth(pixel_values=inputs.pixel_values.flip(-1))  # Zoe's flip augmentation, averaged below
            post = processor.post_process_depth_estimation(out, source_sizes=[(h + ph, w + pw)] * len(inputs.pixel_values),
                                                           outputs_flipped=flipped)
            maps += [normalize_depth(p["predicted_depth"])[:h, :w] for p in post]
        return torch.stack(maps)[:, None].expand(n, 3, h, w).to(self.device, self.dtype)

    def permutation(self, num_frames: int, generator: torch.Generator) -> torch.Tensor:
        """This step's frame order: a random permutation (`shuffle`), else the frames in time order."""
        if self.shuffle:
            return torch.randperm(num_frames, generator=generator).to(self.device)
        return torch.arange(num_frames, device=self.device)

    def _eps(self, x: torch.Tensor, t: torch.Tensor, text: torch.Tensor, control: torch.Tensor | None,
             scale: float) -> torch.Tensor:
        """One UNet noise prediction, with ControlNet's residuals (at `scale`) when `control` is given."""
        down, mid = None, None
        if control is not None:
            down, mid = self.m.controlnet(x, t, encoder_hidden_states=text, controlnet_cond=control,
                                          conditioning_scale=scale, return_dict=False)
        return self.m.unet(x, t, encoder_hidden_states=text, down_block_additional_residuals=down,
                           mid_block_additional_residual=mid, return_dict=False)[0]

    @torch.no_grad()
    def edit(self, sample: EditSample, seed: int) -> EditedVideo:
        phases = Phases(self.device)
        seed = seed if self.seed is None else int(self.seed)
        generator = torch.Generator().manual_seed(seed)
        prompts = prompts_for(sample, self.prompts_cfg, self.device)
        T, g = sample.num_frames, self.grid
        vae, scheduler = self.m.vae, self.m.scheduler

        # 0. working size (~512² pixels per frame at the clip's aspect) and padding to whole grids
        height, width = resize.working_size(sample.size, self.sizes, keep_aspect=True, multiple=self.size_multiple)
        frames, pad = pad_frames(resize.to_working(sample.source, height, width, self.device, self.dtype), g)
        N = len(frames)
        in_order = torch.arange(N, device=self.device)

        # 1. depth conditions, per frame
        control = self.depth_condition(frames)
        phases.lap("depth")

        # 2. VAE-encode grids of consecutive frames, one grid per call as RAVE does
        grids = tile(frames, in_order, g)
        x0 = untile(components.encode_latents(vae, grids, 1), in_order, g) * vae.config.scaling_factor
        phases.lap("encode")
        inv_text, negative, target = self._text(self.inversion_prompt), self._text(self.negative_prompt), self._text(prompts.target)
        phases.lap("condition")

        # 3. DDIM inversion of every frame with ControlNet and the inversion prompt, batch_size·grid² frames per call
        per_call = self.batch_size * g * g

        def invert_eps(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return torch.cat([self._eps(x[i:i + per_call], t, inv_text.expand(len(x[i:i + per_call]), -1, -1),
                                        control[i:i + per_call] if self.control_inversion else None,
                                        INVERSION_CONTROL_SCALE) for i in range(0, N, per_call)])

        traj = ddim.invert(invert_eps, x0, scheduler.config, self.inversion_steps)
        nfe_inv = self.inversion_steps * math.ceil(N / per_call)
        phases.lap("invert")

        # 4. sampling: every step, shuffle the frames into grids and denoise each grid as one image
        scheduler.set_timesteps(self.steps, device=self.device)
        x = traj.at(scheduler.timesteps[0])
        nfe = 0
        for i, t in enumerate(scheduler.timesteps):
            progress = i / self.steps
            order = self.permutation(N, generator)
            latents, conds = tile(x, order, g), tile(control, order, g)
            # RAVE guides only once progress exceeds cond_step_start (so its first step is unguided by default)
            scale = self.guidance_scale if self.guidance_start < progress else 0.0
            controlled = self.control_start <= progress <= self.control_end
            eps = []
            for b in range(0, len(latents), self.batch_size):
                lat, cond = latents[b:b + self.batch_size], conds[b:b + self.batch_size]
                k = len(lat)
                text = torch.cat([negative.expand(k, -1, -1), target.expand(k, -1, -1)])
                out = self._eps(torch.cat([lat, lat]), t, text, torch.cat([cond, cond]) if controlled else None,
                                self.control_scale)
                uncond, cond_eps = out.chunk(2)
                eps.append(uncond + scale * (cond_eps - uncond))  # classifier-free guidance
                nfe += 1
            x = scheduler.step(untile(torch.cat(eps), order, g), t, x).prev_sample  # DDIM, eta = 0
            if not torch.isfinite(x).all():
                err = NonFiniteEdit(f"RAVE latents became non-finite at step {i}")
                err.nfe = nfe_inv + nfe
                raise err
        phases.lap("generate")

        # 5. decode the last step's grids, un-tile, drop the padding frames
        lat = tile(x, order, g) / vae.config.scaling_factor
        video = untile(components.decode_latents(vae, lat, 1), order, g)[:T]
        out_frames = resize.to_benchmark(video, *sample.size)
        phases.lap("decode")
        return EditedVideo(out_frames, nfe=nfe_inv + nfe, info={
            "phases": phases.report(), "nfe_inversion": nfe_inv, "nfe_sampling": nfe, **prompts.info(),
            "inversion_prompt": self.inversion_prompt, "negative_prompt": self.negative_prompt,
            "working_size": [height, width], "grid_size": g, "padding_frames": pad, "padding": PADDING,
            "frames_denoised": N, "shuffle": self.shuffle, "seed": seed, "inversion_steps": self.inversion_steps,
            "steps": self.steps, "guidance_scale": self.guidance_scale,
            "controlnet_conditioning_scale": self.control_scale, "control_inversion": self.control_inversion,
            "tiny_overrides": self.overrides,
        })
