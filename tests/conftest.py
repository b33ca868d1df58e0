"""Shared fixtures: the sample track built once per test session, and Hydra configs composed like run.py's."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def tiny_method(name: str, *overrides: str, **kw):
    """conf/method/<name>.yaml instantiated as run.py would, with tiny models on the CPU; `kw` replace its entries."""
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"method={name}", "models=tiny", "device=cpu", *overrides])
    return instantiate(cfg.method, **kw)


def first_sample(sample_track, frames: int, **fields):
    """The sample track's first sample cut to its first `frames` frames, with `fields` replaced."""
    import dataclasses

    full = sample_track.load(sample_track.ids()[0])
    return dataclasses.replace(full, source=full.source[:frames], **fields)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    """A data_dir holding the built sample track (built once per session)."""
    from data.sample_track import build

    d = tmp_path_factory.mktemp("data")
    build(d / "sample")
    return d


@pytest.fixture(scope="session")
def sample_track(data_dir):
    from data.sample_track import SampleTrack

    return SampleTrack(data_dir=data_dir)


@pytest.fixture
def compose(tmp_path, data_dir):
    """compose(*overrides) -> the config run.py would get, with results in a fresh tmp dir; `threads=null`, so that
    the tests' own thread settings (`one_thread`) hold, and `share_work_mb=0`, unless a test overrides them."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    import run  # registers the repo_root resolver  # noqa: F401

    def _compose(*overrides: str, results_dir: Path | None = None):
        with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
            return hydra_compose(
                config_name="config",
                overrides=[f"results_dir={results_dir or tmp_path / 'results'}", f"data_dir={data_dir}", "threads=null", "share_work_mb=0",
                           *overrides],
            )

    return _compose


@pytest.fixture(autouse=True)
def no_shared_work():
    """Every test starts with nothing shared between methods (harness.cache.work) and sharing off, so that an edit
    computes what it claims to; tests of sharing turn it on through `share_work_mb`."""
    from harness import cache

    cache.work.clear()
    cache.work.resize(0)
    yield
    cache.work.clear()
    cache.work.resize(0)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run fastest single-threaded; two threads on a shared 2-core machine oversubscribe badly.
    A module opts in with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
