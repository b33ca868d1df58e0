"""Text prompts for text-conditioned editors: the dataset's own first, else captions of frame 0.

The paper captions the source's first frame and swaps in the edited concept; the automatic stand-in here
captions the source frame 0 and the edited frame 0 with an image captioner (BLIP by default) through
`transformers`. Under `models=tiny` the captioner is a tiny random BLIP, so its captions are noise.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from harness.cache import cache_key, cached
from harness.types import EditSample
from harness.weights import local_model_dir


def _build_tiny_blip(seed: int) -> Path:
    """A tiny random BLIP captioner with a word-piece vocabulary of letters, saved like the hub repo."""
    from transformers import (BertTokenizer, BlipConfig, BlipForConditionalGeneration, BlipImageProcessor,
                              BlipProcessor)

    folder = Path(tempfile.mkdtemp(prefix="tiny-blip-"))
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]", *"abcdefghijklmnopqrstuvwxyz"]
    (folder / "vocab.txt").write_text("\n".join(words) + "\n")
    tok = BertTokenizer(str(folder / "vocab.txt"), bos_token="[DEC]")
    proc = BlipProcessor(BlipImageProcessor(size={"height": 32, "width": 32}), tok)
    torch.manual_seed(seed)
    text = dict(vocab_size=len(words), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                encoder_hidden_size=32, bos_token_id=words.index("[DEC]"), pad_token_id=0, sep_token_id=3)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=32, patch_size=8)
    model = BlipForConditionalGeneration(BlipConfig(text_config=text, vision_config=vision, projection_dim=32))
    model.save_pretrained(folder)
    proc.save_pretrained(folder)
    return folder


class Captioner:
    """An image captioner through transformers' image-to-text models (BLIP), loaded once per process."""

    def __init__(self, cfg: Any, device: str, max_new_tokens: int = 30):
        from transformers import AutoProcessor, BlipForConditionalGeneration

        if cfg.get("tiny", False):
            folder = cached(cache_key("tiny-blip", cfg.seed), lambda: _build_tiny_blip(int(cfg.seed)))
        else:
            folder = local_model_dir(cfg.repo, cfg.get("revision"), cfg.get("root"))
        self.processor = AutoProcessor.from_pretrained(folder)
        dtype = torch.float16 if str(device).startswith("cuda") else torch.float32
        self.model = BlipForConditionalGeneration.from_pretrained(folder, torch_dtype=dtype).to(device).eval()
        self.device, self.dtype = device, dtype
        self.max_new_tokens = int(cfg.get("max_new_tokens", max_new_tokens))

    @torch.no_grad()
    def __call__(self, images: list[np.ndarray]) -> list[str]:
        inputs = self.processor(images=list(images), return_tensors="pt").to(self.device)
        inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
        ids = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
        return [s.strip() for s in self.processor.batch_decode(ids, skip_special_tokens=True)]


def captioner(cfg: Any, device: str) -> Captioner:
    return cached(cache_key("captioner", cfg, device), lambda: Captioner(cfg, device))


def describe(cfg: Any) -> str:
    """The captioner a config names, for the edit's record: `repo@revision`, or `tiny random BLIP (seed s)`."""
    if cfg.get("tiny", False):
        return f"tiny random BLIP (seed {cfg.seed})"
    return f"{cfg.repo}@{cfg.get('revision') or 'main'}"


def prompts(sample: EditSample, captioner_cfg: Any, device: str) -> tuple[str, str, str]:
    """(source prompt, target prompt, where they came from): the dataset's where present, else captions."""
    src, tgt = sample.source_prompt, sample.target_prompt
    if src and tgt:
        return src, tgt, "dataset"
    caps = captioner(captioner_cfg, device)([sample.source[0], sample.edited_frame])
    return src or caps[0], tgt or caps[1], "captioner"
