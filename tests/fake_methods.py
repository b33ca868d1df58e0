"""Methods used only by tests, chosen by config like any other (`method._target_=tests.fake_methods.X`)."""
from __future__ import annotations

from harness.method import EditMethod, NonFiniteEdit
from harness.types import EditedVideo, EditSample


class Unstable(EditMethod):
    """Goes non-finite on every sample whose id is in `nan_ids` (all samples when empty), else returns the source."""

    uses_models = False

    def __init__(self, name: str, nan_ids: list[str] = (), device: str = "cpu"):
        super().__init__(name, device)
        self.nan_ids = set(nan_ids)

    def edit(self, sample: EditSample, seed: int) -> EditedVideo:
        if not self.nan_ids or sample.id in self.nan_ids:
            err = NonFiniteEdit("latents became NaN")
            err.nfe = 3
            raise err
        return EditedVideo(sample.source.copy(), nfe=2)


class Interrupting(EditMethod):
    """Returns the source, but raises KeyboardInterrupt (a user's Ctrl-C) on the sample named by the class
    attribute `interrupt_on` (set by the test, so the run's config is the same with and without it)."""

    uses_models = False
    interrupt_on: str | None = None

    def edit(self, sample: EditSample, seed: int) -> EditedVideo:
        if sample.id == Interrupting.interrupt_on:
            raise KeyboardInterrupt
        return EditedVideo(sample.source.copy(), nfe=0)
