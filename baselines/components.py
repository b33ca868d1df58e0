"""Diffusers/transformers components of the related systems, from real weights or tiny random builds.

Real weights: `harness.weights.local_model_dir(repo, revision, root)` and each class's own
`from_pretrained(folder, subfolder=...)`, half precision on CUDA. Tiny (`models=tiny`): the same component
classes with small, seeded, random-weight configs of the same architecture (same block types and layer
counts, few channels), written with `save_pretrained` to a temporary folder and loaded back through the
very same `from_pretrained` path. Everything is loaded once per process through `harness.cache.cached`.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from harness.cache import cache_key, cached
from harness.weights import local_model_dir, snapshot_id

TINY_CHANNELS = (8, 8, 16, 16)  # four blocks like SD 2.1 / I2VGen-XL (320, 640, 1280, 1280), scale factor 8
TINY_CONTEXT = 32  # cross-attention width (1024 in both real models)


def dtype_for(device: str) -> torch.dtype:
    return torch.float16 if str(device).startswith("cuda") else torch.float32


def _tiny_tokenizer(folder: Path):
    """A CLIP BPE tokenizer over single bytes only (no merges): offline, and any text still tokenizes."""
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import CLIPTokenizer

    chars = sorted(ByteLevel.alphabet())
    vocab = {tok: i for i, tok in enumerate(chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"])}
    CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77).save_pretrained(folder)
    return len(vocab)


def _tiny_text_encoder(vocab_size: int):
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(CLIPTextConfig(vocab_size=vocab_size, hidden_size=TINY_CONTEXT, intermediate_size=64,
                                        num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=77,
                                        projection_dim=TINY_CONTEXT, hidden_act="gelu",
                                        bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1, pad_token_id=vocab_size - 1))


def _tiny_vae():
    from diffusers import AutoencoderKL

    n = len(TINY_CHANNELS)
    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=TINY_CHANNELS,
                         down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
                         layers_per_block=2, norm_num_groups=4, sample_size=64)


def _tiny_sd_base(folder: Path) -> None:
    """The parts every tiny Stable Diffusion folder shares: tokenizer, CLIP text encoder, VAE, DDIM scheduler."""
    from diffusers import DDIMScheduler

    vocab = _tiny_tokenizer(folder / "tokenizer")
    _tiny_text_encoder(vocab).save_pretrained(folder / "text_encoder")
    _tiny_vae().save_pretrained(folder / "vae")
    DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
                  set_alpha_to_one=False, steps_offset=1).save_pretrained(folder / "scheduler")


def encode_latents(vae, frames: torch.Tensor, chunk: int, pick=lambda dist: dist.mode()) -> torch.Tensor:
    """VAE latents (unscaled) of N×3×H×W frames, `chunk` frames per call; `pick` takes the latent of the
    posterior (its mode by default; `.mean`, or `.sample(generator)` where a method's code samples)."""
    return torch.cat([pick(vae.encode(frames[i:i + chunk]).latent_dist) for i in range(0, len(frames), chunk)])


def decode_latents(vae, latents: torch.Tensor, chunk: int) -> torch.Tensor:
    """VAE decodes of N×4×h×w (unscaled) latents, `chunk` per call."""
    return torch.cat([vae.decode(latents[i:i + chunk]).sample for i in range(0, len(latents), chunk)])


def _build_tiny(kind: str, seed: int) -> Path:
    """Write a tiny random-weight model folder laid out like the hub repo of `kind` (`i2vgen` or `sd21`)."""
    from diffusers import I2VGenXLUNet, UNet2DConditionModel

    folder = Path(tempfile.mkdtemp(prefix=f"tiny-{kind}-"))
    torch.manual_seed(seed)
    _tiny_sd_base(folder)
    if kind == "i2vgen":
        from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

        I2VGenXLUNet(sample_size=8, block_out_channels=TINY_CHANNELS, layers_per_block=2, norm_num_groups=4,
                     cross_attention_dim=TINY_CONTEXT, attention_head_dim=2).save_pretrained(folder / "unet")
        CLIPVisionModelWithProjection(CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                                       num_attention_heads=4, image_size=32, patch_size=8,
                                                       projection_dim=TINY_CONTEXT)).save_pretrained(folder / "image_encoder")
        CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder / "feature_extractor")
    elif kind == "sd21":
        UNet2DConditionModel(sample_size=8, block_out_channels=TINY_CHANNELS, layers_per_block=2, norm_num_groups=4,
                             cross_attention_dim=TINY_CONTEXT, attention_head_dim=2, use_linear_projection=True,
                             down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                             up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3).save_pretrained(folder / "unet")
    else:
        raise ValueError(f"no tiny build for {kind!r}")
    pipeline = {"i2vgen": "I2VGenXLPipeline", "sd21": "StableDiffusionPipeline"}[kind]
    (folder / "model_index.json").write_text(json.dumps({"_class_name": pipeline, "_tiny_random_weights": True}))
    return folder


def with_overrides(backbone: Any, **settings: Any) -> tuple[dict[str, Any], list[str]]:
    """A method's settings with the backbone's `overrides` applied (tiny runs: small size, few steps), and the
    overrides as `key=value` strings (plain, for the edit's JSON `info`)."""
    raw = backbone.get("overrides") or {}
    overrides = OmegaConf.to_container(raw) if isinstance(raw, DictConfig) else dict(raw)
    unknown = set(overrides) - set(settings)
    if unknown:
        raise ValueError(f"models overrides {sorted(unknown)} are not settings of this method ({sorted(settings)})")
    return {**settings, **overrides}, [f"{k}={v}" for k, v in sorted(overrides.items())]


def model_folder(cfg: Any, subfolders: list[str]) -> Path:
    """The folder holding the model of `cfg` (a `models.<key>` config): real weights, or the tiny build of its `kind`."""
    if cfg.get("tiny", False):
        build = TINY_BUILDS.get(cfg.kind, lambda seed: _build_tiny(cfg.kind, seed))
        return cached(cache_key("tiny-folder", cfg.kind, cfg.seed), lambda: build(int(cfg.seed)))
    patterns = ["model_index.json", *[f"{s}/*" for s in subfolders]]
    return local_model_dir(cfg.repo, cfg.get("revision"), cfg.get("root"), allow_patterns=patterns)


def load(cfg: Any, classes: dict[str, type], device: str) -> SimpleNamespace:
    """`classes`: subfolder -> class with `from_pretrained`; torch modules are moved to `device` in eval mode."""

    def factory() -> SimpleNamespace:
        folder = model_folder(cfg, list(classes))
        parts = {}
        for sub, cls in classes.items():
            if issubclass(cls, torch.nn.Module):
                m = cls.from_pretrained(folder, subfolder=sub, torch_dtype=dtype_for(device))
                parts[sub] = m.to(device).eval().requires_grad_(False)
            else:
                parts[sub] = cls.from_pretrained(folder, subfolder=sub)
        revision = None if cfg.get("tiny", False) else snapshot_id(folder)
        return SimpleNamespace(**parts, folder=folder, weights_revision=revision)

    return cached(cache_key("components", cfg, sorted(classes), device), factory)


@torch.no_grad()
def encode_text(m: SimpleNamespace, prompt: str, device: str, clip_skip: int | None = None) -> torch.Tensor:
    """CLIP text-encoder hidden states of `prompt`, padded to the tokenizer's length, as diffusers' pipelines
    compute them: the last layer's output, or with `clip_skip` the output of the layer `clip_skip` before it,
    passed through the encoder's final layer norm."""
    tok = m.tokenizer(prompt, padding="max_length", max_length=m.tokenizer.model_max_length, truncation=True,
                      return_tensors="pt")
    ids = tok.input_ids.to(device)
    if clip_skip is None:
        return m.text_encoder(ids)[0]
    hidden = m.text_encoder(ids, output_hidden_states=True).hidden_states[-(clip_skip + 1)]
    text_model = getattr(m.text_encoder, "text_model", m.text_encoder)  # transformers 5 dropped the `text_model` level
    return text_model.final_layer_norm(hidden)


# --- Stable Diffusion 2 depth (Pix2Video) ------------------------------------------------------------------
SD2_DEPTH_PARTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler", "depth_estimator", "feature_extractor")
TINY_DPT_SIZE = 32  # the tiny DPT's input side (384 in SD 2 depth's MiDaS DPT-Hybrid)


def _build_tiny_sd2_depth(seed: int) -> Path:
    """A tiny random-weight folder laid out like `stabilityai/stable-diffusion-2-depth`: the SD 2 UNet blocks with
    5 input channels (latent + depth), VAE, CLIP text encoder, tokenizer, DDIM scheduler, and a small DPT (a plain
    ViT backbone instead of the real hybrid ViT+BiT) with its image processor."""
    from diffusers import UNet2DConditionModel
    from transformers import DPTConfig, DPTForDepthEstimation, DPTImageProcessor

    folder = Path(tempfile.mkdtemp(prefix="tiny-sd2-depth-"))
    torch.manual_seed(seed)
    _tiny_sd_base(folder)
    UNet2DConditionModel(sample_size=8, in_channels=5, block_out_channels=TINY_CHANNELS, layers_per_block=2,
                         norm_num_groups=4, cross_attention_dim=TINY_CONTEXT, attention_head_dim=2, use_linear_projection=True,
                         down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                         up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3).save_pretrained(folder / "unet")
    dpt = DPTForDepthEstimation(DPTConfig(hidden_size=16, num_hidden_layers=4, num_attention_heads=2, intermediate_size=32,
                                          image_size=TINY_DPT_SIZE, patch_size=8, backbone_out_indices=[0, 1, 2, 3],
                                          neck_hidden_sizes=[8, 8, 16, 16], fusion_hidden_size=16))
    last = dpt.head.head[-2]  # the 1×1 conv before the final ReLU: random init leaves the depth ≈ 0 everywhere
    torch.nn.init.normal_(last.weight, std=1.0)
    torch.nn.init.constant_(last.bias, 1.0)
    dpt.save_pretrained(folder / "depth_estimator")
    DPTImageProcessor(size={"height": TINY_DPT_SIZE, "width": TINY_DPT_SIZE}, keep_aspect_ratio=False, ensure_multiple_of=1,
                      image_mean=[0.5] * 3, image_std=[0.5] * 3).save_pretrained(folder / "feature_extractor")
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionDepth2ImgPipeline",
                                                         "_tiny_random_weights": True}))
    return folder


def load_sd2_depth(cfg: Any, device: str, dtype: torch.dtype) -> SimpleNamespace:
    """SD 2 depth's components (`SD2_DEPTH_PARTS`) for a `models.sd2_depth` config: real weights from the hub cache or
    `root` at the pinned revision, or the tiny build; torch modules in `dtype` (Pix2Video runs in fp32) on `device`."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer, DPTForDepthEstimation, DPTImageProcessor

    classes = dict(zip(SD2_DEPTH_PARTS, (UNet2DConditionModel, AutoencoderKL, CLIPTextModel, CLIPTokenizer, DDIMScheduler,
                                         DPTForDepthEstimation, DPTImageProcessor)))

    def factory() -> SimpleNamespace:
        if cfg.get("tiny", False):
            folder = cached(cache_key("tiny-folder", "sd2_depth", cfg.seed), lambda: _build_tiny_sd2_depth(int(cfg.seed)))
        else:
            folder = local_model_dir(cfg.repo, cfg.get("revision"), cfg.get("root"),
                                     allow_patterns=["model_index.json", *[f"{s}/*" for s in SD2_DEPTH_PARTS]])
        parts = {}
        for sub, cls in classes.items():
            if issubclass(cls, torch.nn.Module):
                parts[sub] = cls.from_pretrained(folder, subfolder=sub, torch_dtype=dtype).to(device).eval().requires_grad_(False)
            else:
                parts[sub] = cls.from_pretrained(folder, subfolder=sub)
        revision = None if cfg.get("tiny", False) else snapshot_id(folder)
        return SimpleNamespace(**parts, folder=folder, weights_revision=revision)

    return cached(cache_key("components", "sd2-depth", cfg, str(dtype), device), factory)
# --- end Stable Diffusion 2 depth ---------------------------------------------------------------------------


# --- RAVE: Stable Diffusion 1.5 + ControlNet v1.1 depth + ZoeDepth (baselines/rave.py) ---------------------------
TINY_ZOE_SIZE = 64  # the tiny ZoeDepth's input side (the real processor's is 384×512)


def _tiny_sd1_unet(channels: tuple[int, ...]):
    """A tiny random-weight UNet with the SD 1.x layout (SD 1.4 and 1.5 share it: no linear projection, the same
    heads at every level, three cross-attention levels and a plain one at the bottom)."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(sample_size=8, block_out_channels=channels, layers_per_block=2, norm_num_groups=4,
                                cross_attention_dim=TINY_CONTEXT, attention_head_dim=2,
                                down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                                up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)


def _build_tiny_sd15_controlnet_depth(seed: int) -> Path:
    """A tiny random-weight SD 1.5 folder (SD 1.5's UNet layout: no linear projection, 8 heads) with a `controlnet`
    (ControlNetModel.from_unet of that UNet, RGB condition) and a `depth` ZoeDepth (tiny BEiT backbone) beside it."""
    from diffusers import ControlNetModel
    from transformers import BeitConfig, ZoeDepthConfig, ZoeDepthForDepthEstimation, ZoeDepthImageProcessor

    folder = Path(tempfile.mkdtemp(prefix="tiny-sd15-controlnet-depth-"))
    torch.manual_seed(seed)
    _tiny_sd_base(folder)
    unet = _tiny_sd1_unet(TINY_CHANNELS)
    unet.save_pretrained(folder / "unet")
    controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(4, 8, 8, 16))
    with torch.no_grad():  # from_unet zero-initializes the residual outputs: random ones make ControlNet testable
        for p in controlnet.parameters():
            if not p.any():
                p.normal_(std=0.05)
    controlnet.save_pretrained(folder / "controlnet")
    backbone = BeitConfig(image_size=TINY_ZOE_SIZE, patch_size=16, hidden_size=32, num_hidden_layers=4,
                          num_attention_heads=2, intermediate_size=64, use_relative_position_bias=True,
                          reshape_hidden_states=False, layer_scale_init_value=0.1,
                          out_features=["stage1", "stage2", "stage3", "stage4"])
    ZoeDepthForDepthEstimation(ZoeDepthConfig(
        backbone_config=backbone, patch_size=16, neck_hidden_sizes=[8, 16, 32, 32], fusion_hidden_size=16,
        reassemble_factors=[4, 2, 1, 0.5], num_relative_features=8, bottleneck_features=16, bin_embedding_dim=16,
        num_attractors=[4, 4, 4, 4])).save_pretrained(folder / "depth")
    ZoeDepthImageProcessor(size={"height": TINY_ZOE_SIZE, "width": TINY_ZOE_SIZE},
                           ensure_multiple_of=16).save_pretrained(folder / "depth")
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionControlNetPipeline",
                                                         "_tiny_random_weights": True}))
    return folder


def load_sd15_controlnet_depth(cfg: Any, device: str) -> SimpleNamespace:
    """SD 1.5 (unet, vae, text_encoder, tokenizer, scheduler), its ControlNet (`controlnet`) and a ZoeDepth estimator
    (`depth`, `depth_processor`) from `cfg` (a `models.<key>` config with `controlnet` and `depth` sub-entries:
    repo, revision, root). `weights_revision` names the three copies loaded (None for tiny builds)."""
    from diffusers import AutoencoderKL, ControlNetModel, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer, ZoeDepthForDepthEstimation, ZoeDepthImageProcessor

    sd_classes = {"unet": UNet2DConditionModel, "vae": AutoencoderKL, "text_encoder": CLIPTextModel,
                  "tokenizer": CLIPTokenizer, "scheduler": DDIMScheduler}

    def ready(module: torch.nn.Module) -> torch.nn.Module:
        return module.to(device).eval().requires_grad_(False)

    def factory() -> SimpleNamespace:
        dtype = dtype_for(device)
        if cfg.get("tiny", False):
            sd = cn = depth = _build_tiny_sd15_controlnet_depth(int(cfg.seed))
            cn_sub, depth_sub = "controlnet", "depth"
        else:
            patterns = ["model_index.json", *[f"{s}/*" for s in sd_classes]]
            sd = local_model_dir(cfg.repo, cfg.get("revision"), cfg.get("root"), allow_patterns=patterns)
            cn = local_model_dir(cfg.controlnet.repo, cfg.controlnet.get("revision"), cfg.controlnet.get("root"),
                                 allow_patterns=["config.json", "diffusion_pytorch_model.safetensors"])
            depth = local_model_dir(cfg.depth.repo, cfg.depth.get("revision"), cfg.depth.get("root"),
                                    allow_patterns=["config.json", "preprocessor_config.json", "model.safetensors"])
            cn_sub = depth_sub = ""
        parts = {}
        for sub, cls in sd_classes.items():
            if issubclass(cls, torch.nn.Module):
                parts[sub] = ready(cls.from_pretrained(sd, subfolder=sub, torch_dtype=dtype))
            else:
                parts[sub] = cls.from_pretrained(sd, subfolder=sub)
        parts["controlnet"] = ready(ControlNetModel.from_pretrained(cn, subfolder=cn_sub or None, torch_dtype=dtype))
        # ZoeDepth stays in float32 (its bin/attractor heads are precision-sensitive; it runs once per frame)
        parts["depth"] = ready(ZoeDepthForDepthEstimation.from_pretrained(depth, subfolder=depth_sub))
        parts["depth_processor"] = ZoeDepthImageProcessor.from_pretrained(depth, subfolder=depth_sub)
        revision = None if cfg.get("tiny", False) else (
            f"sd15={snapshot_id(sd)} controlnet={snapshot_id(cn)} depth={snapshot_id(depth)}")
        return SimpleNamespace(**parts, folder=sd, weights_revision=revision)

    return cached(cache_key("components", "sd15-controlnet-depth", cfg, device), factory)


# --- ZeroScope v2 576w (Spacetime, baselines/spacetime.py) ------------------------------------------------------
ZEROSCOPE_PARTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")


def _build_tiny_zeroscope(seed: int) -> Path:
    """A tiny random-weight folder laid out like `cerspense/zeroscope_v2_576w`: a `UNet3DConditionModel` with the
    real block types (three cross-attention down blocks, one plain; up blocks mirrored), the tiny SD VAE, CLIP text
    encoder, tokenizer and DDIM scheduler."""
    from diffusers import UNet3DConditionModel

    folder = Path(tempfile.mkdtemp(prefix="tiny-zeroscope-"))
    torch.manual_seed(seed)
    _tiny_sd_base(folder)
    UNet3DConditionModel(sample_size=8, block_out_channels=TINY_CHANNELS, layers_per_block=2, norm_num_groups=4,
                         cross_attention_dim=TINY_CONTEXT, attention_head_dim=2).save_pretrained(folder / "unet")
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "TextToVideoSDPipeline",
                                                         "_tiny_random_weights": True}))
    return folder


def load_zeroscope(cfg: Any, device: str) -> SimpleNamespace:
    """ZeroScope's components (`ZEROSCOPE_PARTS`) for a `models.zeroscope` config: real weights from the hub cache or
    `root` at the pinned revision, or the tiny build; torch modules fp16 on CUDA (as the public code loads them)."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet3DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    classes = (UNet3DConditionModel, AutoencoderKL, CLIPTextModel, CLIPTokenizer, DDIMScheduler)
    return load(cfg, dict(zip(ZEROSCOPE_PARTS, classes)), device)


# --- Stable Diffusion 1.4 (FateZero, baselines/fatezero.py) ---------------------------------------------------
SD14_PARTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
TINY_SD14_CHANNELS = (8, 16, 32, 32)  # SD 1.4's (320, 640, 1280, 1280) / 40: the same width steps between levels


def _build_tiny_sd14(seed: int) -> Path:
    """A tiny random-weight folder laid out like `CompVis/stable-diffusion-v1-4` (the SD 1.x UNet of `_tiny_sd1_unet`
    with SD 1.4's width ratios between levels, so width-based settings scale with one factor)."""
    folder = Path(tempfile.mkdtemp(prefix="tiny-sd14-"))
    torch.manual_seed(seed)
    _tiny_sd_base(folder)
    _tiny_sd1_unet(TINY_SD14_CHANNELS).save_pretrained(folder / "unet")
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline",
                                                         "_tiny_random_weights": True}))
    return folder


def load_sd14(cfg: Any, device: str) -> SimpleNamespace:
    """SD 1.4's components (`SD14_PARTS`) for a `models.sd14` config: real weights from the hub cache or `root` at the
    pinned revision, or the tiny build; half precision on CUDA."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    classes = (UNet2DConditionModel, AutoencoderKL, CLIPTextModel, CLIPTokenizer, DDIMScheduler)
    return load(cfg, dict(zip(SD14_PARTS, classes)), device)


# tiny builds of a `kind` written by a function of its own (the others: `_build_tiny`)
TINY_BUILDS = {"zeroscope": _build_tiny_zeroscope, "sd14": _build_tiny_sd14}
