"""Pix2Video (Ceylan, Huang, Mitra, ICCV 2023): video editing with an image model, Stable Diffusion 2 depth.

As the public code (`duyguceylan/pix2video`, `code/video_model_cross_frame_attn.py`) runs it:

1. Depth of every source frame from SD 2 depth's DPT, resized to the latent size and scaled to [-1, 1]; the
   UNet takes it as a fifth input channel beside the latent, at every call.
2. DDIM inversion of every frame with the source prompt and guidance 1, 50 steps, to x_T (`baselines.ddim`).
3. Sequential generation, frame by frame, from each frame's own x_T: 50 DDIM steps with classifier-free guidance
   (target prompt, empty negative), where
   a. every decoder self-attention of frame i ≥ 1 takes its queries from frame i and its keys/values from the
      attention inputs of the anchor frame 0 and of frame i − 1 at the same step, layer and CFG branch,
      concatenated along tokens (`injection.CrossFrameKVProcessor`); frame 0 attends to itself;
   b. for steps i ≤ `latent_update_until`·steps, after the DDIM step the latent is pulled toward the previous
      frame's x̂0 at the same step: x_{t−1} ← x_{t−1} − ∇_{x̂0} w·mean((x̂0_prev − x̂0)²), the gradient taken
      with respect to x̂0 (not through the UNet), i.e. x_{t−1} ← x_{t−1} − 2w(x̂0 − x̂0_prev)/numel.

Frames are squashed to 512×512 (the code's `load_512`) and the output resized back (`baselines.resize`). The
code runs in fp32, and so does this method. Cost: `nfe` counts UNet forward calls: one per inversion step (all
frames in one batch, one conditional call for guidance 1) plus one per sampling step and frame (the CFG pair in
one batch); the public code makes two calls for each of these (docs/pix2video.md).
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from baselines import components, ddim, injection, resize
from baselines.prompts import checked_config, prompts_for
from baselines.text_method import TextDrivenMethod
from harness.method import NonFiniteEdit, Phases
from harness.types import EditedVideo, EditSample

ANCHOR = 0  # the frame every later frame attends to (the code's keyframe_index, forward order)
DECODER = "up_blocks."  # the code's COND_LAYER = 7: its transformer layers 7–15 are the UNet's up blocks
FLAT_DEPTH_RANGE = torch.finfo(torch.float32).tiny  # floors the range min–max scaling divides by (a flat map has none)
# The code's own DDIM scheduler (`test_cfg.py`), passed to the pipeline in place of the hub's: diffusers 0.10.2's
# default steps_offset 0 gives timesteps 980, 960, …, 0 (the hub config's offset 1 would give 981, …, 1).
SCHEDULER = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
                 set_alpha_to_one=False, steps_offset=0, timestep_spacing="leading")


class Pix2Video(TextDrivenMethod):
    """Pix2Video on Stable Diffusion 2 depth; every number comes from the method config (public defaults there)."""

    def __init__(self, name: str, backbone: Any, prompts: Any, device: str = "cpu", sizes: Any = ((512, 512),),
                 keep_aspect: bool = False, size_multiple: int = 64, steps: int = 50, guidance_scale: float = 7.5,
                 negative_prompt: str = "", cross_frame: bool = True, anchor_only: bool = False,
                 latent_update: bool = True, latent_update_weight: float = 100.0, latent_update_until: float = 0.5,
                 dtype: str = "float32", decode_chunk: int = 8):
        super().__init__(name, device)
        from diffusers import DDIMScheduler

        settings, self.overrides = components.with_overrides(backbone, sizes=sizes, size_multiple=size_multiple, steps=steps)
        self.sizes = resize.candidates(settings["sizes"], name)
        self.keep_aspect, self.size_multiple, self.steps = bool(keep_aspect), int(settings["size_multiple"]), int(settings["steps"])
        self.guidance_scale, self.negative_prompt = float(guidance_scale), negative_prompt
        self.cross_frame, self.anchor_only = bool(cross_frame), bool(anchor_only)
        self.latent_update, self.update_weight = bool(latent_update), float(latent_update_weight)
        self.update_until, self.decode_chunk = float(latent_update_until), int(decode_chunk)
        self.prompts_cfg = checked_config(prompts)
        self.dtype = getattr(torch, dtype)
        self.m = components.load_sd2_depth(backbone, device, self.dtype)
        self.scheduler = DDIMScheduler.from_config(self.m.scheduler.config, **SCHEDULER)
        self.weights_revision = self.m.weights_revision


    # --- the steps of the algorithm ---------------------------------------------------------------------

    def depth(self, frames: torch.Tensor) -> torch.Tensor:
        """T×1×h×w depth at the latent size in [-1, 1] (`load_depth`): DPT on every frame (one batch), resized
        bilinearly to H/8×W/8, then min–max scaled per frame."""
        images = list(frames.float().add(1).mul(127.5).round().clamp(0, 255).permute(0, 2, 3, 1).to(torch.uint8).cpu().numpy())
        pixels = self.m.feature_extractor(images=images, return_tensors="pt").pixel_values.to(self.device, self.dtype)
        depth = self.m.depth_estimator(pixels).predicted_depth.unsqueeze(1).float()
        depth = F.interpolate(depth, size=(frames.shape[-2] // 8, frames.shape[-1] // 8), mode="bilinear", align_corners=False)
        lo, hi = depth.amin(dim=(1, 2, 3), keepdim=True), depth.amax(dim=(1, 2, 3), keepdim=True)
        # a flat map (no depth cue) would divide by zero in the public code; here it becomes -1 everywhere
        return (2 * (depth - lo) / (hi - lo).clamp_min(FLAT_DEPTH_RANGE) - 1).to(self.dtype)

    def invert(self, x0: torch.Tensor, depth: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
        """x_T of every frame: DDIM inversion with the source prompt, guidance 1 (one conditional call per step),
        all frames in one UNet batch; each frame's inversion is independent of the others'."""
        text = source.expand(len(x0), -1, -1)
        unet = self.m.unet
        traj = ddim.invert(lambda x, t: unet(torch.cat([x, depth], 1), t, encoder_hidden_states=text, return_dict=False)[0],
                           x0, self.scheduler.config, self.steps)
        return traj.at(max(traj.latents))

    def generate(self, x_T: torch.Tensor, depth: torch.Tensor, negative: torch.Tensor, target: torch.Tensor,
                 guidance_scale: float) -> tuple[torch.Tensor, int]:
        """Each frame's clean latent, generated frame by frame from its x_T (steps 3a–3b of the module docstring);
        also the number of UNet calls."""
        unet, scheduler = self.m.unet, self.scheduler
        scheduler.set_timesteps(self.steps, device=self.device)
        text = torch.cat([negative, target])
        last_update = self.update_until * self.steps  # the code's `i > 25: weight 0` for 50 steps
        state = injection.CrossFrameState(recording=self.cross_frame)
        restore = injection.install_cross_frame(unet, state, DECODER)
        out, anchor, x0_prev, nfe = [], None, None, 0
        try:
            for f in range(len(x_T)):
                x, d = x_T[f:f + 1], depth[f:f + 1].expand(2, -1, -1, -1)
                state.recorded, x0_hats = {}, []
                for i, t in enumerate(scheduler.timesteps):
                    state.step = i
                    eps = unet(torch.cat([x.expand(2, -1, -1, -1), d], 1), t, encoder_hidden_states=text, return_dict=False)[0]
                    nfe += 1
                    uncond, cond = eps.chunk(2)
                    step = scheduler.step(uncond + guidance_scale * (cond - uncond), t, x)  # CFG, then DDIM with eta = 0
                    x, x0_hat = step.prev_sample, step.pred_original_sample
                    if self.latent_update and x0_prev is not None and i <= last_update:
                        # x_{t-1} -= ∇_{x̂0} w·mean((x̂0_prev − x̂0)²) = 2w(x̂0 − x̂0_prev)/numel
                        x = x - 2 * self.update_weight * (x0_hat - x0_prev[i]) / x0_hat.numel()
                    x0_hats.append(x0_hat)
                    if not torch.isfinite(x).all():
                        err = NonFiniteEdit(f"Pix2Video latents became non-finite at frame {f}, step {i}")
                        err.nfe = nfe
                        raise err
                out.append(x)
                x0_prev = x0_hats
                if self.cross_frame:  # the next frame attends to [anchor ‖ this frame]; frame 1 to the anchor alone
                    anchor = state.recorded if f == ANCHOR else anchor
                    state.sources = [anchor] if self.anchor_only or f == ANCHOR else [anchor, state.recorded]
        finally:
            restore()
        return torch.cat(out), nfe

    # --- the edit -------------------------------------------------------------------------------------
    @torch.no_grad()
    def edit(self, sample: EditSample, seed: int) -> EditedVideo:
        phases = Phases(self.device)
        prompts = prompts_for(sample, self.prompts_cfg, self.device)
        vae = self.m.vae
        height, width = resize.working_size(sample.size, self.sizes, self.keep_aspect, self.size_multiple)
        frames = resize.to_working(sample.source, height, width, self.device, self.dtype)
        depth = self.depth(frames)
        phases.lap("depth")
        x0 = components.encode_latents(vae, frames, self.decode_chunk, lambda dist: dist.mean) * vae.config.scaling_factor
        phases.lap("encode")
        source, negative, target = self._text(prompts.source), self._text(self.negative_prompt), self._text(prompts.target)
        phases.lap("condition")

        x_T = self.invert(x0, depth, source)
        nfe_inv = self.steps
        phases.lap("invert")
        try:
            x, nfe = self.generate(x_T, depth, negative, target, self.guidance_scale)
        except NonFiniteEdit as err:
            err.nfe += nfe_inv
            raise
        phases.lap("generate")
        out = self.decode(x, sample.size)
        phases.lap("decode")
        return EditedVideo(out, nfe=nfe_inv + nfe, info={"phases": phases.report(),
            "nfe_inversion": nfe_inv, "nfe_sampling": nfe, **prompts.info(), "inversion_prompt": prompts.source,
            "working_size": [height, width], "keep_aspect": self.keep_aspect, "steps": self.steps,
            "guidance_scale": self.guidance_scale, "cross_frame": self.cross_frame, "anchor_only": self.anchor_only,
            "latent_update": self.latent_update, "dtype": str(self.dtype).removeprefix("torch."),
            "tiny_overrides": self.overrides,
        })
