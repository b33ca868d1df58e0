"""What an editing method is to the harness: configured once, then `edit(sample, seed)` per sample."""
from __future__ import annotations

import abc

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

    @abc.abstractmethod
    def edit(self, sample: EditSample, seed: int) -> EditedVideo:
        """Return the edited video at the source's frame count and size."""
