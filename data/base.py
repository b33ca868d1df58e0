"""What a dataset is to the harness: a list of sample ids, each loaded lazily (so one bad sample fails alone)."""
from __future__ import annotations

import abc
from pathlib import Path

from harness.names import check_name
from harness.types import EditSample


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


class EditDataset(abc.ABC):
    def __init__(self, name: str, shard: int = 0, num_shards: int = 1, limit: int | None = None):
        for key, v in (("dataset.shard", shard), ("dataset.num_shards", num_shards)):
            if not _is_int(v):
                raise ValueError(f"{key} must be an integer, got {type(v).__name__} {v!r}")
        if num_shards < 1:
            raise ValueError(f"dataset.num_shards must be at least 1, got {num_shards}")
        if not 0 <= shard < num_shards:
            raise ValueError(f"dataset.shard must be in [0, {num_shards}), got {shard}")
        if limit is not None and (not _is_int(limit) or limit <= 0):
            raise ValueError(f"dataset.limit must be a positive integer or null (all samples), got {limit!r}")
        self.name = check_name(name, "dataset.name")  # it names the dataset's folders under data_dir and results_dir
        self.shard, self.num_shards, self.limit = shard, num_shards, limit

    @abc.abstractmethod
    def all_ids(self) -> list[str]:
        """Every sample id, in a fixed order."""

    @abc.abstractmethod
    def load(self, sample_id: str) -> EditSample:
        """Read one sample; raises `SampleError` naming the sample and the file on bad input."""

    def ids(self) -> list[str]:
        """This shard's ids: every `num_shards`-th id of the first `limit` ids, starting at `shard`."""
        ids = self.all_ids()[: self.limit] if self.limit else self.all_ids()
        return ids[self.shard :: self.num_shards]

    def build(self, data_dir: str | Path) -> dict | None:
        """Prepare the dataset into `data_dir` (`stage=build`); datasets read from disk need nothing.

        Builders return a summary: `n_built`, `n_skipped` (already built), `n_failed` and `failed` (id -> error).
        """
