"""Where real weights come from: a local copy (`models.root`) or the Hugging Face cache / hub at a pinned revision.

Every real model is then loaded by its library's own `from_pretrained` on the folder returned here, so
tests can save tiny models and load them back through exactly this path. Nothing here ever falls back to
random weights: a model that cannot be found is one clear `MissingWeights` error, raised within seconds
(the hub is probed once with a short timeout instead of waiting out the client's retries).
"""
from __future__ import annotations

import os
import socket
from pathlib import Path
from urllib.parse import urlparse


class MissingWeights(RuntimeError):
    pass


def hub_reachable(url: str | None = None, timeout: float = 3.0) -> bool:
    """Whether a hub answers within `timeout` s: the Hugging Face hub (HF_ENDPOINT; never with HF_HUB_OFFLINE
    set), or the host of `url` (e.g. a torchvision weights URL)."""
    if url is None:
        if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
            return False
        url = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    host = urlparse(url).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


#: Files that mark a folder as a model: a diffusers pipeline (model_index.json) or a single model (config.json).
MODEL_MARKERS = ("model_index.json", "config.json")


def local_model_dir(repo_id: str, revision: str | None = None, root: str | os.PathLike | None = None,
                    allow_patterns: list[str] | None = None, markers: tuple[str, ...] = MODEL_MARKERS) -> Path:
    """A local folder with the model's files.

    With `root`: `root/<repo name>` (or `root/<owner>/<repo name>`, or `root` itself if it is the model), the
    first of them holding one of `markers` (pass `("model_index.json",)` for a diffusers pipeline).
    Without: the hub cache at `revision` (HF_HOME / HF_HUB_CACHE honoured), downloading it if the hub
    can be reached and HF_HUB_OFFLINE is not set. `snapshot_id(folder)` says which copy it is.
    """
    if root is not None:
        root = Path(root).expanduser()
        for cand in (root / repo_id.split("/")[-1], root / repo_id, root):
            if any((cand / m).is_file() for m in markers):
                return cand
        raise MissingWeights(
            f"{repo_id}: not found under models.root={root} (looked for {' or '.join(markers)} in "
            f"{root / repo_id.split('/')[-1]}). Put the model's files there, or run with models=tiny for offline "
            "random-weight smoke tests."
        )
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id, revision=revision, local_files_only=True, allow_patterns=allow_patterns))
    except (LocalEntryNotFoundError, FileNotFoundError, OSError):
        pass
    if not hub_reachable():
        raise MissingWeights(
            f"{repo_id}@{revision or 'main'}: not in the Hugging Face cache and the hub cannot be reached. "
            "Download it where the hub is reachable and set models.root=DIR (a folder holding "
            f"{repo_id.split('/')[-1]}/), or run with models=tiny for offline random-weight smoke tests."
        )
    return Path(snapshot_download(repo_id, revision=revision, allow_patterns=allow_patterns))


def snapshot_id(folder: str | os.PathLike) -> str:
    """Which copy of a model `folder` is, for run records: the commit SHA when it is a Hugging Face cache
    snapshot (`.../models--owner--name/snapshots/<sha>`), else the folder's absolute path (a `models.root` copy)."""
    folder = Path(folder).expanduser().absolute()
    if folder.parent.name == "snapshots" and folder.parent.parent.name.startswith("models--"):
        return folder.name
    return str(folder)
