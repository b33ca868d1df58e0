"""Reference rows that bracket every real method: do nothing, freeze the edit, or return the truth."""
from __future__ import annotations

import numpy as np

from harness.method import EditMethod
from harness.types import EditedVideo, EditSample, SampleError


class Identity(EditMethod):
    """Returns the source video unchanged: perfect source faithfulness, no edit."""

    uses_models = False

    def edit(self, sample: EditSample, seed: int) -> EditedVideo:
        return EditedVideo(sample.source.copy(), nfe=0)


class Static(EditMethod):
    """Repeats the edited first frame: the edit, with no motion at all."""

    uses_models = False

    def edit(self, sample: EditSample, seed: int) -> EditedVideo:
        return EditedVideo(np.repeat(sample.edited_frame[None], sample.num_frames, axis=0), nfe=0)


class Oracle(EditMethod):
    """Returns the ground-truth edited video, where the dataset knows it (the sample track)."""

    uses_models = False

    def edit(self, sample: EditSample, seed: int) -> EditedVideo:
        if sample.target_video is None:
            raise SampleError(sample.id, "truth/video.mkv", "method=oracle needs a ground-truth edited video, and this dataset has none")
        return EditedVideo(sample.target_video.copy(), nfe=0)
