"""AnyV2V (Ku et al., 2024): propagate an edited first frame with an image-to-video model, I2VGen-XL.

1. DDIM-invert the source video with I2VGen-XL conditioned on the source frame 0 and an empty prompt,
   without guidance, keeping every step's latent (`baselines.ddim`).
2. Sample from the inverted latent conditioned on the edited frame 0 and the target prompt (CFG),
   while a source branch (the kept inverted latent, source conditioning) runs in the same UNet batch and
   injects its decoder conv feature (first 20% of steps), spatial self-attention Q/K (first 20%) and
   temporal-attention Q/K (first 50%) into the edit (`baselines.injection`).

Every prompt (empty, negative, target) is encoded as `I2VGenXLPipeline.__call__` encodes it: the penultimate
CLIP text layer through the final layer norm (`clip_skip=1`), as AnyV2V runs it.

Frames are resized whole to the working size and back (`baselines.resize`): 512×512 as published, or, with
`keep_aspect`, the same pixel area at the clip's aspect. Cost: `nfe` counts
UNet forward calls: one per inversion step plus one per sampling step (the source branch and the CFG
pair share one batched call).
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

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
CLIP_SKIP = 1  # text embeddings from the penultimate CLIP layer: I2VGenXLPipeline.__call__'s default, as AnyV2V runs it


class AnyV2V(TextDrivenMethod):
    """AnyV2V with I2VGen-XL; every number below comes from the method config (published defaults there)."""

    clip_skip = CLIP_SKIP  # prompts encoded as `I2VGenXLPipeline.__call__` encodes every prompt (positive and negative)

    def __init__(self, name: str, backbone: Any, prompts: Any, device: str = "cpu", sizes: Any = ((512, 512),),
                 keep_aspect: bool = False, size_multiple: int = 64, inversion_steps: int = 500, steps: int = 50, first_step: int = 0, guidance_scale: float = 9.0,
                 fps: int = 8, negative_prompt: str = "", seed: int | None = 8888, decode_chunk: int = 8,
                 injection_until: Any = None, injection_layers: Any = None):
        super().__init__(name, device)
        from diffusers import AutoencoderKL, DDIMScheduler, I2VGenXLUNet
        from transformers import CLIPImageProcessor, CLIPTextModel, CLIPTokenizer, CLIPVisionModelWithProjection

        settings, self.overrides = components.with_overrides(backbone, sizes=sizes, size_multiple=size_multiple,
                                                             inversion_steps=inversion_steps, steps=steps, first_step=first_step)
        self.sizes = resize.candidates(settings["sizes"], name)
        self.keep_aspect, self.size_multiple = bool(keep_aspect), int(settings["size_multiple"])
        self.inversion_steps, self.steps, self.first_step = int(settings["inversion_steps"]), int(settings["steps"]), int(settings["first_step"])
        self.guidance_scale, self.fps, self.negative_prompt = float(guidance_scale), int(fps), negative_prompt
        self.seed, self.decode_chunk = seed, int(decode_chunk)
        self.until = dict(injection_until or {"conv": 0.2, "spatial": 0.2, "temporal": 0.5})
        self.layers = {k: [str(m) for m in v] for k, v in (injection_layers or {}).items()}
        self.prompts_cfg = checked_config(prompts)
        self.m = components.load(backbone, {
            "unet": I2VGenXLUNet, "vae": AutoencoderKL, "text_encoder": CLIPTextModel, "tokenizer": CLIPTokenizer,
            "image_encoder": CLIPVisionModelWithProjection, "feature_extractor": CLIPImageProcessor, "scheduler": DDIMScheduler,
        }, device)
        self.weights_revision = self.m.weights_revision
        self.dtype = components.dtype_for(device)

    # --- conditioning, as I2VGenXLPipeline computes it -------------------------------------------------

    def _image_embedding(self, image: torch.Tensor) -> torch.Tensor:
        """CLIP image embedding of a [-1, 1] 1×3×H×W image: center square, resized to the encoder's input."""
        h, w = image.shape[-2:]
        s = min(h, w)
        square = image[..., (h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
        crop = self.m.feature_extractor.crop_size
        x = F.interpolate(square.float(), size=(crop["height"], crop["width"]), mode="bilinear", antialias=True, align_corners=False)
        x = (x + 1) / 2
        mean, std = torch.tensor(CLIP_MEAN, device=x.device)[:, None, None], torch.tensor(CLIP_STD, device=x.device)[:, None, None]
        x = ((x - mean) / std).to(self.dtype)
        return self.m.image_encoder(x).image_embeds.unsqueeze(1)

    def _encode(self, frames: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """VAE latents of T×3×H×W frames as 1×4×T×h×w, scaled."""
        lat = components.encode_latents(self.m.vae, frames, self.decode_chunk, lambda dist: dist.sample(generator))
        return (lat * self.m.vae.config.scaling_factor).permute(1, 0, 2, 3).unsqueeze(0).contiguous()

    def _image_latents(self, image: torch.Tensor, num_frames: int, generator: torch.Generator) -> torch.Tensor:
        """The first-frame latent followed by I2VGen-XL's frame-position planes (k / (T-1) for frame k)."""
        lat = self._encode(image, generator)
        pos = [torch.full_like(lat, (k + 1) / (num_frames - 1)) for k in range(num_frames - 1)]
        return torch.cat([lat, *pos], dim=2)

    # --- the edit -------------------------------------------------------------------------------------

    @torch.no_grad()
    def edit(self, sample: EditSample, seed: int) -> EditedVideo:
        phases = Phases(self.device)
        seed = seed if self.seed is None else int(self.seed)
        generator = torch.Generator(self.device).manual_seed(seed)
        prompts = prompts_for(sample, self.prompts_cfg, self.device)
        T = sample.num_frames
        height, width = resize.working_size(sample.size, self.sizes, self.keep_aspect, self.size_multiple)
        src = resize.to_working(sample.source, height, width, self.device, self.dtype)
        edited0 = resize.to_working(sample.edited_frame, height, width, self.device, self.dtype)
        unet, scheduler = self.m.unet, self.m.scheduler

        empty, negative, target = self._text(""), self._text(self.negative_prompt), self._text(prompts.target)
        src_emb, edit_emb = self._image_embedding(src[:1]), self._image_embedding(edited0)
        src_img = self._image_latents(src[:1], T, generator)
        edit_img = self._image_latents(edited0, T, generator)
        fps = torch.tensor([self.fps], device=self.device)
        phases.lap("condition")
        x0 = self._encode(src, generator)
        phases.lap("encode")

        # 1. DDIM inversion of the source, conditioned on its own frame 0 and an empty prompt, no guidance
        def model_output(x, t):
            return unet(x, t, fps=fps, image_latents=src_img, image_embeddings=src_emb,
                        encoder_hidden_states=empty, return_dict=False)[0]

        traj = ddim.invert(model_output, x0, scheduler.config, self.inversion_steps)
        nfe_inv = self.inversion_steps
        phases.lap("invert")

        # 2. sampling from the inverted latent with source-branch injection
        state = injection.InjectionState()
        restore = injection.install(unet, state, {k: v for k, v in self.layers.items() if k != "conv"},
                                    {"conv": self.layers.get("conv", [])})
        cond_src = (empty, src_img, src_emb)
        cond_uncond = (negative, edit_img, torch.zeros_like(edit_emb))
        cond_edit = (target, edit_img, edit_emb)
        scheduler.set_timesteps(self.steps, device=self.device)
        timesteps = scheduler.timesteps[self.first_step:]
        x = traj.at(timesteps[0])
        nfe = 0
        try:
            for i, t in enumerate(timesteps, start=self.first_step):
                state.active = {k for k, frac in self.until.items() if i < frac * self.steps and self.layers.get(k)}
                conds = [cond_uncond, cond_edit]
                batch = [x, x]
                if state.active:
                    conds, batch = [cond_src, *conds], [traj.at(t), *batch]
                state.n_branches = len(batch)
                text, img, emb = (torch.cat(c) for c in zip(*conds))
                out = unet(torch.cat(batch), t, fps=fps.repeat(len(batch)), image_latents=img, image_embeddings=emb,
                           encoder_hidden_states=text, return_dict=False)[0]
                nfe += 1
                uncond, cond = out[-2:-1], out[-1:]
                guided = uncond + self.guidance_scale * (cond - uncond)  # classifier-free guidance
                x = scheduler.step(guided, t, x).prev_sample  # DDIM, eta = 0
                if not torch.isfinite(x).all():
                    err = NonFiniteEdit(f"AnyV2V latents became non-finite at step {i}")
                    err.nfe = nfe_inv + nfe
                    raise err
        finally:
            restore()
        phases.lap("generate")
        frames = self.decode(x[0].permute(1, 0, 2, 3), sample.size)
        phases.lap("decode")
        return EditedVideo(frames, nfe=nfe_inv + nfe, info={"phases": phases.report(),
            "nfe_inversion": nfe_inv, "nfe_sampling": nfe, **prompts.info(),
            "working_size": [height, width], "keep_aspect": self.keep_aspect, "seed": seed,
            "inversion_steps": self.inversion_steps, "steps": self.steps, "first_step": self.first_step,
            "guidance_scale": self.guidance_scale, "tiny_overrides": self.overrides,
        })

