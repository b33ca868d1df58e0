"""The Videoshop editor: invert the source video with noise extrapolation, regenerate it from the edited frame.

Reads top to bottom like the paper's algorithm (Fan, Bhattad, Krishna, ECCV 2024, Sec. 3):
1. encode the source video and normalize its latents (Eq. 8, left);
2. invert them from σ = 0 up to the start level, conditioned on the source frame (Eqs. 6–7);
3. sample back down with plain Euler, conditioned on the edited frame, with CFG;
4. rescale the result to the edited frame's latent statistics (Eq. 8, right) and decode.
Every place where the paper and the public release differ is a constructor option; the defaults (and
`conf/method/videoshop.yaml`) are the release's. `inversion="bdia"` is the `bdia` baseline on the same editor.
"""
from __future__ import annotations

import torch

from harness.method import EditMethod, NonFiniteEdit, Phases
from harness.types import EditedVideo, EditSample
from videoshop import svd
from videoshop.edm import schedule
from videoshop.inversion import bdia_invert, bdia_sample, invert, sample as euler_sample
from videoshop.latents import normalize, rescale
from videoshop.models import load_svd


class Videoshop(EditMethod):
    """Videoshop and its ablations (`norm`, `rescale`, `inversion`, `threshold`, `noise`) on one SVD backbone."""

    def __init__(self, name: str, backbone, device: str = "cpu", height: int = 576, width: int = 1024,
                 num_frames: int = 14, steps: int = 25, strength: float = 0.55, guidance: float = 4.0,
                 noise_aug: float = 0.2, fps: int = 7, motion_bucket_id: int = 127, norm: str = "frame",
                 rescale: bool = True, inversion: str = "extrapolate", threshold: float | None = 1.0,
                 noise: str = "fixed", standardize_source_latents: bool = True, bdia_gamma: float = 0.94):
        super().__init__(name, device)
        if inversion not in ("extrapolate", "naive", "bdia"):
            raise ValueError(f"{name}: inversion must be extrapolate, naive or bdia, got {inversion!r}")
        self.svd = load_svd(backbone, device)
        self.weights_revision = self.svd.weights_revision
        self.size, self.num_frames = (int(height), int(width)), int(num_frames)
        self.steps, self.strength, self.guidance = int(steps), float(strength), float(guidance)
        self.noise_aug, self.fps, self.motion_bucket_id = float(noise_aug), int(fps), int(motion_bucket_id)
        self.norm, self.rescale, self.inversion = norm, bool(rescale), inversion
        self.threshold = None if threshold is None else float(threshold)
        self.noise, self.standardize_source_latents, self.bdia_gamma = noise, bool(standardize_source_latents), float(bdia_gamma)

    def _check(self, x: torch.Tensor, stage: str) -> None:
        """Raise `NonFiniteEdit` (carrying the UNet calls so far) when `x` holds NaN or inf, so the row is NaN."""
        if not torch.isfinite(x).all():
            err = NonFiniteEdit(f"{self.name}: non-finite latents after {stage}")
            err.nfe = self.svd.nfe
            raise err

    @torch.no_grad()
    def edit(self, sample: EditSample, seed: int) -> EditedVideo:
        svd.check_num_frames(self.name, sample, self.num_frames)
        c = self.svd
        c.counter.calls = 0
        phases = Phases(c.device)
        g = torch.Generator().manual_seed(seed)  # on the CPU, so a seed means the same noise on every device
        T, sf = sample.num_frames, c.vae.config.scaling_factor
        sigmas = schedule(c.new_scheduler(), self.steps, self.strength)
        common = dict(generator=g, noise_aug=self.noise_aug, fps=self.fps, motion_bucket_id=self.motion_bucket_id)

        # 1. Encode & normalize: x_in = VAE(V)·0.18215, then x̂₀ = normalize(x_in) (Eq. 8; per frame in the release).
        #    Pixels as the release prepares them: resized in float, never rounded to 8 bits (`svd.to_pixels`).
        video = svd.to_pixels(sample.source, self.size, c.device)
        edited = svd.to_pixels(sample.edited_frame[None], self.size, c.device)
        x0 = normalize(svd.encode(c, video) * sf, self.norm)
        phases.lap("encode")

        # 2. Inversion from σ = 0 to σ_start conditioned on the source frame, no guidance (Eqs. 5–7, or BDIA).
        #    CLIP sees the original frame resized straight to 224×224, as in the release.
        src = svd.condition(c, video[:1], svd.clip_embeds(c, sample.source[0]), T,
                            standardize_latents=self.standardize_source_latents, **common)
        F_src = svd.model(c, src)
        phases.lap("condition")
        if self.inversion == "bdia":
            start = bdia_invert(F_src, x0, sigmas, self.bdia_gamma)
            phases.lap("invert")
            self._check(start[0], "BDIA inversion")
        else:
            start = invert(F_src, x0, sigmas, mode=self.inversion, threshold=self.threshold, noise=self.noise, generator=g)
            phases.lap("invert")
            self._check(start, "inversion")

        # 3. Generation: Euler from the inverted latent, conditioned on the edited frame, CFG with zero negatives.
        tgt = svd.condition(c, edited, svd.clip_embeds(c, sample.edited_frame), T, min_guidance=self.guidance,
                            max_guidance=self.guidance, **common)
        F_tgt = svd.model(c, tgt)
        phases.lap("condition")
        x = bdia_sample(F_tgt, start, sigmas, self.bdia_gamma) if self.inversion == "bdia" else euler_sample(F_tgt, start, sigmas)
        phases.lap("generate")
        self._check(x, "generation")

        # 4. Rescale to the clean edited frame's latent statistics, per channel (Eq. 8), and decode.
        if self.rescale:
            x = rescale(x, svd.encode(c, edited)[:, 0] * sf)
        frames = svd.decode(c, x, sample.size)
        phases.lap("decode")
        return EditedVideo(frames, nfe=c.nfe, info={
            "phases": phases.report(), "sigma_start": sigmas[0], "tiny_models": c.tiny})
