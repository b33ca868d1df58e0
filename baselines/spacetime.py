"""Spacetime: Space-Time Diffusion Features for Zero-Shot Text-Driven Motion Transfer (Yatim et al., CVPR 2024).

As the public code (`diffusion-motion-transfer/diffusion-motion-transfer`: `preprocess_video_ddim.py`, `run.py`,
`utilities/guidance_utils.py`, `utilities/initialize_latent.py`) runs it on ZeroScope v2 576w (`UNet3DConditionModel`):

1. DDIM inversion of the source clip's VAE latents with the source prompt (one conditional call per step, all frames
   in one batch), 999 steps, keeping every latent (`baselines.ddim`).
2. Initial latent: the clean latent re-noised to the first sampling timestep with the inversion's implied noise
   (`prepare_latents`), then its low frequencies (bilinear down ×4 and up) plus the high frequencies of fresh seeded
   noise (`high_freqs_replacement_downsampling`).
3. For each of the first 40% of the 50 sampling steps (the guided steps), the latent itself is optimized: 10 Adam
   steps (learning rate linear from 0.007 to 0.004 over the guided steps) on the space-time feature loss between the
   decoder features of the optimized latent (target prompt) and of the inverted source latent at the same timestep
   (source prompt). The UNet runs only up to the end of `up_blocks[1]` (a forward hook stops it), and the features
   are `up_blocks[1].resnets[1]`'s conv2 output (the residual branch before the skip), `temp_convs[1]`'s output and
   `upsamplers[0]`'s output. The loss (`smm_diff_loss`) averages each feature over space (SMM features), takes for
   every anchor frame the differences of all frames to it, and is 1 − cosine(target diffs, source diffs).
4. Every step is a DDIM step (η = 0) with classifier-free guidance 10 (target prompt against a quality negative
   prompt); with restart sampling the result is re-noised back to the step's timestep with DDPM transitions
   (`undo_step`) and denoised again, except at the last step.

The video runs at 576×320 (the code's `resolution`) with all its frames and is resized back (`baselines.resize`). All
randomness (VAE posterior samples, the high-frequency noise, the restart noise) comes from the edit's seeded
generator. docs/spacetime.md says what is faithful and what is adapted.
"""
from __future__ import annotations

import contextlib
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from baselines import components, ddim, resize
from baselines.prompts import checked_config, prompts_for
from baselines.text_method import TextDrivenMethod
from harness.method import NonFiniteEdit, Phases
from harness.types import EditedVideo, EditSample

CUT = "up_blocks.1"  # the code's `up_res_dict: {1: [1]}`: later up blocks and the output convs are skipped
FEATURES = ("up_blocks.1.resnets.1.conv2", "up_blocks.1.temp_convs.1", "up_blocks.1.upsamplers.0")


class _StopForward(Exception):
    """Raised by the hook at the cut to end a truncated UNet forward."""


def smm_diff_loss(source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The code's `features_diff_loss` of two T×C×H×W features: SMM features s, g (mean over H, W; T×C), then for every
    anchor frame i the differences d_ij = f_j − f_i, and the loss mean_i (1 − mean_j cos(g_ij, s_ij)). Pairs j = i
    are zero vectors whose cosine is 0 (`F.cosine_similarity`), as in the code: identical features give 1/T."""
    s, g = source.float().mean(dim=(2, 3)), target.float().mean(dim=(2, 3))
    ds, dg = s[None] - s[:, None], g[None] - g[:, None]  # [i, j] = f_j − f_i
    return (1 - F.cosine_similarity(dg, ds.detach(), dim=-1).mean(dim=1)).mean()


class TruncatedFeatures:
    """The UNet truncated after `cut`, returning the outputs of the `features` modules (forward hooks; no module is
    replaced). While entered, the UNet's parameters are frozen (requires_grad False) and on exit the hooks are removed
    and the flags restored."""

    def __init__(self, unet: torch.nn.Module, features: tuple[str, ...] = FEATURES, cut: str = CUT):
        self.unet, self.names, self.cut = unet, features, cut
        self.captured: dict[str, torch.Tensor] = {}
        self.handles: list[Any] = []
        self.flags: list[tuple[torch.nn.Parameter, bool]] = []

    def __enter__(self) -> TruncatedFeatures:
        self.flags = [(p, p.requires_grad) for p in self.unet.parameters()]
        self.unet.requires_grad_(False)
        for name in self.names:
            self.handles.append(self.unet.get_submodule(name).register_forward_hook(self._capture(name)))
        self.handles.append(self.unet.get_submodule(self.cut).register_forward_hook(self._stop))
        return self

    def __exit__(self, *exc) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []
        for p, flag in self.flags:
            p.requires_grad_(flag)

    def _capture(self, name: str):
        def hook(module, inputs, output):
            self.captured[name] = output

        return hook

    @staticmethod
    def _stop(module, inputs, output):
        raise _StopForward

    def __call__(self, x: torch.Tensor, t: torch.Tensor, text: torch.Tensor) -> dict[str, torch.Tensor]:
        """Features (frames × C × h × w each) of one latent (1×C×T×H×W) at timestep t with text embeddings `text`."""
        self.captured = {}
        try:
            self.unet(x, t, encoder_hidden_states=text, return_dict=False)
        except _StopForward:
            pass
        else:
            raise RuntimeError(f"the UNet's forward never reached {self.cut}")
        return {k: self.captured[k] for k in self.names}


def low_freq_init(latent: torch.Tensor, noise: torch.Tensor, factor: int) -> torch.Tensor:
    """`latent`'s low frequencies plus `noise`'s high ones (1×C×T×H×W each): low(x) = up(down(x)), bilinear
    (align_corners, antialias) to H/factor × W/factor and back, as `high_freqs_replacement_downsampling`."""

    def low(x: torch.Tensor) -> torch.Tensor:
        frames = x[0].transpose(0, 1)  # T×C×H×W
        h, w = frames.shape[-2:]
        down = F.interpolate(frames, size=(h // factor, w // factor), mode="bilinear", align_corners=True, antialias=True)
        up = F.interpolate(down, size=(h, w), mode="bilinear", align_corners=True, antialias=True)
        return up.transpose(0, 1)[None]

    return low(latent) + noise - low(noise)


class Spacetime(TextDrivenMethod):
    """Spacetime on ZeroScope v2 576w; every number comes from the method config (public defaults there)."""

    def __init__(self, name: str, backbone: Any, prompts: Any, device: str = "cpu", sizes: Any = ((320, 576),),
                 inversion_steps: int = 999, steps: int = 50, guidance_scale: float = 10.0,
                 negative_prompt: str = "", prompt_prefix: str = "", max_guidance_timestep: float = 1.0,
                 min_guidance_timestep: float = 0.6, optimization_steps: int = 10, lr_decay: bool = True,
                 lr: float = 0.01, lr_range: Any = (0.007, 0.004), restart_sampling: bool = True,
                 high_freq_init: bool = True, downsample_factor: int = 4, grad_scaler: bool = True,
                 decode_chunk: int = 8):
        super().__init__(name, device)
        from diffusers import DDIMScheduler

        settings, self.overrides = components.with_overrides(backbone, sizes=sizes, inversion_steps=inversion_steps,
                                                             steps=steps, optimization_steps=optimization_steps)
        self.sizes = resize.candidates(settings["sizes"], name)
        self.inversion_steps, self.steps = int(settings["inversion_steps"]), int(settings["steps"])
        self.optimization_steps = int(settings["optimization_steps"])
        if self.steps < 1 or self.inversion_steps < 1 or self.optimization_steps < 0:
            raise ValueError(f"{name}: steps and inversion_steps must be positive, optimization_steps non-negative")
        self.guidance_scale, self.negative_prompt, self.prefix = float(guidance_scale), negative_prompt, prompt_prefix
        self.max_guidance, self.min_guidance = float(max_guidance_timestep), float(min_guidance_timestep)
        self.lr_decay, self.lr, self.lr_range = bool(lr_decay), float(lr), tuple(float(v) for v in lr_range)
        self.restart, self.high_freq_init = bool(restart_sampling), bool(high_freq_init)
        self.downsample_factor, self.grad_scaler = int(downsample_factor), bool(grad_scaler)
        self.decode_chunk = int(decode_chunk)
        self.prompts_cfg = checked_config(prompts)
        self.m = components.load_zeroscope(backbone, device)
        self.scheduler = DDIMScheduler.from_config(self.m.scheduler.config)  # the code: DDIM from the hub config
        self.weights_revision = self.m.weights_revision
        self.half = components.dtype_for(device) == torch.float16  # fp16 weights under fp16 autocast, fp32 latents

    def _autocast(self):
        return torch.autocast("cuda", dtype=torch.float16) if self.half else contextlib.nullcontext()

    def _eps(self, x: torch.Tensor, t: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        with self._autocast():
            return self.m.unet(x, t, encoder_hidden_states=text, return_dict=False)[0].float()

    # --- the steps of the algorithm ---------------------------------------------------------------------
    def schedule(self) -> tuple[torch.Tensor, int]:
        """Sampling timesteps and the number of guided (optimized) steps at their start (`get_timesteps`)."""
        self.scheduler.set_timesteps(self.steps, device=self.device)
        start = max(self.steps - min(int(self.steps * self.max_guidance), self.steps), 0)
        end = int(self.steps * self.min_guidance)
        timesteps = self.scheduler.timesteps[start:]
        return timesteps, max(len(timesteps) - end, 0) if end > 0 else len(timesteps)

    def learning_rates(self, guided: int) -> np.ndarray:
        """Adam's learning rate at each guided step: linear over `lr_range`, or the constant `lr`."""
        return np.linspace(*self.lr_range, guided) if self.lr_decay else np.full(guided, self.lr)

    def initial_latent(self, x0: torch.Tensor, traj: ddim.Trajectory, t0: torch.Tensor,
                       generator: torch.Generator) -> torch.Tensor:
        """Step 2: x0 noised to t0 with the noise implied by the most-inverted latent x_T (`prepare_latents`), then
        low frequencies kept and high ones from fresh noise."""
        T = max(traj.latents)
        a_T, a_0 = self.scheduler.alphas_cumprod[T], self.scheduler.alphas_cumprod[int(t0)]
        eps = (traj.at(T) - a_T ** 0.5 * x0) / (1 - a_T) ** 0.5
        x = a_0 ** 0.5 * x0 + (1 - a_0) ** 0.5 * eps
        if not self.high_freq_init:
            return x
        noise = torch.randn(x.shape, generator=generator).to(x.device)
        return low_freq_init(x, noise, self.downsample_factor)

    def optimize(self, x: torch.Tensor, t: torch.Tensor, source_latent: torch.Tensor, source: torch.Tensor,
                 target: torch.Tensor, lr: float, features: TruncatedFeatures) -> tuple[torch.Tensor, list[float]]:
        """Step 3 at one guided step: `optimization_steps` Adam steps on x against the feature loss; the loss before
        each step is returned too. A fresh GradScaler per guided step on CUDA, as the code (overflowing steps are
        skipped and the scale lowered)."""
        with self._autocast():
            src = features(source_latent, t, source)
        x = x.detach().clone().requires_grad_(True)
        optimizer = torch.optim.Adam([x], lr=lr)
        scaler = torch.amp.GradScaler("cuda", enabled=self.half and self.grad_scaler)
        losses = []
        for _ in range(self.optimization_steps):
            optimizer.zero_grad()
            with torch.enable_grad():
                with self._autocast():
                    tgt = features(x, t, target)
                loss = sum(smm_diff_loss(src[k], tgt[k]) for k in features.names)
                scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            losses.append(float(loss))
        return x.detach(), losses

    def denoise(self, x: torch.Tensor, t: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """One DDIM step (η = 0) with CFG, target and negative prompt in one batch (`denoise_step`)."""
        cond, neg = self._eps(torch.cat([x, x]), t, text).chunk(2)
        return self.scheduler.step(neg + self.guidance_scale * (cond - neg), t, x).prev_sample

    def renoise(self, x: torch.Tensor, t_next: int, generator: torch.Generator) -> torch.Tensor:
        """Restart: DDPM transitions from t_next back up to the current step's timestep (`undo_step`)."""
        n = self.scheduler.config.num_train_timesteps // self.scheduler.num_inference_steps
        for k in range(n):
            beta = self.scheduler.betas[t_next + k]
            x = (1 - beta) ** 0.5 * x + beta ** 0.5 * torch.randn(x.shape, generator=generator).to(x.device)
        return x

    def generate(self, x: torch.Tensor, traj: ddim.Trajectory, timesteps: torch.Tensor, guided: int,
                 source: torch.Tensor, target: torch.Tensor, negative: torch.Tensor,
                 generator: torch.Generator) -> tuple[torch.Tensor, dict[str, Any]]:
        """Steps 3–4 from the initial latent; also the counts of UNet calls and passes, and the feature losses."""
        rates = self.learning_rates(guided)
        text = torch.cat([target, negative])
        stats: dict[str, Any] = {"nfe_sampling": 0, "nfe_source_features": 0, "optimization_passes": 0, "losses": []}
        for i, t in enumerate(timesteps):
            if i < guided and self.optimization_steps > 0:
                with TruncatedFeatures(self.m.unet) as features:
                    x, losses = self.optimize(x, t, traj.at(t), source, target, float(rates[i]), features)
                stats["nfe_source_features"] += 1
                stats["optimization_passes"] += len(losses)
                stats["losses"].append(losses)
            x = self.denoise(x, t, text)
            stats["nfe_sampling"] += 1
            if self.restart and i < len(timesteps) - 1:
                x = self.denoise(self.renoise(x, int(timesteps[i + 1]), generator), t, text)
                stats["nfe_sampling"] += 1
            if not torch.isfinite(x).all():
                err = NonFiniteEdit(f"Spacetime latents became non-finite at step {i}")
                err.nfe = stats["nfe_sampling"]
                raise err
        return x, stats

    # --- the edit -------------------------------------------------------------------------------------
    @torch.no_grad()
    def edit(self, sample: EditSample, seed: int) -> EditedVideo:
        phases = Phases(self.device)
        generator = torch.Generator().manual_seed(int(seed))
        prompts = prompts_for(sample, self.prompts_cfg, self.device)
        vae, dtype = self.m.vae, components.dtype_for(self.device)
        height, width = resize.working_size(sample.size, self.sizes)
        frames = resize.to_working(sample.source, height, width, self.device, dtype)
        # the posterior's mean and std once; the code samples it twice (inversion, then the initial latent)
        stats = components.encode_latents(vae, frames, self.decode_chunk, lambda d: torch.cat([d.mean, d.std], 1)).float()
        mean, std = stats.chunk(2, dim=1)
        scale = vae.config.scaling_factor

        def draw() -> torch.Tensor:  # one posterior sample, 1×C×T×h×w
            z = mean + std * torch.randn(mean.shape, generator=generator).to(mean.device)
            return (z * scale).transpose(0, 1)[None]

        x0_inv, x0_init = draw(), draw()
        phases.lap("encode")
        source_prompt, target_prompt = self.prefix + prompts.source, self.prefix + prompts.target
        source, target, negative = (self._text(p) for p in (source_prompt, target_prompt, self.negative_prompt))
        phases.lap("condition")

        traj = ddim.invert(lambda x, t: self._eps(x, t, source), x0_inv, self.scheduler.config, self.inversion_steps)
        phases.lap("invert")
        timesteps, guided = self.schedule()
        x = self.initial_latent(x0_init, traj, timesteps[0], generator)
        try:
            x, stats = self.generate(x, traj, timesteps, guided, source, target, negative, generator)
        except NonFiniteEdit as err:
            err.nfe += self.inversion_steps
            raise
        phases.lap("generate")
        out = self.decode(x[0].transpose(0, 1), sample.size)
        phases.lap("decode")
        losses = stats.pop("losses")
        return EditedVideo(out, nfe=self.inversion_steps + stats["nfe_sampling"], info={
            "phases": phases.report(), "nfe_inversion": self.inversion_steps, **stats, **prompts.info(),
            "inversion_prompt": source_prompt, "edit_prompt": target_prompt, "seed": int(seed),
            "working_size": [height, width], "inversion_steps": self.inversion_steps, "steps": self.steps,
            "guided_steps": guided, "optimization_steps": self.optimization_steps,
            "feature_loss_first": [l[0] for l in losses], "feature_loss_last": [l[-1] for l in losses],
            "restart_sampling": self.restart, "guidance_scale": self.guidance_scale, "hand_tuned": False,
            "dtype": str(dtype).removeprefix("torch."), "tiny_overrides": self.overrides,
        })
