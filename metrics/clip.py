"""CLIP scores (paper Tables 2, 3, 5): CLIP_tgt and CLIP_tgt+ (edit fidelity), CLIP_src and CLIP_src+
(source faithfulness), CLIP_TC (temporal consistency); all cosines of image embeddings, mean over frames.

Regions ("+"): the edited region of frame t is its tracked mask (metrics.regions). For CLIP_tgt+ both the
edited frame and the target image are cropped to their region's bounding box, pixels outside the region
set to one constant and the crop padded square with it; for CLIP_src+ the edited region is blanked with
that constant in both the edited and the source frame. Frames whose region (or its complement) covers
less than `min_region` of the frame are skipped and counted in `region_skipped`.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from harness.cache import cache_key, cached
from harness.metric import Column, VideoMetric
from harness.types import EditSample
from harness.weights import MissingWeights, hub_reachable
from metrics.regions import TRACKER_COLUMN, SampleCache, blank, regions_for, usable_frames
from metrics.seams import seam_columns, seam_scores
from metrics.tensors import batches, model_dtype, resize, to_tensor


#: A tiny CLIP of the same family (ViT image tower, QuickGELU) for offline smoke runs.
TINY_CLIP = {
    "embed_dim": 32,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "head_width": 32, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def load_clip(model: str = "ViT-L-14", pretrained: str | None = "openai", checkpoint: str | None = None,
              quick_gelu: bool = True, cache_dir: str | None = None, tiny: bool = False, seed: int = 0,
              device: str = "cpu") -> torch.nn.Module:
    """An open_clip model, once per process. `checkpoint` (a local file) overrides the `pretrained` tag.
    `tiny`: seeded random weights of the architecture `model` ("tiny": a 2-layer CLIP for smoke tests)."""
    key = cache_key("clip", model, pretrained, checkpoint, quick_gelu, cache_dir, tiny, seed, device)
    return cached(key, lambda: _build_clip(model, pretrained, checkpoint, quick_gelu, cache_dir, tiny, seed, device))


def _build_clip(model, pretrained, checkpoint, quick_gelu, cache_dir, tiny, seed, device) -> torch.nn.Module:
    import open_clip

    if tiny:
        torch.manual_seed(seed)
        if model == "tiny":
            net = open_clip.model.CLIP(**TINY_CLIP)
            net.visual.image_mean, net.visual.image_std = open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD
        else:
            net = open_clip.create_model(model, pretrained=None, force_quick_gelu=quick_gelu)
    else:
        if checkpoint and not Path(checkpoint).is_file():
            raise MissingWeights(f"CLIP checkpoint {checkpoint} does not exist")
        if not checkpoint and pretrained and not hub_reachable():
            checkpoint = _cached_pretrained(model, pretrained, cache_dir)
        try:
            # QuickGELU: OpenAI's weights were trained with it; without it the wrong activation runs silently.
            net = open_clip.create_model(model, pretrained=checkpoint or pretrained, force_quick_gelu=quick_gelu,
                                         require_pretrained=True, cache_dir=cache_dir, weights_only=True)
        except (RuntimeError, OSError, ValueError) as e:
            raise MissingWeights(f"CLIP {model}/{checkpoint or pretrained}: {e}. Put the weights in the open_clip/HF "
                                 "cache, set models.clip.checkpoint=FILE, or run with models=tiny") from e
    net = net.eval().to(device)
    return net.half() if str(device).startswith("cuda") else net


def _cached_pretrained(model: str, tag: str, cache_dir: str | None) -> str:
    """The local file of an open_clip pretrained tag, found without the network (one fast, clear error)."""
    import open_clip
    from huggingface_hub import hf_hub_download

    hub = (open_clip.get_pretrained_cfg(model, tag) or {}).get("hf_hub", "")
    repo = hub.rstrip("/")
    for filename in ("open_clip_model.safetensors", "open_clip_pytorch_model.bin"):
        try:
            return hf_hub_download(repo, filename, cache_dir=cache_dir, local_files_only=True)
        except Exception:  # not cached under this name
            continue
    raise MissingWeights(f"CLIP {model}/{tag}: not in the Hugging Face cache ({repo}) and the hub cannot be reached. "
                         "Set models.clip.checkpoint=FILE, or run with models=tiny")


class CLIPEmbedder:
    """Normalized CLIP image embeddings of uint8 frames, batched, with CLIP's own preprocessing
    (resize the short side, center crop, normalize) done on the device."""

    def __init__(self, net: torch.nn.Module, device: str, batch_size: int = 32):
        import open_clip

        self.net, self.device, self.batch_size = net, device, batch_size
        self.dtype = model_dtype(device)
        size = net.visual.image_size
        self.size = size if isinstance(size, int) else size[0]
        mean = getattr(net.visual, "image_mean", None) or open_clip.OPENAI_DATASET_MEAN
        std = getattr(net.visual, "image_std", None) or open_clip.OPENAI_DATASET_STD
        self.mean = torch.tensor(mean, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, device=device).view(1, 3, 1, 1)

    def _prep(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        s = self.size / min(h, w)
        x = resize(x, (max(self.size, round(h * s)), max(self.size, round(w * s))), "bicubic").clamp(0, 1)
        top, left = (x.shape[-2] - self.size) // 2, (x.shape[-1] - self.size) // 2
        x = x[..., top:top + self.size, left:left + self.size]
        return (x - self.mean) / self.std

    @torch.no_grad()
    def __call__(self, frames: np.ndarray | list[np.ndarray]) -> torch.Tensor:
        """N×D unit vectors (float32) for N frames (an array, or a list of differently sized crops)."""
        out = []
        for s in batches(len(frames), self.batch_size):
            chunk = frames[s]
            if isinstance(chunk, np.ndarray):
                x = self._prep(to_tensor(chunk, self.device))
            else:
                x = torch.cat([self._prep(to_tensor(c[None], self.device)) for c in chunk])
            out.append(F.normalize(self.net.encode_image(x.to(self.dtype)).float(), dim=-1))
        return torch.cat(out)


def _bbox_crop(frame: np.ndarray, mask: np.ndarray, fill: int) -> np.ndarray:
    """The mask's bounding box of `frame`, pixels outside the mask set to `fill`, padded square with it."""
    ys, xs = np.nonzero(mask)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    crop = np.where(mask[y0:y1, x0:x1, None], frame[y0:y1, x0:x1], np.uint8(fill))
    h, w = crop.shape[:2]
    n = max(h, w)
    out = np.full((n, n, 3), fill, np.uint8)
    out[(n - h) // 2:(n - h) // 2 + h, (n - w) // 2:(n - w) // 2 + w] = crop
    return out


class CLIPScores(VideoMetric):
    """clip_tgt, clip_tgt_plus, clip_src, clip_src_plus, clip_tc (×100 in tables) and region_skipped."""

    columns = {
        "clip_tgt": Column(percent=True, higher_is_better=True, group="edit fidelity"),
        "clip_tgt_plus": Column(percent=True, higher_is_better=True, group="edit fidelity"),
        "clip_src": Column(percent=True, higher_is_better=True, group="source faithfulness"),
        "clip_src_plus": Column(percent=True, higher_is_better=True, group="source faithfulness"),
        "clip_tc": Column(percent=True, higher_is_better=True, group="temporal consistency"),
        "region_skipped": Column(percent=False, higher_is_better=False, group="regions"),
        **TRACKER_COLUMN,
        **seam_columns("clip_tc", percent=True, higher_is_better=True),
    }

    def __init__(self, clip: dict, tracker: dict | None = None, fill: int = 127, min_region: float = 0.001,
                 batch_size: int = 32, source_cache_mb: float | None = None, block_length: int | None = None,
                 device: str = "cpu"):
        clip = dict(clip)
        self.tiny = bool(clip.get("tiny", False))
        self.embed = CLIPEmbedder(load_clip(**clip, device=device), device, batch_size)
        self.tracker, self.fill, self.min_region, self.device = tracker, fill, min_region, device
        self.block_length = block_length  # seam diagnostic (metrics.seams) for clips longer than one block
        # source-side embeddings are the same for every method: kept for every source (a few kB each) unless bounded
        self._source = SampleCache(source_cache_mb)

    def score(self, sample: EditSample, edited: np.ndarray) -> dict[str, float]:
        e_out = self.embed(edited)
        e_src = self._source.get(sample, "src", lambda: self.embed(sample.source))
        e_tgt = self._source.get(sample, "tgt", lambda: self.embed(sample.edited_frame[None]))
        tc = (e_out[:-1] * e_out[1:]).sum(-1)  # every consecutive pair, whatever the clip's length
        scores = {
            "clip_tgt": float((e_out @ e_tgt.T).mean()),
            "clip_src": float((e_out * e_src).sum(-1).mean()),
            "clip_tc": float(tc.mean()),
            **seam_scores("clip_tc", tc.cpu().numpy(), self.block_length),
        }
        if self.tracker is not None and sample.mask is not None:
            scores.update(self._plus(sample, edited, e_tgt))
        return scores

    def _plus(self, sample: EditSample, edited: np.ndarray, e_tgt: torch.Tensor) -> dict[str, float]:
        regions = regions_for(sample, self.tracker, self.device)
        masks = regions.masks
        ok = usable_frames(masks, self.min_region)
        out = {"region_skipped": float(len(masks) - len(ok)), "region_cotracker": regions.by_cotracker}
        if len(ok) == 0:  # the region is lost in every frame: the `+` columns do not apply to this sample
            return out
        e_tgt_in = self._source.get(sample, "tgt_in", lambda: self.embed([_bbox_crop(sample.edited_frame, sample.mask, self.fill)]))
        e_out_in = self.embed([_bbox_crop(edited[t], masks[t], self.fill) for t in ok])
        e_src_out = self._source.get(sample, "src_out", lambda: self.embed(blank(sample.source, masks, self.fill)[ok]))
        e_out_out = self.embed(blank(edited, masks, self.fill)[ok])
        out["clip_tgt_plus"] = float((e_out_in @ e_tgt_in.T).mean())
        out["clip_src_plus"] = float((e_out_out * e_src_out).sum(-1).mean())
        return out
