"""The Videoshop editor: invert the source video with noise extrapolation, regenerate it from the edited frame.

Reads top to bottom like the paper's algorithm (Fan, Bhattad, Krishna, ECCV 2024, Sec. 3):
1. encode the source video and normalize its latents (Eq. 8, left);
2. invert them from σ = 0 up to the start level, conditioned on the source frame (Eqs. 6–7);
3. sample back down with plain Euler, conditioned on the edited frame, with CFG;
4. rescale the result to the edited frame's latent statistics (Eq. 8, right) and decode.
Every place where the paper and the public release differ is a constructor option; the defaults (and
`conf/method/videoshop.yaml`) are the release's. `inversion="bdia"` is the `bdia` baseline on the same editor.
`long_video="blocks"` edits a clip of any length in consecutive blocks of the backbone's length that overlap by
one frame, each block conditioned on the previous block's last output frame (paper Sec. 4.2, `block_starts`).
"""
from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import torch

from harness.cache import cache_key, work
from harness.method import EditMethod, NonFiniteEdit, Phases
from harness.types import EditedVideo, EditSample
from videoshop import svd
from videoshop.edm import schedule
from videoshop.inversion import bdia_invert, bdia_sample, invert, sample as euler_sample
from videoshop.latents import normalize, rescale
from videoshop.models import load_svd
from videoshop.speed import Speed


class Videoshop(EditMethod):
    """Videoshop and its ablations (`norm`, `rescale`, `inversion`, `threshold`, `noise`) on one SVD backbone."""

    def __init__(self, name: str, backbone, device: str = "cpu", height: int = 576, width: int = 1024,
                 num_frames: int = 14, steps: int = 25, strength: float = 0.55, guidance: float = 4.0,
                 noise_aug: float = 0.2, fps: int = 7, motion_bucket_id: int = 127, norm: str = "frame",
                 rescale: bool = True, inversion: str = "extrapolate", threshold: float | None = 1.0,
                 noise: str = "fixed", standardize_source_latents: bool = True, bdia_gamma: float = 0.94,
                 long_video: str | None = None, speed: Any = None):
        super().__init__(name, device)
        if inversion not in ("extrapolate", "naive", "bdia"):
            raise ValueError(f"{name}: inversion must be extrapolate, naive or bdia, got {inversion!r}")
        if long_video not in (None, "blocks"):
            raise ValueError(f"{name}: long_video must be null (clips of the backbone's length) or blocks, got {long_video!r}")
        self.svd = load_svd(backbone, device, Speed.from_config(speed, device))
        self.weights_revision = self.svd.weights_revision
        self.size, self.num_frames = (int(height), int(width)), int(num_frames)
        self.steps, self.strength, self.guidance = int(steps), float(strength), float(guidance)
        self.noise_aug, self.fps, self.motion_bucket_id = float(noise_aug), int(fps), int(motion_bucket_id)
        self.norm, self.rescale, self.inversion = norm, bool(rescale), inversion
        self.threshold = None if threshold is None else float(threshold)
        self.noise, self.standardize_source_latents, self.bdia_gamma = noise, bool(standardize_source_latents), float(bdia_gamma)
        self.long_video = long_video

    def sigmas(self) -> list[float]:
        """The σ levels of one edit: the last int(steps·strength) levels of the backbone scheduler's schedule."""
        return schedule(self.svd.new_scheduler(), self.steps, self.strength)

    def generation_key(self, source: np.ndarray, edited_frame: np.ndarray, seed: int) -> str:
        """Everything steps 1–3 of a block depend on (the backbone, the inputs, the seed, every setting but
        `rescale`): methods with equal keys generate the same latents, so one process computes them once."""
        digest = hashlib.sha256(np.ascontiguousarray(source).tobytes() + np.ascontiguousarray(edited_frame).tobytes())
        settings = {k: v for k, v in vars(self).items() if k not in ("name", "svd", "weights_revision", "rescale",
                                                                        "long_video", "device")}
        return cache_key("videoshop-generation", id(self.svd), str(self.device), digest.hexdigest(), source.shape,
                         seed, settings)

    def _check(self, x: torch.Tensor, stage: str) -> None:
        """Raise `NonFiniteEdit` (carrying the UNet calls so far) when `x` holds NaN or inf, so the row is NaN."""
        if not torch.isfinite(x).all():
            err = NonFiniteEdit(f"{self.name}: non-finite latents after {stage}")
            err.nfe = self.svd.nfe
            raise err

    @torch.no_grad()
    def edit(self, sample: EditSample, seed: int) -> EditedVideo:
        if self.long_video is None:
            svd.check_num_frames(self.name, sample, self.num_frames, ", or edit it in blocks (method.long_video=blocks)")
        elif sample.num_frames < 2:
            raise ValueError(f"{self.name}: sample {sample.id} has {sample.num_frames} frame(s); block editing needs at least 2")
        c = self.svd
        c.counter.calls = 0
        phases = Phases(c.device)
        starts = block_starts(sample.num_frames, self.num_frames) if self.long_video else [0]
        L, out, sigma_start, reused = self.num_frames, [], None, 0
        for k, s in enumerate(starts):
            # Block k: its own source frames, conditioned on the edit (block 0) or on block k−1's last output
            # frame, which is also this block's first frame (one frame of overlap: the seam frame is shared).
            end = min(s + L, sample.num_frames) if self.long_video else sample.num_frames
            frame = sample.edited_frame if k == 0 else out[-1][-1]
            frames, sigma_start, shared = self.edit_block(sample, sample.source[s:end], frame, seed + k, phases)
            out.append(frames if k == 0 else frames[1:])
            reused += shared
        info = {"phases": phases.report(), "sigma_start": sigma_start, "tiny_models": c.tiny}
        if reused:  # steps 1–3 came from an identical computation of another method in this process (share_work_mb)
            info["reused_generation_blocks"] = reused
        if self.long_video:
            info["block_starts"] = starts
        return EditedVideo(np.concatenate(out), nfe=c.nfe, info=info)

    def edit_block(self, sample: EditSample, source: np.ndarray, edited_frame: np.ndarray, seed: int,
                   phases: Phases) -> tuple[np.ndarray, float, bool]:
        """Edit one clip of the backbone's length: uint8 source frames and the (edited) frame to propagate →
        uint8 output frames at the source's size, σ_start, and whether steps 1–3 were reused from another method
        of this process (`harness.cache.work`: the same key, e.g. `videoshop` for `videoshop_no_rescale`)."""
        c, sigmas = self.svd, self.sigmas()
        edited = svd.to_pixels(edited_frame[None], self.size, c.device)
        key = self.generation_key(source, edited_frame, seed)
        x = work.get(key)
        reused = x is not None
        if reused:
            x = x.to(c.device)
            phases.lap("reused")
        else:
            x = self.generate(source, edited, edited_frame, sigmas, seed, phases)
            work.put(key, x.cpu(), x.numel() * x.element_size())

        # 4. Rescale to the clean edited frame's latent statistics, per channel (Eq. 8), and decode.
        if self.rescale:
            x = rescale(x, svd.encode(c, edited)[:, 0] * c.vae.config.scaling_factor)
        frames = svd.decode(c, x, sample.size)
        phases.lap("decode")
        return frames, sigmas[0], reused

    def generate(self, source: np.ndarray, edited: torch.Tensor, edited_frame: np.ndarray, sigmas: list[float],
                 seed: int, phases: Phases) -> torch.Tensor:
        """Steps 1–3 of one block: the generated latents before rescaling. One CPU generator per block, seeded with
        `seed`, so a seed means the same noise on every device."""
        c = self.svd
        g = torch.Generator().manual_seed(seed)
        T, sf = len(source), c.vae.config.scaling_factor
        common = dict(generator=g, noise_aug=self.noise_aug, fps=self.fps, motion_bucket_id=self.motion_bucket_id)

        # 1. Encode & normalize: x_in = VAE(V)·0.18215, then x̂₀ = normalize(x_in) (Eq. 8; per frame in the release).
        #    Pixels as the release prepares them: resized in float, never rounded to 8 bits (`svd.to_pixels`).
        video = svd.to_pixels(source, self.size, c.device)
        x0 = normalize(svd.encode(c, video) * sf, self.norm)
        phases.lap("encode")

        # 2. Inversion from σ = 0 to σ_start conditioned on the source frame, no guidance (Eqs. 5–7, or BDIA).
        #    CLIP sees the original frame resized straight to 224×224, as in the release.
        src = svd.condition(c, video[:1], svd.clip_embeds(c, source[0]), T,
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
        tgt = svd.condition(c, edited, svd.clip_embeds(c, edited_frame), T, min_guidance=self.guidance,
                            max_guidance=self.guidance, **common)
        F_tgt = svd.model(c, tgt)
        phases.lap("condition")
        x = bdia_sample(F_tgt, start, sigmas, self.bdia_gamma) if self.inversion == "bdia" else euler_sample(F_tgt, start, sigmas)
        phases.lap("generate")
        self._check(x, "generation")
        return x


def block_starts(num_frames: int, block: int) -> list[int]:
    """First frames of the blocks that cover `num_frames` frames with blocks of `block` frames overlapping by one:
    0, L−1, 2(L−1), … while a block still adds a frame; the last block ends at the clip's end (it may be shorter)."""
    if block < 2:
        raise ValueError(f"block editing needs blocks of at least 2 frames, got {block}")
    return list(range(0, max(num_frames - 1, 1), block - 1))
