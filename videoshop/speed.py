"""How the SVD backbone runs on its device: compilation, memory layout and attention kernels.

None of these changes what is computed, only how (up to floating-point reordering), so they are not part of a
run's identity. The default (`speed=eager`) is the reference path; `speed=fast` is opt-in until the tolerance gate
(`python -m videoshop.gate`, videoshop/gate.py) has passed at full size on the GPU it runs on.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import torch

SDPA_BACKENDS = ("flash", "efficient", "cudnn", "math")


@dataclass(frozen=True)
class Speed:
    """`compile`: a torch.compile backend for the UNet (inductor; aot_eager captures the graph without generating
    code) or None; `mode`: inductor's mode; `channels_last`: UNet and VAE weights and activations in NHWC;
    `sdpa`: scaled-dot-product-attention backends allowed, in order of preference (None: torch's choice)."""

    compile: str | None = None
    mode: str | None = None
    channels_last: bool = False
    sdpa: tuple[str, ...] | None = None

    @classmethod
    def from_config(cls, cfg: Any, device: str | torch.device) -> Speed:
        """A `speed` config (conf/speed/*.yaml); `auto` values mean on for CUDA, off elsewhere."""
        cfg = dict(cfg or {})
        cuda = torch.device(device).type == "cuda"
        auto = lambda v, on: on if v == "auto" else v  # noqa: E731
        compile_ = auto(cfg.get("compile"), "inductor" if cuda else None)
        sdpa = cfg.get("sdpa")
        if sdpa is not None:
            sdpa = tuple(sdpa)
            unknown = set(sdpa) - set(SDPA_BACKENDS)
            if unknown:
                raise ValueError(f"speed.sdpa: unknown backends {sorted(unknown)}; choose from {SDPA_BACKENDS}")
        return cls(compile=compile_, mode=cfg.get("mode") if compile_ == "inductor" else None,
                   channels_last=bool(auto(cfg.get("channels_last", False), cuda)), sdpa=sdpa)

    @property
    def eager(self) -> bool:
        return self == Speed()

    def apply(self, unet: torch.nn.Module, vae: torch.nn.Module) -> None:
        """Set the modules up in place (once, right after loading)."""
        if self.channels_last:  # the 2-D convolutions' weights (the temporal layers' are 3-D or linear)
            for m in (*unet.modules(), *vae.modules()):
                if isinstance(m, torch.nn.Conv2d):
                    m.weight.data = m.weight.data.contiguous(memory_format=torch.channels_last)
        if self.compile:
            unet.compile(backend=self.compile, mode=self.mode, dynamic=False)

    def attention(self):
        """The context every UNet call runs in: the allowed SDPA backends."""
        if self.sdpa is None:
            return contextlib.nullcontext()
        from torch.nn.attention import SDPBackend, sdpa_kernel

        names = {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
                 "cudnn": SDPBackend.CUDNN_ATTENTION, "math": SDPBackend.MATH}
        return sdpa_kernel([names[n] for n in self.sdpa], set_priority=True)
