"""One definition of an edit's time for every method: the runner's clock around the whole edit, loading excluded.

The tests run every registered method (conf/method/*.yaml) with tiny models through `run.main` on one sample, on
a virtual clock: `time.perf_counter` is the real clock plus an offset that known delays advance. A delay in every
VAE encode and decode call (or, for the reference rows, in the edit itself) must appear in the row's `seconds`;
a delay in every model load (any `harness.cache.cached` miss, the way every model is loaded) must not, not even on
the first sample of a process with nothing loaded; the phases a method reports add up to at most `seconds`.
"""
from __future__ import annotations

import dataclasses
import time

import pytest
import torch
from diffusers import AutoencoderKL, AutoencoderKLTemporalDecoder

import harness.cache
import run
from data.folder import FolderDataset
from harness.method import EditMethod, Phases
from harness.results import RunDir
from harness.runner import edit_one
from harness.types import EditedVideo
from tests.conftest import REPO

METHODS = sorted(p.stem for p in (REPO / "conf" / "method").glob("*.yaml"))
REFERENCE_ROWS = {"identity", "static", "oracle"}
LOAD_S = 10_000.0  # every model load
DECODE_S = 100.0  # every VAE decode call
ENCODE_S = 10.0  # every VAE encode call
EDIT_S = 50.0  # every edit of a reference row (they have no VAE)


class Clock:
    """The real `perf_counter` plus an offset that `advance` moves forward: a sleep that takes no time."""

    def __init__(self):
        self.real, self.offset = time.perf_counter, 0.0

    def __call__(self) -> float:
        return self.real() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds


class LoadingCache(dict):
    """The process-wide model cache, empty, where storing a freshly loaded model advances the clock by LOAD_S."""

    def __init__(self, clock: Clock):
        super().__init__()
        self.clock, self.loads = clock, []

    def __setitem__(self, key, value):
        self.clock.advance(LOAD_S)
        self.loads.append(key)
        super().__setitem__(key, value)


@pytest.fixture
def clock(monkeypatch):
    c = Clock()
    monkeypatch.setattr(time, "perf_counter", c)
    return c


def _delay(monkeypatch, clock: Clock, cls: type, name: str, seconds: float, calls: list) -> None:
    """Make every call of `cls.name` take `seconds` more, and append `name` to `calls` for each."""
    original = getattr(cls, name)

    def slow(*args, **kwargs):
        calls.append(name)
        clock.advance(seconds)
        return original(*args, **kwargs)

    monkeypatch.setattr(cls, name, slow)


@pytest.mark.parametrize("name", METHODS)
def test_seconds_is_the_whole_edit_and_never_model_loading(name, compose, tmp_path, clock, monkeypatch):
    cache = LoadingCache(clock)
    monkeypatch.setattr(harness.cache, "_CACHE", cache)  # nothing loaded yet: the first sample loads everything
    load = FolderDataset.load  # no dataset prompts: with the caption fallback AnyV2V and TokenFlow need the captioner
    monkeypatch.setattr(FolderDataset, "load", lambda self, sid: dataclasses.replace(
        load(self, sid), source_prompt=None, target_prompt=None))
    cfg = compose(f"method={name}", "dataset.limit=1", "threads=1", "metrics=basic", "device=cpu",
                  "prompts.fallback=caption_edited")
    calls = []
    if name in REFERENCE_ROWS:
        from hydra.utils import get_class

        _delay(monkeypatch, clock, get_class(cfg.method._target_), "edit", EDIT_S, calls)
    else:
        for vae in (AutoencoderKL, AutoencoderKLTemporalDecoder):
            _delay(monkeypatch, clock, vae, "encode", ENCODE_S, calls)
            _delay(monkeypatch, clock, vae, "decode", DECODE_S, calls)
    n = torch.get_num_threads()
    try:
        run.main(cfg)
    finally:
        torch.set_num_threads(n)
    (row,) = RunDir(tmp_path / "results" / "sample" / "tiny" / name).rows()
    assert row.status == ("nan" if name == "videoshop_no_threshold" else "ok"), row.error
    delays = {"edit": EDIT_S, "encode": ENCODE_S, "decode": DECODE_S}
    injected = sum(delays[c] for c in calls)
    assert calls and injected <= row.costs.seconds < LOAD_S  # every delay of the edit is in, no load is
    if name not in REFERENCE_ROWS:
        assert any("svd" in k or "components" in k for k in cache.loads)  # its models were loaded in this test
    if name in ("anyv2v", "tokenflow"):
        assert row.info["prompt_origin"] == "caption_edited" and any("captioner" in k for k in cache.loads)
    phases = dict(row.info.get("phases", []))
    assert sum(phases.values()) <= row.costs.seconds
    if "decode" in calls:
        assert phases["decode"] >= DECODE_S * calls.count("decode")
        assert sum(phases.values()) >= injected


class _Lazy(EditMethod):
    """Loads a model (one clock advance of LOAD_S) the first time it is prepared; edits take EDIT_S."""

    uses_models = False

    def __init__(self, clock: Clock):
        super().__init__("lazy")
        self.clock, self.loaded = clock, False

    def prepare(self) -> None:
        if not self.loaded:
            self.clock.advance(LOAD_S)
            self.loaded = True

    def edit(self, sample, seed):
        assert self.loaded
        phases = Phases()
        self.clock.advance(EDIT_S)
        phases.lap("generate")
        return EditedVideo(sample.source.copy(), nfe=0, info={"phases": phases.report()})


def test_prepare_runs_off_the_clock_before_every_edit(clock, sample_track):
    m, sample = _Lazy(clock), sample_track.load(sample_track.ids()[0])
    for _ in range(2):
        out, costs, _ = edit_one(m, sample, 0, "cpu")
        [(name, seconds)] = out.info["phases"]
        assert name == "generate" and EDIT_S <= seconds <= costs.seconds < EDIT_S + 60
    assert not hasattr(out, "seconds")  # the runner's clock is the only definition


def test_phases_add_up_laps_under_one_name(clock):
    p = Phases()
    for name, seconds in (("condition", 1.0), ("invert", 2.0), ("condition", 4.0)):
        clock.advance(seconds)
        p.lap(name)
    (first, condition), (second, invert) = p.report()
    assert (first, second) == ("condition", "invert")
    assert invert == pytest.approx(2.0, abs=0.05) and condition == pytest.approx(5.0, abs=0.05)
