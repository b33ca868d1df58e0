"""Plug-and-play feature injection: a source branch and edit branches share one UNet batch.

The batch of every UNet call is laid out as `n_branches` equal chunks along dim 0, chunk 0 being the
source branch (the inverted source latent at this step). While a kind of injection is active, the edit
chunks take the source chunk's self-attention queries and keys (Tumanyan et al. 2023, "PnP", eq. 4: the
attention map comes from the source, the values from the edit) or a module's output feature. PnP, AnyV2V and
TokenFlow inject the output of a decoder ResNet block's `conv2`, the residual branch before the skip
connection is added, so the edit branch keeps its own skip path. Running both branches in one call keeps
one UNet forward per step.

Everything goes through diffusers' attention-processor interface and PyTorch forward hooks; no library
class is patched. The diffusers layouts that make "chunk 0 is the source" hold in every layer: spatial
layers see (B·F, ...) and temporal layers (B·H·W, F, C), both batch-major.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention, AttnProcessor2_0


@dataclass
class InjectionState:
    """What is injected at the current step; the method updates it before each UNet call."""

    n_branches: int = 1
    active: set[str] = field(default_factory=set)  # kinds injected now, e.g. {"conv", "spatial", "temporal"}

    def on(self, kind: str) -> bool:
        return self.n_branches > 1 and kind in self.active


def from_source(x: torch.Tensor, n_branches: int) -> torch.Tensor:
    """Every chunk replaced by chunk 0 (the source branch)."""
    src = x.chunk(n_branches, dim=0)[0]
    return torch.cat([src] * n_branches, dim=0)


def attention_heads(attn: Attention, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None):
    """Q, K, V of a diffusers `Attention` as (batch, heads, tokens, head_dim), like `AttnProcessor2_0` computes them."""
    if attn.group_norm is not None:
        hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
    ctx = hidden_states if encoder_hidden_states is None else encoder_hidden_states
    if encoder_hidden_states is not None and attn.norm_cross:
        ctx = attn.norm_encoder_hidden_states(ctx)
    q, k, v = attn.to_q(hidden_states), attn.to_k(ctx), attn.to_v(ctx)
    b = q.shape[0]
    heads = attn.heads

    def split(x: torch.Tensor) -> torch.Tensor:
        return x.view(b, -1, heads, x.shape[-1] // heads).transpose(1, 2)

    q, k, v = split(q), split(k), split(v)
    if attn.norm_q is not None:
        q = attn.norm_q(q)
    if attn.norm_k is not None:
        k = attn.norm_k(k)
    return q, k, v


def attention_output(attn: Attention, out: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    """Merge heads, project out, and apply the module's residual and rescale, as `AttnProcessor2_0` does."""
    b, h, n, d = out.shape
    out = attn.to_out[1](attn.to_out[0](out.transpose(1, 2).reshape(b, n, h * d).to(residual.dtype)))
    if attn.residual_connection:
        out = out + residual
    return out / attn.rescale_output_factor


class QKInjectionProcessor:
    """Self-attention whose edit branches use the source branch's queries and keys while `kind` is active."""

    def __init__(self, state: InjectionState, kind: str):
        self.state, self.kind = state, kind
        self.plain = AttnProcessor2_0()

    def __call__(self, attn: Attention, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        if not self.state.on(self.kind) or encoder_hidden_states is not None or attn.spatial_norm is not None or hidden_states.ndim != 3:
            return self.plain(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
        q, k, v = attention_heads(attn, hidden_states)
        n = self.state.n_branches
        q, k = from_source(q, n), from_source(k, n)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask)
        return attention_output(attn, out, hidden_states)


class FeatureInjection:
    """Forward hook: a module's output in the edit branches replaced by the source branch's while `kind` is active.

    Hooked on a ResNet block's `conv2` (e.g. `up_blocks.1.resnets.1.conv2`), it replaces only the residual
    branch; the block then adds each branch's own skip connection.
    """

    def __init__(self, state: InjectionState, kind: str = "conv"):
        self.state, self.kind = state, kind

    def __call__(self, module, inputs, output):
        if not self.state.on(self.kind):
            return None
        return from_source(output, self.state.n_branches)


def self_attention_processors(unet: torch.nn.Module, modules: list[str]) -> list[str]:
    """Processor names of the named `Attention` modules (full paths such as
    `up_blocks.1.temp_attentions.1.transformer_blocks.0.attn1`), each checked to be a self-attention."""
    names = []
    for name in modules:
        try:
            module = unet.get_submodule(name)
        except AttributeError:
            raise ValueError(f"{type(unet).__name__} has no module {name!r}") from None
        if not isinstance(module, Attention) or module.is_cross_attention:
            raise ValueError(f"{name!r} is not a self-attention of {type(unet).__name__}")
        names.append(name + ".processor")
    return names


def install(unet: torch.nn.Module, state: InjectionState, attention: dict[str, list[str]], features: dict[str, list[str]]):
    """Set Q/K-injection processors (`attention`: kind -> `Attention` module paths) and feature hooks (`features`: kind -> module paths).

    Processors not named keep theirs. Returns `restore()`, which puts the UNet back as it was.
    """
    before = dict(unet.attn_processors)
    procs = dict(before)
    for kind, modules in attention.items():
        for name in self_attention_processors(unet, list(modules)):
            procs[name] = QKInjectionProcessor(state, kind)
    unet.set_attn_processor(procs)
    handles = []
    for kind, names in features.items():
        for name in names:
            handles.append(unet.get_submodule(name).register_forward_hook(FeatureInjection(state, kind)))

    def restore() -> None:
        for h in handles:
            h.remove()
        unet.set_attn_processor(before)

    return restore


# --- Cross-frame attention (Pix2Video) -----------------------------------------------------------------------
@dataclass
class CrossFrameState:
    """Attention inputs of other frames, per (step, layer), for `CrossFrameKVProcessor`.

    `step` is the current sampling step, set by the method before each UNet call. Every processor records its
    input under (step, layer name) in `recorded`; with `sources` set (stores recorded while earlier frames were
    generated), the queries of the current frame attend to the keys/values of those frames' inputs at the same
    step and layer, concatenated along tokens; each batch row (CFG branch) takes its own row of the stores.
    """

    step: int = 0
    recording: bool = False
    recorded: dict[tuple[int, str], torch.Tensor] = field(default_factory=dict)
    sources: list[dict[tuple[int, str], torch.Tensor]] = field(default_factory=list)


class CrossFrameKVProcessor:
    """Self-attention with queries from the current frame and keys/values from stored frames (`CrossFrameState`)."""

    def __init__(self, state: CrossFrameState, layer: str):
        self.state, self.layer = state, layer
        self.plain = AttnProcessor2_0()

    def __call__(self, attn: Attention, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        s, key = self.state, (self.state.step, self.layer)
        if s.recording:
            s.recorded[key] = hidden_states
        if not s.sources:
            return self.plain(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
        context = torch.cat([src[key] for src in s.sources], dim=1)  # B×(n·N)×C: [anchor ‖ previous]
        q, k, v = attention_heads(attn, hidden_states, context)
        return attention_output(attn, F.scaled_dot_product_attention(q, k, v), hidden_states)


def install_cross_frame(unet: torch.nn.Module, state: CrossFrameState, prefix: str = "up_blocks."):
    """`CrossFrameKVProcessor` on every self-attention whose module path starts with `prefix` (the decoder's).

    Returns `restore()`, which puts the UNet back as it was.
    """
    before = dict(unet.attn_processors)
    procs = dict(before)
    for name, m in unet.named_modules():
        if name.startswith(prefix) and isinstance(m, Attention) and not m.is_cross_attention:
            procs[name + ".processor"] = CrossFrameKVProcessor(state, name)
    unet.set_attn_processor(procs)

    def restore() -> None:
        unet.set_attn_processor(before)

    return restore
# --- end cross-frame attention -------------------------------------------------------------------------------
