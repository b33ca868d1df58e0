"""What every text-driven baseline shares: the prompt models (captioner, rewriter) loaded before any edit is timed,
prompts encoded with the method's own CLIP text encoder (`self.m.tokenizer`, `self.m.text_encoder`), and the result
decoded by its VAE back to the clip's size."""
from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from baselines import components, resize
from baselines.prompts import prepare_prompts
from harness.method import EditMethod


class TextDrivenMethod(EditMethod):
    """Subclasses set `self.m` (their components), `self.prompts_cfg` (the `prompts` config) and `self.decode_chunk`."""

    m: SimpleNamespace
    prompts_cfg: Any
    decode_chunk: int
    clip_skip: int | None = None  # encode with the output of the layer this many before the last (diffusers' clip_skip)

    def prepare(self) -> None:
        """Load what the prompts may need before any edit is timed."""
        prepare_prompts(self.prompts_cfg, self.device)

    def _text(self, prompt: str) -> torch.Tensor:
        return components.encode_text(self.m, prompt, self.device, clip_skip=self.clip_skip)

    def decode(self, latents: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
        """uint8 frames at the clip's `size` from N×4×h×w scaled latents: VAE decodes, `decode_chunk` frames per call,
        resized back from the working size (`resize.to_benchmark`)."""
        vae = self.m.vae
        video = components.decode_latents(vae, (latents / vae.config.scaling_factor).to(vae.dtype), self.decode_chunk)
        return resize.to_benchmark(video, *size)
