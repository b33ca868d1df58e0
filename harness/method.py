"""What an editing method is to the harness: configured once, then `edit(sample, seed)` per sample.

Time has one definition for every method: `harness.runner.edit_one` times `edit()` on its own clock, from the
sample's frames to the output frames (conditioning, encoding, inversion, generation, decoding), CUDA
synchronized before the clock is read; that is a row's `seconds` and Table 4's. Model loading is never in it:
methods load their models in `__init__`, and whatever they would load lazily inside `edit()` (a captioner, say)
they load in `prepare()`, which `edit_one` calls before starting the clock. A method may report how its edit
splits into phases as `info["phases"]` (`Phases.report`); they are for reading, never a replacement for `seconds`.
"""
from __future__ import annotations

import abc
import time

from harness.types import EditedVideo, EditSample


class NonFiniteEdit(RuntimeError):
    """The method's computation produced NaN/inf (an unstable variant). Recorded as NaN scores, not a failure."""


class EditMethod(abc.ABC):
    """Base class of every editor. Subclasses load their models in `__init__` (once per process)."""

    #: True when the edit itself depends on the `models` config (diffusion methods); reference rows set False.
    uses_models: bool = True
    #: Which copy of real weights the edits come from (a hub commit or a local folder); None for tiny or none.
    weights_revision: str | None = None

    def __init__(self, name: str, device: str = "cpu"):
        self.name = name
        self.device = device

    def prepare(self) -> None:
        """Load what `edit()` would otherwise load lazily, so that no edit's `seconds` includes loading.

        Called by the runner before every timed edit: the first call loads, later ones must return at once
        (load through `harness.cache.cached`). Nothing to do for methods that load everything in `__init__`.
        """

    @abc.abstractmethod
    def edit(self, sample: EditSample, seed: int) -> EditedVideo:
        """Return the edited video at the source's frame count and size."""


class Phases:
    """Wall-clock seconds of an edit's phases: `lap(name)` adds the time since the previous lap (or since
    construction) to `name`, so one-line marks split an edit without reindenting it. On CUDA the device is
    synchronized at each mark, so queued work is counted in the phase that queued it."""

    def __init__(self, device: object = "cpu"):
        self.cuda = str(device).startswith("cuda")
        self.seconds: dict[str, float] = {}
        self._last = self._now()

    def _now(self) -> float:
        if self.cuda:
            import torch

            torch.cuda.synchronize()
        return time.perf_counter()

    def lap(self, name: str) -> None:
        now = self._now()
        self.seconds[name] = self.seconds.get(name, 0.0) + now - self._last
        self._last = now

    def report(self) -> list[list]:
        """`info["phases"]`: [[name, seconds], ...] in the order the phases began (plain JSON, as rows keep it;
        `dict(info["phases"])` reads it back)."""
        return [[name, s] for name, s in self.seconds.items()]
