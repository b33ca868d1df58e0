"""One process-wide cache, so a model is loaded once and reused across samples and multirun jobs."""
from __future__ import annotations

import json
from typing import Any, Callable

from omegaconf import DictConfig, OmegaConf

_CACHE: dict[str, Any] = {}


def cache_key(*parts: Any) -> str:
    """A stable key from configs and plain values."""

    def plain(p: Any) -> Any:
        return OmegaConf.to_container(p, resolve=True) if isinstance(p, DictConfig) else p

    return json.dumps([plain(p) for p in parts], sort_keys=True, default=str)


def cached(key: str, factory: Callable[[], Any]) -> Any:
    if key not in _CACHE:
        _CACHE[key] = factory()
    return _CACHE[key]


def instantiate_cached(cfg: DictConfig, **kwargs: Any) -> Any:
    """`hydra.utils.instantiate` once per distinct (config, kwargs) in this process."""
    from hydra.utils import instantiate

    return cached(cache_key("instantiate", cfg, kwargs), lambda: instantiate(cfg, **kwargs))


def clear() -> None:
    _CACHE.clear()
