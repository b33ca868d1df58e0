"""Stable Video Diffusion components: real weights through diffusers/transformers `from_pretrained`, or tiny random ones.

`load_svd(models_cfg_entry, device)` is the one way every SVD-based method gets its backbone; it goes through
the process-wide cache, so a multirun loads SVD once. The entry (`models.svd_backbone`) is either

* real: `{repo_id, revision, root?, dtype}`: a local folder from `harness.weights.local_model_dir`, then each
  component's own `from_pretrained(folder, subfolder=...)`, fp16 on CUDA; the copy used (hub commit or folder)
  is `SVDComponents.weights_revision`; or
* tiny: `{tiny: true, seed, unet, vae, clip}`: the same classes built from the given configs with seeded random
  weights: small ones in `models=tiny` (VAE with four down blocks like SVD's, so latents are 1/8 of the frame)
  for offline smoke runs and tests; full-size ones (`SVD_FULL`) in the benchmark.

Either entry carries `num_frames`, the clip length the backbone is trained for (read by the methods), and may
carry `unet_weights` (another UNet's weights on the same components: AnimateLCM-SVD-xt's distilled UNet, a single
safetensors file of `UNetSpatioTemporalConditionModel`'s state dict, loaded strictly as its public code does; tiny:
a UNet with another seed) and `scheduler` (`{class, config}`: a diffusers scheduler replacing the repo's, e.g.
AnimateLCM's consistency schedule).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import torch
import diffusers
from diffusers import (
    AutoencoderKLTemporalDecoder,
    EulerDiscreteScheduler,
    StableVideoDiffusionPipeline,
    UNetSpatioTemporalConditionModel,
)
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from omegaconf import DictConfig, OmegaConf
from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

from harness.cache import cache_key, cached
from videoshop.speed import Speed

#: SVD's own scheduler config (v-prediction, Karras sigmas in [0.002, 700], continuous timesteps 0.25·ln σ).
SVD_SCHEDULER_CONFIG: dict[str, Any] = {
    "beta_end": 0.012, "beta_schedule": "scaled_linear", "beta_start": 0.00085, "interpolation_type": "linear",
    "num_train_timesteps": 1000, "prediction_type": "v_prediction", "sigma_max": 700.0, "sigma_min": 0.002,
    "steps_offset": 1, "timestep_spacing": "leading", "timestep_type": "continuous", "trained_betas": None,
    "use_karras_sigmas": True,
}

#: Full-size SVD architectures (img2vid, 14 frames): for the benchmark's architecture-equal random weights.
SVD_FULL = {
    "unet": dict(sample_size=96, num_frames=14),  # the rest are UNetSpatioTemporalConditionModel's defaults = SVD
    "vae": dict(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                layers_per_block=2, latent_channels=4, sample_size=768),
    "clip": dict(hidden_size=1280, intermediate_size=5120, num_attention_heads=16, num_hidden_layers=32,
                 patch_size=14, image_size=224, projection_dim=1024, hidden_act="gelu"),
}


class CountingUNet(torch.nn.Module):
    """Wraps the UNet and counts its forward calls (a CFG-batched call counts once): the edit's `nfe`; each call
    runs with the backbone's attention kernels (`Speed.attention`)."""

    def __init__(self, unet: UNetSpatioTemporalConditionModel, speed: Speed = Speed()):
        super().__init__()
        self.unet = unet
        self.speed = speed
        self.calls = 0

    def forward(self, *args, **kwargs):
        self.calls += 1
        with self.speed.attention():
            return self.unet(*args, **kwargs)

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.unet, name)


@dataclass
class SVDComponents:
    """The five SVD components on one device, plus the UNet-call counter."""

    unet: UNetSpatioTemporalConditionModel
    vae: AutoencoderKLTemporalDecoder
    image_encoder: CLIPVisionModelWithProjection
    feature_extractor: CLIPImageProcessor
    scheduler: SchedulerMixin  # SVD: EulerDiscreteScheduler; AnimateLCM: its consistency scheduler
    device: torch.device
    dtype: torch.dtype
    tiny: bool = False
    #: which weights: the hub commit SHA or the local folder they were loaded from; None for random weights
    weights_revision: str | None = None
    speed: Speed = Speed()
    counter: CountingUNet = field(init=False)

    def __post_init__(self):
        self.counter = CountingUNet(self.unet, self.speed)

    @property
    def nfe(self) -> int:
        """UNet forward calls since the counter was last reset."""
        return self.counter.calls

    def new_scheduler(self) -> SchedulerMixin:
        """A fresh scheduler of the backbone's class (its step index is per-run state, so the cached one is never
        stepped): SVD's `EulerDiscreteScheduler`, AnimateLCM's consistency scheduler."""
        return type(self.scheduler).from_config(self.scheduler.config)

    def pipeline(self, counted: bool = True) -> StableVideoDiffusionPipeline:
        """diffusers' own image-to-video pipeline on these components (UNet calls counted unless `counted=False`)."""
        pipe = StableVideoDiffusionPipeline(vae=self.vae, image_encoder=self.image_encoder,
                                            unet=self.counter if counted else self.unet,
                                            scheduler=self.new_scheduler(), feature_extractor=self.feature_extractor)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    @cached_property
    def helpers(self) -> StableVideoDiffusionPipeline:
        """One uncounted pipeline whose helpers (CLIP encoding) the methods reuse, built once per components."""
        return self.pipeline(counted=False)

    def save_pretrained(self, folder) -> None:
        """Write the components in the hub repo's layout (one subfolder each), loadable by `load_svd(root=...)`."""
        self.pipeline(counted=False).save_pretrained(folder)

    def save_unet_file(self, path) -> None:
        """Write the UNet's state dict as one safetensors file, the layout of AnimateLCM-SVD-xt's weights."""
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in self.unet.state_dict().items()}, str(path))


def _plain(entry: Any) -> dict[str, Any]:
    """A resolved plain-dict copy of a config entry."""
    return OmegaConf.to_container(entry, resolve=True) if isinstance(entry, DictConfig) else dict(entry)


def _dtype(entry: dict[str, Any], device: torch.device) -> torch.dtype:
    """The entry's dtype; `auto` = fp16 on CUDA (SVD's released fp16 weights), fp32 elsewhere (CPU fp16 is slow)."""
    name = entry.get("dtype", "auto")
    if name == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    return getattr(torch, name)


def build_random(unet: dict, vae: dict, clip: dict, seed: int = 0) -> dict[str, Any]:
    """SVD's component classes with the given configs and seeded random weights (the tiny models; the benchmark)."""
    torch.manual_seed(seed)
    unet_model = UNetSpatioTemporalConditionModel(**unet)
    vae_model = AutoencoderKLTemporalDecoder(**vae)
    clip_cfg = CLIPVisionConfig(**clip)
    image_encoder = CLIPVisionModelWithProjection(clip_cfg)
    size = clip_cfg.image_size
    feature_extractor = CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    return dict(unet=unet_model, vae=vae_model, image_encoder=image_encoder,
                feature_extractor=feature_extractor,
                scheduler=EulerDiscreteScheduler.from_config(SVD_SCHEDULER_CONFIG))


def _tiny(entry: dict[str, Any]) -> dict[str, Any]:
    """The tiny random components of a `tiny: true` entry; `unet_weights: {seed}` swaps in a UNet of the same
    config with other random weights (the tiny stand-in for AnimateLCM's distilled UNet)."""
    parts = build_random(entry["unet"], entry["vae"], entry["clip"], seed=int(entry.get("seed", 0)))
    if entry.get("unet_weights"):
        torch.manual_seed(int(entry["unet_weights"]["seed"]))
        parts["unet"] = UNetSpatioTemporalConditionModel(**entry["unet"])
    return parts


def _unet_file(unet: UNetSpatioTemporalConditionModel, spec: dict[str, Any]) -> str:
    """Load another UNet's weights from one safetensors file (`spec`: repo_id, revision, file, root) into `unet`,
    strictly (every key present, none left over), as AnimateLCM's public code does; returns which copy it was."""
    from safetensors.torch import load_file

    from harness.weights import local_model_dir, snapshot_id

    folder = local_model_dir(spec["repo_id"], spec.get("revision"), spec.get("root"), allow_patterns=[spec["file"]],
                             markers=(spec["file"],))
    path = folder / spec["file"]
    try:
        unet.load_state_dict(load_file(str(path)), strict=True)
    except RuntimeError as e:  # missing, unexpected or mis-shaped keys
        raise ValueError(f"{path}: not a state dict of this UNetSpatioTemporalConditionModel config: {e}") from e
    return f"{snapshot_id(folder)}/{spec['file']}"


def _scheduler(spec: dict[str, Any] | None, default):
    """The entry's `scheduler` ({class: a diffusers scheduler class name, config: its arguments}), else `default`."""
    if not spec:
        return default
    return getattr(diffusers, spec["class"]).from_config(dict(spec.get("config") or {}))


def _real(entry: dict[str, Any], dtype: torch.dtype) -> dict[str, Any]:
    """Real components from the hub cache or `root` (a diffusers pipeline folder), each with its own
    `from_pretrained`; fp16 loads the repo's `variant` files. `weights_revision` records which copy it was."""
    from harness.weights import local_model_dir, snapshot_id

    folder = local_model_dir(entry["repo_id"], entry.get("revision"), entry.get("root"),
                             allow_patterns=entry.get("allow_patterns"), markers=("model_index.json",))
    variant = entry.get("variant") if dtype == torch.float16 else None
    kw = dict(torch_dtype=dtype)
    revision = snapshot_id(folder)
    if entry.get("unet_weights"):  # the repo's UNet config, every weight from the file (the repo's are never read)
        config = UNetSpatioTemporalConditionModel.load_config(folder, subfolder="unet")
        unet = UNetSpatioTemporalConditionModel.from_config(config).to(dtype)
        revision = f"{revision} + unet {_unet_file(unet, entry['unet_weights'])}"
    else:
        unet = UNetSpatioTemporalConditionModel.from_pretrained(folder, subfolder="unet", variant=variant, **kw)
    return dict(
        unet=unet,
        vae=AutoencoderKLTemporalDecoder.from_pretrained(folder, subfolder="vae", variant=variant, **kw),
        image_encoder=CLIPVisionModelWithProjection.from_pretrained(folder, subfolder="image_encoder", variant=variant, **kw),
        feature_extractor=CLIPImageProcessor.from_pretrained(folder, subfolder="feature_extractor"),
        scheduler=EulerDiscreteScheduler.from_pretrained(folder, subfolder="scheduler"),
        weights_revision=revision,
    )


def load_svd(entry: Any, device: str | torch.device = "cpu", speed: Speed = Speed()) -> SVDComponents:
    """SVD components for a `models.svd_backbone`-style entry, loaded once per process, device and `speed`."""
    entry = _plain(entry)
    device = torch.device(device)

    def factory() -> SVDComponents:
        dtype = _dtype(entry, device)
        parts = _tiny(entry) if entry.get("tiny") else _real(entry, dtype)
        parts["scheduler"] = _scheduler(entry.get("scheduler"), parts["scheduler"])
        for name in ("unet", "vae", "image_encoder"):
            module = parts[name].to(device)
            if module.dtype != dtype:
                module = module.to(dtype)
            parts[name] = module.eval().requires_grad_(False)
        speed.apply(parts["unet"], parts["vae"])
        return SVDComponents(**parts, device=device, dtype=dtype, tiny=bool(entry.get("tiny")), speed=speed)

    key = ("svd", entry, str(device)) if speed.eager else ("svd", entry, str(device), repr(speed))
    return cached(cache_key(*key), factory)
