"""What every text-driven baseline shares: the prompt models (captioner, rewriter) loaded before any edit is timed,
and prompts encoded with the method's own CLIP text encoder (`self.m.tokenizer`, `self.m.text_encoder`)."""
from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import torch

from baselines import components
from baselines.prompts import prepare_prompts
from harness.method import EditMethod


class TextDrivenMethod(EditMethod):
    """Subclasses set `self.m` (their components) and `self.prompts_cfg` (the `prompts` config)."""

    m: SimpleNamespace
    prompts_cfg: Any
    clip_skip: int | None = None  # encode with the output of the layer this many before the last (diffusers' clip_skip)

    def prepare(self) -> None:
        """Load what the prompts may need before any edit is timed."""
        prepare_prompts(self.prompts_cfg, self.device)

    def _text(self, prompt: str) -> torch.Tensor:
        return components.encode_text(self.m, prompt, self.device, clip_skip=self.clip_skip)
