"""TokenFlow (Geyer et al., ICLR 2024): consistent video editing with an image model, Stable Diffusion 2.1-base.

1. DDIM-invert every frame (empty prompt), keeping each step's latent (`baselines.ddim`).
2. Start from the inverted latent at the first sampling timestep (`paper`), or, as the released code does
   (`release`), from the clean latent re-noised to it with the noise implied by the most inverted latent.
3. At every sampling step, pick one random keyframe per group of `group_size` frames and
   a. denoise the keyframes jointly: the edit branches' self-attention attends to the keys/values of all
      keyframes (extended attention), with plug-and-play injection from a source branch (the inverted
      latent, empty prompt) of decoder self-attention Q/K (first 50% of steps) and a decoder ResNet feature
      (first 80%); the source branch attends over all keyframes too (`paper`) or within each keyframe
      (`release`);
   b. denoise all frames, each self-attention output taken from the keyframes' outputs: token n of frame f
      takes the output of its nearest neighbour (cosine similarity of the source branch's attention inputs)
      in two keyframes, blended by distance (`neighbours`): the previous and the next keyframe, linearly
      (`paper`, eq. 5–6), or the frame's own group's keyframe and the previous group's (`release`).
4. Classifier-free guidance on the propagated prediction and a DDIM step for all frames.

The working size follows the clip's aspect (512×512 for square clips, 384×672 for 16:9, as TokenFlow's
authors run it); frames are resized whole to it and back (`baselines.resize`). Cost: `nfe` counts UNet
forward calls: one per inversion step (all frames in one batch) plus two per sampling step (keyframe
pass, propagation pass; each carries the source branch and the CFG pair in one batch).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

from baselines import components, ddim, injection, resize
from baselines.prompts import checked_config, prompts_for
from baselines.text_method import TextDrivenMethod
from harness.method import NonFiniteEdit, Phases
from harness.types import EditedVideo, EditSample

VARIANTS = ("release", "paper")  # the authors' released code (omerbt/TokenFlow), or the paper's text


@dataclass
class TokenFlowState(injection.InjectionState):
    """The pass being run: "keyframes" (extended attention, outputs recorded), "propagate", or "off" (plain)."""

    mode: str = "off"
    keyframes: list[int] = field(default_factory=list)  # frame indices of this step's keyframes, one per group, ascending
    variant: str = "release"  # one of VARIANTS: what the keyframe pass's source branch attends to, how frames blend


def neighbours(variant: str, num_frames: int, keyframes: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For each frame, the two keyframes (positions in `keyframes`) its attention output is blended from, and the
    first one's weight.

    `paper`: the previous and the next keyframe in time, weighted linearly by the distance to them (eq. 5–6).
    `release`: the keyframe of the frame's own group and of the previous group (group 0: its own only), the own
    one weighted sigmoid(d_prev / (d_own + d_prev)), d being the distances to the two groups' middle frames.
    """
    if variant == "release":
        n = num_frames // len(keyframes)  # group size
        frame = torch.arange(num_frames)
        own = frame // n
        prev = (own - 1).clamp(min=0)
        d_own, d_prev = (frame - (own * n + n // 2)).abs(), (frame - (prev * n + n // 2)).abs()
        w = torch.where(own > 0, torch.sigmoid(d_prev / (d_own + d_prev)), torch.ones(num_frames))
        return own, prev, w
    prev, nxt, w = [], [], []
    for f in range(num_frames):
        a = max([i for i, k in enumerate(keyframes) if k <= f], default=0)
        b = min([i for i, k in enumerate(keyframes) if k >= f], default=len(keyframes) - 1)
        ka, kb = keyframes[a], keyframes[b]
        prev.append(a)
        nxt.append(b)
        w.append(1.0 if ka == kb else (kb - f) / (kb - ka))
    return torch.tensor(prev), torch.tensor(nxt), torch.tensor(w)


def joint_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_keyframes: int) -> torch.Tensor:
    """Extended attention over rows (branch·K)×heads×N×d: every query attends to the K·N tokens of its branch."""
    _, h, n, d = q.shape
    nb, K = q.shape[0] // num_keyframes, num_keyframes

    def joint(x: torch.Tensor) -> torch.Tensor:  # (nb·K)×h×N×d -> nb×h×(K·N)×d
        return x.reshape(nb, K, h, n, d).transpose(1, 2).reshape(nb, h, K * n, d)

    out = F.scaled_dot_product_attention(joint(q), joint(k), joint(v))
    return out.view(nb, h, K, n, d).transpose(1, 2).reshape(nb * K, h, n, d)


class TokenFlowAttnProcessor:
    """Self-attention for TokenFlow's two passes; `inject` marks a layer that takes the source branch's Q/K."""

    def __init__(self, state: TokenFlowState, inject: bool):
        self.state, self.inject = state, inject
        self.plain = AttnProcessor2_0()
        self.key_inputs: torch.Tensor | None = None  # source branch's attention inputs at the keyframes, K×N×C
        self.key_outputs: torch.Tensor | None = None  # every branch's attention outputs at the keyframes, nb×K×N×C

    def __call__(self, attn: Attention, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        s = self.state
        if s.mode == "off" or encoder_hidden_states is not None:
            return self.plain(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
        nb = s.n_branches
        if s.mode == "keyframes":
            out = self._extended(attn, hidden_states)
            self.key_inputs = hidden_states.chunk(nb)[0]
            self.key_outputs = out.view(nb, -1, *out.shape[1:])
            return out
        return self._propagate(hidden_states)

    def _extended(self, attn: Attention, hidden_states: torch.Tensor) -> torch.Tensor:
        """Each keyframe's queries attend to the keys and values of all keyframes of its own branch; in the
        `release` variant the source branch (chunk 0) attends within each keyframe, as plain self-attention."""
        s = self.state
        q, k, v = injection.attention_heads(attn, hidden_states)  # (nb·K)×heads×N×d
        if self.inject and s.on("attn"):
            q, k = injection.from_source(q, s.n_branches), injection.from_source(k, s.n_branches)
        K = len(s.keyframes)
        if s.variant == "release":
            source = F.scaled_dot_product_attention(q[:K], k[:K], v[:K])
            out = torch.cat([source, joint_attention(q[K:], k[K:], v[K:], K)])
        else:
            out = joint_attention(q, k, v, K)
        return injection.attention_output(attn, out, hidden_states)

    def _propagate(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """Every frame's output gathered from two keyframes' outputs at nearest-neighbour tokens, blended (`neighbours`)."""
        s = self.state
        nb = s.n_branches
        src = F.normalize(hidden_states.chunk(nb)[0].float(), dim=-1)  # T×N×C
        keys = F.normalize(self.key_inputs.float(), dim=-1)  # K×N×C
        first, second, w = neighbours(s.variant, src.shape[0], s.keyframes)
        out = torch.empty(nb, *src.shape[:2], self.key_outputs.shape[-1], dtype=self.key_outputs.dtype, device=hidden_states.device)
        for f in range(src.shape[0]):
            parts = []
            for pos in (int(first[f]), int(second[f])):
                nn = (src[f] @ keys[pos].T).argmax(dim=-1)  # N: index of the most similar keyframe token
                parts.append(self.key_outputs[:, pos, nn])
            out[:, f] = w[f].item() * parts[0] + (1 - w[f].item()) * parts[1]
        return out.reshape(-1, *out.shape[2:])


def install(unet: torch.nn.Module, state: TokenFlowState, inject_attention: list[str], inject_features: list[str]):
    """TokenFlow processors on every self-attention (Q/K injection on the named `Attention` modules) and
    feature-injection hooks on the named modules (a ResNet block's `conv2`).

    Returns `restore()`, which puts the UNet back as it was.
    """
    before = dict(unet.attn_processors)
    procs = dict(before)
    injected = set(injection.self_attention_processors(unet, inject_attention))
    every = [n + ".processor" for n, m in unet.named_modules() if isinstance(m, Attention) and not m.is_cross_attention]
    for name in every:
        procs[name] = TokenFlowAttnProcessor(state, inject=name in injected)
    unet.set_attn_processor(procs)
    hook = injection.FeatureInjection(state, "conv")
    handles = [unet.get_submodule(n).register_forward_hook(hook) for n in inject_features]

    def restore() -> None:
        for h in handles:
            h.remove()
        unet.set_attn_processor(before)

    return restore


class TokenFlow(TextDrivenMethod):
    """TokenFlow on Stable Diffusion 2.1-base; every number comes from the method config (published defaults there)."""

    def __init__(self, name: str, backbone: Any, prompts: Any, device: str = "cpu",
                 sizes: Any = ((512, 512), (384, 672)), keep_aspect: bool = False, size_multiple: int = 64, inversion_steps: int = 500, steps: int = 50, guidance_scale: float = 7.5, group_size: int = 7,
                 negative_prompt: str = "", seed: int | None = 1, decode_chunk: int = 8,
                 injection_until: Any = None, injection_layers: Any = None, variant: str = "release"):
        super().__init__(name, device)
        if variant not in VARIANTS:
            raise ValueError(f"{name}: variant={variant!r}, expected one of {VARIANTS}")
        self.variant = variant
        from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTokenizer

        settings, self.overrides = components.with_overrides(backbone, sizes=sizes, size_multiple=size_multiple,
                                                             inversion_steps=inversion_steps, steps=steps)
        self.sizes = resize.candidates(settings["sizes"], name)
        self.keep_aspect, self.size_multiple = bool(keep_aspect), int(settings["size_multiple"])
        self.inversion_steps, self.steps = int(settings["inversion_steps"]), int(settings["steps"])
        self.guidance_scale, self.group_size, self.negative_prompt = float(guidance_scale), int(group_size), negative_prompt
        self.seed, self.decode_chunk = seed, int(decode_chunk)
        self.until = dict(injection_until or {"attn": 0.5, "conv": 0.8})
        self.layers = {k: [str(m) for m in v] for k, v in (injection_layers or {}).items()}
        self.prompts_cfg = checked_config(prompts)
        self.m = components.load(backbone, {
            "unet": UNet2DConditionModel, "vae": AutoencoderKL, "text_encoder": CLIPTextModel,
            "tokenizer": CLIPTokenizer, "scheduler": DDIMScheduler,
        }, device)
        self.weights_revision = self.m.weights_revision
        self.dtype = components.dtype_for(device)

    def starting_latent(self, traj: ddim.Trajectory, t: torch.Tensor) -> torch.Tensor:
        """The latent at timestep `t` that sampling starts from. `paper`: the inverted latent there. `release`: the
        clean latent x0 re-noised to `t` with the noise the most inverted latent z_T implies,
        ε = (z_T − √ᾱ_T·x0) / √(1 − ᾱ_T)."""
        if self.variant == "paper":
            return traj.at(t)
        scheduler = self.m.scheduler
        x0, t_last = traj.at(-1), max(traj.latents)
        alpha = float(scheduler.alphas_cumprod[t_last])
        eps = (traj.latents[t_last] - alpha ** 0.5 * x0) / (1 - alpha) ** 0.5
        return scheduler.add_noise(x0, eps, t)

    def keyframes(self, num_frames: int, generator: torch.Generator) -> list[int]:
        """One random frame per group of `group_size` consecutive frames."""
        offsets = torch.randint(self.group_size, (num_frames // self.group_size,), generator=generator)
        return [g * self.group_size + int(o) for g, o in enumerate(offsets)]

    @torch.no_grad()
    def edit(self, sample: EditSample, seed: int) -> EditedVideo:
        phases = Phases(self.device)
        seed = seed if self.seed is None else int(self.seed)
        generator = torch.Generator().manual_seed(seed)
        prompts = prompts_for(sample, self.prompts_cfg, self.device)
        T = sample.num_frames
        if T % self.group_size:
            raise ValueError(f"{self.name}: group_size={self.group_size} must divide the frame count {T} of {sample.id}")
        unet, scheduler, vae = self.m.unet, self.m.scheduler, self.m.vae
        height, width = resize.working_size(sample.size, self.sizes, self.keep_aspect, self.size_multiple)
        frames = resize.to_working(sample.source, height, width, self.device, self.dtype)
        x0 = components.encode_latents(vae, frames, self.decode_chunk).contiguous() * vae.config.scaling_factor
        phases.lap("encode")
        empty, negative, target = self._text(""), self._text(self.negative_prompt), self._text(prompts.target)
        phases.lap("condition")

        # 1. DDIM inversion of every frame with the empty prompt
        traj = ddim.invert(lambda x, t: unet(x, t, encoder_hidden_states=empty.repeat(T, 1, 1), return_dict=False)[0],
                           x0, scheduler.config, self.inversion_steps)
        nfe_inv = self.inversion_steps
        phases.lap("invert")

        # 2. sampling: keyframe pass, then propagation pass, per step
        state = TokenFlowState(n_branches=3, variant=self.variant)
        restore = install(unet, state, self.layers.get("attn", []), self.layers.get("conv", []))
        scheduler.set_timesteps(self.steps, device=self.device)
        x = self.starting_latent(traj, scheduler.timesteps[0])
        nfe = 0
        try:
            for i, t in enumerate(scheduler.timesteps):
                state.active = {k for k, frac in self.until.items() if i < frac * self.steps}
                keys = self.keyframes(T, generator)
                state.keyframes = keys
                src = traj.at(t)
                state.mode = "keyframes"
                K = len(keys)
                text_k = torch.cat([empty.expand(K, -1, -1), negative.expand(K, -1, -1), target.expand(K, -1, -1)])
                unet(torch.cat([src[keys], x[keys], x[keys]]), t, encoder_hidden_states=text_k, return_dict=False)
                state.mode = "propagate"
                text_all = torch.cat([empty.expand(T, -1, -1), negative.expand(T, -1, -1), target.expand(T, -1, -1)])
                out = unet(torch.cat([src, x, x]), t, encoder_hidden_states=text_all, return_dict=False)[0]
                nfe += 2
                _, uncond, cond = out.chunk(3)
                guided = uncond + self.guidance_scale * (cond - uncond)  # classifier-free guidance
                x = scheduler.step(guided, t, x).prev_sample  # DDIM, eta = 0
                if not torch.isfinite(x).all():
                    err = NonFiniteEdit(f"TokenFlow latents became non-finite at step {i}")
                    err.nfe = nfe_inv + nfe
                    raise err
        finally:
            state.mode = "off"
            restore()
        phases.lap("generate")
        frames = self.decode(x, sample.size)
        phases.lap("decode")
        return EditedVideo(frames, nfe=nfe_inv + nfe, info={"phases": phases.report(),
            "nfe_inversion": nfe_inv, "nfe_sampling": nfe, **prompts.info(), "inversion_prompt": "",
            "working_size": [height, width], "keep_aspect": self.keep_aspect, "seed": seed,
            "inversion_steps": self.inversion_steps, "steps": self.steps, "guidance_scale": self.guidance_scale,
            "group_size": self.group_size, "variant": self.variant, "tiny_overrides": self.overrides,
        })
