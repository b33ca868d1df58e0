"""FateZero (Qi et al., ICCV 2023): zero-shot video editing by fusing the attention of the inversion, on Stable
Diffusion 1.4, as the public code (`ChenyangQiQi/FateZero`, `test_fatezero.py` with the `config/attribute` and
`config/style` configs) runs its zero-shot mode:

0. Every frame's short side is scaled to 512 and the centre 512×512 kept (`dataset.py`); VAE-encode (a posterior
   sample, × 0.18215).
1. DDIM inversion of the whole clip in one UNet batch with the source prompt, conditional branch only
   (`ddim_clean2noisy_loop`), 50 steps, in the inflated UNet: a plain SD 1.4 UNet whose self-attention in blocks at
   least `sparse_min_channels` wide takes its keys/values from the clip's middle frame (`SparseCausalAttention_index:
   ['mid']`, `least_sc_channel: 640`).
2. Editing from the inverted x_T with the target prompt and classifier-free guidance 7.5 (DDIM, η = 0). In every
   attention layer whose queries are at most `attention_max_tokens` (32²) tokens, the conditional branch's
   attention probabilities are fused with the source's (`AttentionControlEdit`):
   a. cross-attention, for the first `cross_replace` of the steps: prompt-to-prompt, word swap (`AttentionReplace`,
      when both prompts have as many words) or refinement by token alignment (`AttentionRefine`), `baselines.p2p`;
   b. self-attention, for the first `self_replace` of the steps: the source's map, blended with a mask where the
      source prompt's changed words attend (`SpatialBlender`): mask = 1 keeps the edit's own map.
3. VAE-decode, resize the 512² result to the clip's size.

The source attention: FateZero stores every inversion step's maps (about 100 GB of CPU RAM for 8 frames). Here they
are recomputed instead: each editing call holds three branches, [unconditional, source, target], the source branch
being the inversion's own UNet input for that timestep (DDIM inversion evaluates ε(x_{t_prev}, t), so the latent
the inversion kept at the previous timestep, with the source prompt). Only the blend map (frames × 16² values per
step, reduced from the source's cross-attention of the changed words) is kept from the inversion, since the
self-attention layers need it before the UNet reaches the layers it comes from. `nfe` counts UNet calls: one per
inversion step (batch F) and one per editing step (batch 3F). docs/fatezero.md says what is adapted.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention

from baselines import components, ddim, injection, p2p, resize
from baselines.prompts import checked_config, prompts_for
from baselines.text_method import TextDrivenMethod
from harness.method import NonFiniteEdit, Phases
from harness.types import EditedVideo, EditSample

CROP_MODES = ("center", "squash")  # FateZero's loader crops the centre square; squash resizes the whole frame
SPARSE_FRAMES = {"first": lambda n: 0, "mid": lambda n: (n - 1) // 2, "last": lambda n: n - 1}
BLEND_DOWN, BLEND_UP = slice(2, 4), slice(0, 3)  # `down_cross[2:4] + up_cross[:3]` of the controlled layers


@dataclass
class FusionState:
    """What the attention processors do at the current UNet call; the method sets it before each call."""

    frames: int = 1
    sparse_frame: int = 0  # the frame whose keys/values sparse-causal self-attention uses
    max_tokens: int = 32 ** 2  # attention with more queries is left alone
    latent_hw: tuple[int, int] = (64, 64)
    editing: bool = False  # False: inversion (one branch, the source); True: [uncond, source, target]
    timestep: int = 0
    self_replace: bool = False  # this step replaces self-attention
    cross_replace: bool = False  # this step replaces cross-attention
    replace_mapper: torch.Tensor | None = None  # word swap: 77×77 (source → target)
    refine: tuple[torch.Tensor, torch.Tensor] | None = None  # refinement: (mapper, alphas)
    blend_tokens: list[int] = field(default_factory=list)  # the source prompt's tokens of the blend words
    blend_threshold: float = 0.3
    blend_sum: torch.Tensor | None = None  # this inversion call's Σ over blend layers and heads of the words' map
    blend_count: int = 0
    blend_maps: dict[int, torch.Tensor] = field(default_factory=dict)  # timestep -> pooled F×r×r map
    masks: dict[tuple[int, int, int], torch.Tensor] = field(default_factory=dict)
    record: dict | None = None  # tests: (phase, timestep, layer, branch) -> probabilities

    def layer_hw(self, tokens: int) -> tuple[int, int]:
        """(h, w) of a layer with `tokens` queries: the latent's size divided by the layer's power-of-two factor."""
        h, w = self.latent_hw
        f = round(math.sqrt(h * w / tokens))
        return h // f, w // f

    def mask(self, tokens: int) -> torch.Tensor | None:
        """The blend mask of this step at a layer's size, F×1×tokens×1 (None: no blend words, replace everywhere)."""
        if not self.blend_tokens:
            return None
        h, w = self.layer_hw(tokens)
        key = (self.timestep, h, w)
        if key not in self.masks:
            m = p2p.blend_mask(self.blend_maps[self.timestep], h, w, self.blend_threshold)
            self.masks[key] = m.reshape(self.frames, 1, h * w, 1)
        return self.masks[key]


class FusionProcessor:
    """FateZero's attention: sparse-causal keys/values in self-attention of wide blocks; explicit probabilities in
    layers with at most `max_tokens` queries, where the target branch's are fused with the source branch's."""

    def __init__(self, state: FusionState, name: str, sparse: bool, blend: bool):
        self.state, self.name, self.sparse, self.blend = state, name, sparse, blend

    def _record(self, phase: str, branch: str, probs: torch.Tensor) -> None:
        if self.state.record is not None:
            self.state.record[(phase, self.state.timestep, self.name, branch)] = probs.clone()

    def __call__(self, attn: Attention, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        s = self.state
        cross = encoder_hidden_states is not None
        q, k, v = injection.attention_heads(attn, hidden_states, encoder_hidden_states)
        if self.sparse and not cross:  # every frame attends to the sparse frame of its own branch
            b = len(k) // s.frames
            k, v = (x.view(b, s.frames, *x.shape[1:])[:, s.sparse_frame:s.sparse_frame + 1]
                    .expand(b, s.frames, *x.shape[1:]).reshape(x.shape) for x in (k, v))
        tokens = q.shape[2]
        fused = (s.cross_replace if cross else s.self_replace) if s.editing else (cross and self.blend and bool(s.blend_tokens))
        if tokens > s.max_tokens or not (fused or s.record is not None):  # nothing reads the probabilities
            return injection.attention_output(attn, F.scaled_dot_product_attention(q, k, v), hidden_states)
        if s.editing:  # the unconditional branch is never fused: SDPA; explicit maps for [source, target] only
            n = len(q) // 3
            uncond = F.scaled_dot_product_attention(q[:n], k[:n], v[:n])
            q, k, v = q[n:], k[n:], v[n:]
        probs = (q.float() @ k.float().transpose(-1, -2) * attn.scale).softmax(-1).to(q.dtype)
        if not s.editing:  # inversion: the source branch alone
            self._record("invert", "source", probs)
            if cross and self.blend and s.blend_tokens:  # Σ over the words, summed over heads, for the blend map
                h, w = s.layer_hw(tokens)
                words = probs[..., s.blend_tokens].sum(-1).float()
                s.blend_sum = words.sum(1).view(s.frames, h, w) + (0 if s.blend_sum is None else s.blend_sum)
                s.blend_count += probs.shape[1]
        else:
            src, tgt = probs.chunk(2)
            self._record("edit", "source", src)
            self._record("edit", "target_own", tgt)
            if cross and s.cross_replace:
                if s.replace_mapper is not None:  # AttentionReplace: target = source @ mapper
                    tgt = (src.float() @ s.replace_mapper).to(tgt.dtype)
                else:  # AttentionRefine: aligned source tokens, inserted tokens keep the target's
                    mapper, alphas = s.refine
                    tgt = src[..., mapper] * alphas + tgt * (1 - alphas)
            elif not cross and s.self_replace:
                mask = s.mask(tokens)
                tgt = src if mask is None else mask * tgt + (1 - mask) * src
            self._record("edit", "target", tgt)
            probs = torch.cat([src, tgt.to(probs.dtype)])
        out = probs @ v
        return injection.attention_output(attn, torch.cat([uncond, out]) if s.editing else out, hidden_states)


def layer_tokens(name: str, latent_hw: tuple[int, int], levels: int) -> int:
    """Queries of the attention module `name` of a UNet with `levels` resolution levels, at latent size `latent_hw`."""
    part, _, rest = name.partition(".")
    if part == "mid_block":
        level = levels - 1
    else:
        index = int(rest.split(".")[0])
        level = index if part == "down_blocks" else levels - 1 - index
    return (latent_hw[0] >> level) * (latent_hw[1] >> level)


def install(unet: torch.nn.Module, state: FusionState, sparse_min_channels: int):
    """`FusionProcessor` on every attention of the UNet's transformer blocks (FateZero registers its controller on
    all of them; the inflated UNet's temporal attention, which it skips, is not part of SD). Returns `restore()`."""
    before = dict(unet.attn_processors)
    levels = len(unet.config.block_out_channels)
    attns = [(n, m) for n, m in unet.named_modules() if isinstance(m, Attention)]
    controlled = [n for n, m in attns if m.is_cross_attention and layer_tokens(n, state.latent_hw, levels) <= state.max_tokens]
    blend = ([n for n in controlled if n.startswith("down_blocks.")][BLEND_DOWN]
             + [n for n in controlled if n.startswith("up_blocks.")][BLEND_UP])
    if state.blend_tokens and not blend:
        raise ValueError(f"no cross-attention layers to take the blend mask from at latent size {state.latent_hw} with "
                         f"attention_max_tokens={state.max_tokens}: raise the threshold or the working size")
    procs = dict(before)
    for n, m in attns:
        procs[n + ".processor"] = FusionProcessor(state, n, sparse=m.query_dim >= sparse_min_channels, blend=n in blend)
    unet.set_attn_processor(procs)

    def restore() -> None:
        unet.set_attn_processor(before)

    return restore


class FateZero(TextDrivenMethod):
    """FateZero on Stable Diffusion 1.4; every number comes from the method config (public defaults there)."""

    def __init__(self, name: str, backbone: Any, prompts: Any, device: str = "cpu", size: int = 512,
                 crop_mode: str = "center", steps: int = 50, guidance_scale: float = 7.5, negative_prompt: str = "",
                 cross_replace: float = 0.8, self_replace: float = 0.6, replace_controller: bool = True,
                 replace_alignment: str = "public", blend_self_attention: bool = True, blend_threshold: float = 0.3,
                 attention_max_tokens: int = 32 ** 2, sparse_frame: str = "mid", sparse_min_channels: int = 640,
                 decode_chunk: int = 8):
        super().__init__(name, device)
        settings, self.overrides = components.with_overrides(
            backbone, size=size, steps=steps, attention_max_tokens=attention_max_tokens,
            sparse_min_channels=sparse_min_channels)
        self.size, self.steps = int(settings["size"]), int(settings["steps"])
        self.max_tokens, self.sparse_min_channels = int(settings["attention_max_tokens"]), int(settings["sparse_min_channels"])
        if crop_mode not in CROP_MODES:
            raise ValueError(f"{name}: crop_mode must be one of {CROP_MODES}, got {crop_mode!r}")
        if sparse_frame not in SPARSE_FRAMES:
            raise ValueError(f"{name}: sparse_frame must be one of {sorted(SPARSE_FRAMES)}, got {sparse_frame!r}")
        if replace_alignment not in ("public", "aligned"):
            raise ValueError(f"{name}: replace_alignment must be 'public' or 'aligned', got {replace_alignment!r}")
        resize.check_multiple(self.size, self.size, 8, name)
        self.crop_mode, self.sparse_frame = crop_mode, sparse_frame
        self.guidance_scale, self.negative_prompt = float(guidance_scale), negative_prompt
        self.cross_fraction, self.self_fraction = float(cross_replace), float(self_replace)
        self.replace_controller, self.replace_alignment = bool(replace_controller), replace_alignment
        self.blend_self_attention, self.blend_threshold = bool(blend_self_attention), float(blend_threshold)
        self.decode_chunk = int(decode_chunk)
        self.prompts_cfg = checked_config(prompts)
        self.m = components.load_sd14(backbone, device)
        self.weights_revision = self.m.weights_revision
        self.dtype = components.dtype_for(device)


    def controller(self, source: str, target: str, state: FusionState) -> str:
        """Set the cross-attention fusion of `state`: a word swap when enabled and both prompts have as many words
        (`p2preplace_edit`), else a refinement. Returns the controller's name."""
        tok = self.m.tokenizer
        if self.replace_controller and len(source.split(" ")) == len(target.split(" ")):
            mapper = p2p.replacement_mapper(source, target, tok, aligned=self.replace_alignment == "aligned")
            state.replace_mapper = mapper.to(self.device)
            return "replace"
        mapper, alphas = p2p.refinement_mapper(source, target, tok)
        state.refine = (mapper.to(self.device), alphas.to(self.device, self.dtype))
        return "refine"

    def working_frames(self, sample: EditSample) -> torch.Tensor:
        if self.crop_mode == "center":
            return resize.to_working_crop(sample.source, self.size, self.device, self.dtype)
        return resize.to_working(sample.source, self.size, self.size, self.device, self.dtype)

    def invert(self, x0: torch.Tensor, source: torch.Tensor, state: FusionState) -> ddim.Trajectory:
        """Step 1: DDIM inversion (source prompt, conditional only, all frames in one batch) in the fused UNet; after
        each call the blend map of that timestep is reduced from the blend layers' word maps."""
        text = source.expand(len(x0), -1, -1)
        unet = self.m.unet

        def eps(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            state.timestep, state.blend_sum, state.blend_count = int(t), None, 0
            out = unet(x, t, encoder_hidden_states=text, return_dict=False)[0]
            if state.blend_tokens:
                state.blend_maps[int(t)] = p2p.blend_map(state.blend_sum / state.blend_count)
            return out

        # FateZero's `next_clean2noise_step` is the DDIM update without clipping x̂0, whatever the scheduler's config
        return ddim.invert(eps, x0, {**self.m.scheduler.config, "clip_sample": False}, self.steps)

    def generate(self, traj: ddim.Trajectory, texts: torch.Tensor, state: FusionState) -> tuple[torch.Tensor, int]:
        """Step 2: CFG sampling from x_T with [uncond, source, target] in every call; returns x_0 and the UNet calls."""
        scheduler = self.m.scheduler
        scheduler.set_timesteps(self.steps, device=self.device)
        n_cross = p2p.cross_replace_steps(self.cross_fraction, self.steps)
        n_self = p2p.self_replace_steps(self.self_fraction, self.steps)
        x = traj.at(scheduler.timesteps[0])
        state.editing, nfe = True, 0
        for i, t in enumerate(scheduler.timesteps):
            # the inversion computed ε(x_{t_prev}, t): its input at this timestep is the latent kept one step earlier
            source = traj.latents[max(k for k in traj.latents if k < int(t))]
            state.timestep, state.cross_replace, state.self_replace = int(t), i < n_cross, i < n_self
            eps = self.m.unet(torch.cat([x, source, x]), t, encoder_hidden_states=texts, return_dict=False)[0]
            nfe += 1
            uncond, _, cond = eps.chunk(3)
            x = scheduler.step(uncond + self.guidance_scale * (cond - uncond), t, x).prev_sample
            if not torch.isfinite(x).all():
                err = NonFiniteEdit(f"FateZero latents became non-finite at step {i}")
                err.nfe = nfe
                raise err
        return x, nfe

    @torch.no_grad()
    def edit(self, sample: EditSample, seed: int) -> EditedVideo:
        phases = Phases(self.device)
        prompts = prompts_for(sample, self.prompts_cfg, self.device)
        generator = torch.Generator().manual_seed(seed)
        vae, T = self.m.vae, sample.num_frames

        # 0. working frames (512² centre crop) and their latents (a posterior sample, as `latent_dist.sample`)
        frames = self.working_frames(sample)
        x0 = components.encode_latents(vae, frames, self.decode_chunk, lambda d: d.sample(generator)) * vae.config.scaling_factor
        phases.lap("encode")
        source, negative, target = self._text(prompts.source), self._text(self.negative_prompt), self._text(prompts.target)
        texts = torch.cat([negative.expand(T, -1, -1), source.expand(T, -1, -1), target.expand(T, -1, -1)])
        state = FusionState(frames=T, sparse_frame=SPARSE_FRAMES[self.sparse_frame](T), max_tokens=self.max_tokens,
                            latent_hw=tuple(x0.shape[-2:]), blend_threshold=self.blend_threshold)
        kind = self.controller(prompts.source, prompts.target, state)
        blend_words = list(prompts.source_words) if self.blend_self_attention else []
        state.blend_tokens = sorted({i for w in blend_words for i in p2p.word_indices(prompts.source, w, self.m.tokenizer)})
        phases.lap("condition")

        restore = install(self.m.unet, state, self.sparse_min_channels)
        try:
            traj = self.invert(x0, source, state)
            phases.lap("invert")
            try:
                x, nfe = self.generate(traj, texts, state)
            except NonFiniteEdit as err:
                err.nfe += self.steps
                raise
            phases.lap("generate")
        finally:
            restore()
        out = self.decode(x, sample.size)
        phases.lap("decode")
        return EditedVideo(out, nfe=self.steps + nfe, info={
            "phases": phases.report(), "nfe_inversion": self.steps, "nfe_sampling": nfe, **prompts.info(),
            "inversion_prompt": prompts.source, "negative_prompt": self.negative_prompt, "crop_mode": self.crop_mode,
            "working_size": [self.size, self.size], "hand_tuned": False, "controller": kind,
            "blend_words": blend_words, "blend_tokens": len(state.blend_tokens), "steps": self.steps,
            "guidance_scale": self.guidance_scale, "cross_replace": self.cross_fraction,
            "self_replace": self.self_fraction, "blend_threshold": self.blend_threshold,
            "attention_max_tokens": self.max_tokens, "sparse_frame": self.sparse_frame,
            "sparse_min_channels": self.sparse_min_channels, "seed": seed, "tiny_overrides": self.overrides,
        })
