"""`svd_no_src`: Stable Video Diffusion image-to-video from the edited frame alone (no source video).

The paper's lower bound on motion faithfulness (Tables 2–4): fresh noise, the full schedule, SVD's own
defaults (guidance ramped 1→3 over the frames, noise augmentation 0.02). It is written with the same
conditioning and Euler loop as the editor, and its latents equal `StableVideoDiffusionPipeline`'s.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from diffusers.utils.torch_utils import randn_tensor

from harness.method import EditMethod, Phases
from harness.types import EditedVideo, EditSample
from videoshop import svd
from videoshop.edm import schedule
from videoshop.inversion import sample as euler_sample
from videoshop.models import load_svd
from videoshop.speed import Speed


class SVDNoSource(EditMethod):
    """SVD image-to-video conditioned on the edited first frame."""

    def __init__(self, name: str, backbone, device: str = "cpu", height: int = 576, width: int = 1024,
                 num_frames: int = 14, steps: int = 25, min_guidance: float = 1.0, max_guidance: float = 3.0,
                 noise_aug: float = 0.02, fps: int = 7, motion_bucket_id: int = 127, speed: Any = None):
        super().__init__(name, device)
        self.svd = load_svd(backbone, device, Speed.from_config(speed, device))
        self.weights_revision = self.svd.weights_revision
        self.size, self.num_frames = (int(height), int(width)), int(num_frames)
        self.steps, self.min_guidance, self.max_guidance = int(steps), float(min_guidance), float(max_guidance)
        self.noise_aug, self.fps, self.motion_bucket_id = float(noise_aug), int(fps), int(motion_bucket_id)

    def _setup(self, image: np.ndarray, num_frames: int, seed: int):
        """(F, initial latents, σ levels) for a uint8 h×w×3 image: the pipeline's conditioning (its VAE upcast
        included) and init noise, drawn in its order."""
        c = self.svd
        g = torch.Generator().manual_seed(seed)
        cond = svd.condition(c, svd.to_pixels(image[None], self.size, c.device), svd.pipeline_clip_embeds(c, image),
                             num_frames, generator=g, noise_aug=self.noise_aug, fps=self.fps,
                             motion_bucket_id=self.motion_bucket_id, min_guidance=self.min_guidance,
                             max_guidance=self.max_guidance, upcast_vae=True)
        scheduler = c.new_scheduler()
        sigmas = schedule(scheduler, self.steps)
        h, w = image.shape[:2]
        f = 2 ** (len(c.vae.config.block_out_channels) - 1)
        shape = (1, num_frames, c.unet.config.out_channels, h // f, w // f)
        x = randn_tensor(shape, generator=g, device=c.device, dtype=cond.embeds.dtype).float()
        return svd.model(c, cond), x * float(scheduler.init_noise_sigma), sigmas

    @torch.no_grad()
    def latents(self, image: np.ndarray, num_frames: int, seed: int, trajectory: list | None = None) -> torch.Tensor:
        """The generated latents for a uint8 h×w×3 image at the working size (what the pipeline returns as 'latent').

        With `trajectory`, the state at every σ level the sampler visits is appended to it (the final one included).
        """
        F, x, sigmas = self._setup(image, num_frames, seed)
        if trajectory is not None:
            model_, F = F, lambda x_, s: (trajectory.append(x_.clone()), model_(x_, s))[1]
        out = euler_sample(F, x, sigmas)
        if trajectory is not None:
            trajectory.append(out.clone())
        return out

    @torch.no_grad()
    def edit(self, sample: EditSample, seed: int) -> EditedVideo:
        svd.check_num_frames(self.name, sample, self.num_frames)
        c = self.svd
        c.counter.calls = 0
        phases = Phases(c.device)
        image = svd.resize_frames(sample.edited_frame[None], self.size)[0]
        F, x, sigmas = self._setup(image, sample.num_frames, seed)
        phases.lap("condition")
        x = euler_sample(F, x, sigmas)
        phases.lap("generate")
        frames = svd.decode(c, x, sample.size)
        phases.lap("decode")
        return EditedVideo(frames, nfe=c.nfe, info={"phases": phases.report(), "tiny_models": c.tiny})
