"""Methods used only by tests, chosen by config like any other (`method._target_=tests.fake_methods.X`)."""
from __future__ import annotations

from harness.method import EditMethod, NonFiniteEdit
from harness.metric import Column, VideoMetric
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


class Reporting(EditMethod):
    """Returns the source and reports an `info` mixing plain values with an array (which rows leave out);
    on the samples named in `allocate_on` it first holds `allocate_mb` of touched memory."""

    uses_models = False

    def __init__(self, name: str, allocate_on: list[str] = (), allocate_mb: int = 0, device: str = "cpu"):
        super().__init__(name, device)
        self.allocate_on, self.allocate_mb = set(allocate_on), allocate_mb

    def edit(self, sample: EditSample, seed: int) -> EditedVideo:
        import numpy as np

        if sample.id in self.allocate_on:
            block = np.ones(self.allocate_mb * 2**20, dtype=np.uint8)  # ones: the pages are touched
            assert block.sum() == block.size
            del block
        info = {"prompt": f"a photo of {sample.id}", "size": [8, 16], "nfe_split": {"inv": 1, "gen": 2},
                "scale": np.float32(0.5), "latents": np.zeros(3)}
        return EditedVideo(sample.source.copy(), nfe=3, info=info)


class Logging(EditMethod):
    """Returns the source after `sleep_s`, appending "<sample id> <pid>" to `log` for each edit it makes (so a
    test can count how often each sample was edited, across processes)."""

    uses_models = False

    def __init__(self, name: str, log: str, sleep_s: float = 0.0, device: str = "cpu"):
        super().__init__(name, device)
        self.log, self.sleep_s = log, sleep_s

    def edit(self, sample: EditSample, seed: int) -> EditedVideo:
        import os
        import time

        time.sleep(self.sleep_s)
        with open(self.log, "a") as f:  # one short append per edit: atomic under O_APPEND
            f.write(f"{sample.id} {os.getpid()}\n")
        return EditedVideo(sample.source.copy(), nfe=0)


class PartialMetric(VideoMetric):
    """`partial` = the mean pixel value, left out (not applicable) for the samples in `skip_ids`."""

    columns = {"partial": Column()}

    def __init__(self, skip_ids: list[str] = ()):
        self.skip_ids = set(skip_ids)

    def score(self, sample: EditSample, edited) -> dict[str, float]:
        return {} if sample.id in self.skip_ids else {"partial": float(edited.mean())}
