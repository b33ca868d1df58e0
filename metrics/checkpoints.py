"""Local weight files of the metric backbones: read as tensors only (safetensors, or torch with
weights_only=True, which refuses pickled code), and fingerprinted by sha256."""
from __future__ import annotations

import hashlib
from pathlib import Path

import torch


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from a `.safetensors` file or a torch file loaded with weights_only=True, on the CPU."""
    if str(path).endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(str(path))
    return torch.load(path, map_location="cpu", weights_only=True)


def sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
