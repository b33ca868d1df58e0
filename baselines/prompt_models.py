"""The two local models of the prompt protocol (`baselines.prompts`), through transformers' own loaders.

- `Captioner`: an image captioner (BLIP, `BlipForConditionalGeneration`) that captions source frame 0.
- `Rewriter`: an instruction-following causal LM (`AutoModelForCausalLM` + `AutoTokenizer`) that rewrites the
  caption as the edit instruction says; the tokenizer's chat template is used when it has one.

Each is configured by `repo` + `revision` (the Hugging Face cache at that commit) or `root` (a local folder), or
`tiny: true`: a seeded random model of the same architecture family, saved with `save_pretrained` and loaded back
through the same `from_pretrained` call, for offline tests (its outputs are noise). Each records `provenance`:
which model, which revision was asked for, and which copy was loaded (`harness.weights.snapshot_id`).
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from harness.cache import cache_key, cached
from harness.weights import local_model_dir, snapshot_id

#: The tiny LM's chat template: role-prefixed lines, like real chat templates but readable.
TINY_CHAT_TEMPLATE = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                      "{% if add_generation_prompt %}assistant:{% endif %}")
TINY_EOS = "<|endoftext|>"


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


def build_tiny_lm(seed: int, folder: Path | None = None) -> Path:
    """A tiny random GPT-2 with a byte-level tokenizer (every text encodes) and a chat template, saved like a
    hub repo into `folder` (a new temporary folder by default)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    folder = Path(folder or tempfile.mkdtemp(prefix="tiny-lm-"))
    vocab = {c: i for i, c in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    vocab[TINY_EOS] = eos = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token=TINY_EOS, bos_token=TINY_EOS, pad_token=TINY_EOS)
    tok.chat_template = TINY_CHAT_TEMPLATE
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(vocab), n_positions=1024, n_embd=32, n_layer=2, n_head=4,
                                       bos_token_id=eos, eos_token_id=eos, pad_token_id=eos))
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def _folder(cfg: Any, kind: str, build) -> Path:
    """Where a model's files are: a tiny random build (once per process) or the real weights' local folder."""
    if cfg.get("tiny", False):
        return cached(cache_key(f"tiny-{kind}", cfg.seed), lambda: build(int(cfg.seed)))
    return local_model_dir(cfg.repo, cfg.get("revision"), cfg.get("root"))


def describe(cfg: Any) -> str:
    """The captioner a config names, for the edit's record: `repo@revision`, or `tiny random BLIP (seed s)`."""
    if cfg.get("tiny", False):
        return f"tiny random BLIP (seed {cfg.seed})"
    return f"{cfg.repo}@{cfg.get('revision') or 'main'}"


def provenance(cfg: Any, folder: Path, what: str) -> dict[str, Any]:
    """What a prompts record keeps about one model: its name, the revision asked for and the copy loaded."""
    tiny = bool(cfg.get("tiny", False))
    return {
        "model": f"tiny random {what} (seed {cfg.seed})" if tiny else str(cfg.repo),
        "revision": None if tiny or cfg.get("root") else cfg.get("revision"),
        "loaded_from": snapshot_id(folder),
        "tiny": tiny,
        "max_new_tokens": int(cfg.max_new_tokens),
    }


class Captioner:
    """An image captioner through transformers' image-to-text models (BLIP), loaded once per process."""

    def __init__(self, cfg: Any, device: str):
        from transformers import AutoProcessor, BlipForConditionalGeneration

        folder = _folder(cfg, "blip", _build_tiny_blip)
        self.processor = AutoProcessor.from_pretrained(folder)
        dtype = torch.float16 if str(device).startswith("cuda") else torch.float32
        self.model = BlipForConditionalGeneration.from_pretrained(folder, torch_dtype=dtype).to(device).eval()
        self.device, self.dtype = device, dtype
        self.max_new_tokens = int(cfg.max_new_tokens)
        self.provenance = provenance(cfg, folder, "BLIP")

    @torch.no_grad()
    def __call__(self, images: list[np.ndarray]) -> list[str]:
        inputs = self.processor(images=list(images), return_tensors="pt").to(self.device)
        inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
        ids = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
        return [s.strip() for s in self.processor.batch_decode(ids, skip_special_tokens=True)]


def captioner(cfg: Any, device: str) -> Captioner:
    return cached(cache_key("captioner", cfg, device), lambda: Captioner(cfg, device))


class Rewriter:
    """A local instruction-following LM: `rewriter(prompt)` is its greedy continuation (special tokens dropped).

    `last_input` is the exact text the model was given (after the chat template, when the tokenizer has one).
    """

    def __init__(self, cfg: Any, device: str):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        folder = _folder(cfg, "lm", build_tiny_lm)
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        dtype = torch.bfloat16 if str(device).startswith("cuda") else torch.float32
        self.model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).to(device).eval()
        self.device = device
        self.max_new_tokens = int(cfg.max_new_tokens)
        self.chat = bool(getattr(self.tokenizer, "chat_template", None))
        self.provenance = {**provenance(cfg, folder, "GPT-2"), "chat_template": self.chat}
        self.last_input = ""

    @torch.no_grad()
    def __call__(self, prompt: str) -> str:
        text = (self.tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                                   add_generation_prompt=True) if self.chat else prompt)
        self.last_input = text
        inputs = self.tokenizer(text, return_tensors="pt", add_special_tokens=not self.chat).to(self.device)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False, pad_token_id=pad)
        return self.tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)


def rewriter(cfg: Any, device: str) -> Rewriter:
    return cached(cache_key("rewriter", cfg, device), lambda: Rewriter(cfg, device))
