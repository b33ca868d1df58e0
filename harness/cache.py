"""One process-wide cache, so a model is loaded once and reused across samples and multirun jobs."""
from __future__ import annotations

import json
from collections import OrderedDict
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
    work.clear()


class WorkCache:
    """Intermediate results that several methods of one process compute identically (e.g. Videoshop's generated
    latents, which `videoshop_no_rescale` only rescales differently), kept on the CPU up to `max_mb` and dropped
    oldest first; `max_mb = 0` shares nothing. A key must name everything the result depends on."""

    def __init__(self, max_mb: float = 0.0):
        self.max_bytes = int(max_mb * 2 ** 20)
        self.items: OrderedDict[str, tuple[Any, int]] = OrderedDict()
        self.used = 0

    def resize(self, max_mb: float) -> None:
        self.max_bytes = int(max_mb * 2 ** 20)
        self._evict()

    def clear(self) -> None:
        self.items.clear()
        self.used = 0

    def get(self, key: str) -> Any | None:
        if key not in self.items:
            return None
        self.items.move_to_end(key)
        return self.items[key][0]

    def put(self, key: str, value: Any, nbytes: int) -> None:
        if nbytes > self.max_bytes or key in self.items:
            return
        self.items[key] = (value, nbytes)
        self.used += nbytes
        self._evict()

    def _evict(self) -> None:
        while self.used > self.max_bytes and self.items:
            self.used -= self.items.popitem(last=False)[1][1]


#: the process's shared work; `run.main` sizes it from the config's `share_work_mb`
work = WorkCache()
