"""CPU-side work of a run done beside the GPU's: the next sample read while this one is edited, the last one's video
written while the next is edited (`overlap` in conf/config.yaml).

Only work that uses no GPU runs in the background (decoding and resizing the inputs, encoding the output video,
writing files), so no kernel of it is queued behind or between an edit's, and an edit's `seconds` still times the
edit alone. One task at a time per worker keeps memory bounded: at most one sample read ahead and one written behind.
"""
from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable

from harness.cpu import usable_cores

# Below this many usable cores the background work would take CPU time from the edit it runs beside (and from its
# measured seconds), so `overlap: auto` leaves it off.
MIN_CORES = 4


def use_overlap(setting: Any, device: str) -> bool:
    """`overlap` resolved: auto = on for a CUDA device on a machine with at least `MIN_CORES` usable cores."""
    if setting in (None, "auto"):
        return device.startswith("cuda") and usable_cores() >= MIN_CORES
    if isinstance(setting, bool):
        return setting
    raise ValueError(f"overlap must be auto, true or false, not {setting!r}")


class OneSlot:
    """A background thread that runs one task at a time: `submit` first waits for the task before it, and re-raises
    what that task raised, so nothing it does is lost or reordered."""

    def __init__(self, name: str):
        self._pool = ThreadPoolExecutor(1, thread_name_prefix=name)
        self._last: Future | None = None

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        self.wait()
        self._last = self._pool.submit(fn, *args)
        return self._last

    def wait(self) -> None:
        """Block until the task in hand is done; re-raise its exception."""
        last, self._last = self._last, None
        if last is not None:
            last.result()

    def close(self) -> None:
        """Finish the task in hand, then stop the thread."""
        try:
            self.wait()
        finally:
            self._pool.shutdown(wait=True)
