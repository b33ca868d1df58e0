"""A method and a set metric for tests/test_cluster.py, chosen by config (`tests.cluster_fakes.X`)."""
from __future__ import annotations

import os

import numpy as np

from harness.method import EditMethod
from harness.metric import Column, SetMetric
from harness.types import EditedVideo, EditSample


class Dying(EditMethod):
    """Returns the source. When the environment sets VSB_TEST_DIE_AFTER=k, the process dies (`os._exit`, like a
    preempted or killed job) on its (k+1)-th edit; VSB_TEST_EDIT_LOG names a file that gets one line per edit.
    Both come from the environment, so the run's config is the same with and without them."""

    uses_models = False
    edits = 0

    def edit(self, sample: EditSample, seed: int) -> EditedVideo:
        die_after = os.environ.get("VSB_TEST_DIE_AFTER")
        if die_after is not None and Dying.edits >= int(die_after):
            os._exit(3)
        Dying.edits += 1
        if os.environ.get("VSB_TEST_EDIT_LOG"):
            with open(os.environ["VSB_TEST_EDIT_LOG"], "a") as f:
                f.write(f"{sample.id} {os.getpid()}\n")
        return EditedVideo(sample.source.copy(), nfe=1)


class ColourSpread(SetMetric):
    """A cheap set-level metric: how far the edited videos' mean colours spread over the set (it changes with
    every video of the set, so a summary over part of the set shows)."""

    columns = {"colour_spread": Column(group="set")}

    def features(self, sample: EditSample, edited: np.ndarray) -> dict[str, np.ndarray]:
        return {"mean": edited.reshape(-1, 3).mean(0)}

    def compute(self, features: list[dict[str, np.ndarray]]) -> dict[str, float]:
        return {"colour_spread": float(np.linalg.norm(np.std([f["mean"] for f in features], axis=0)))}
