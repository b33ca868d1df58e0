"""Work shared across the methods of one process: a Table 5 sweep computes Videoshop's generated latents once for
`videoshop` and `videoshop_no_rescale` (which only rescales them differently), with results bit for bit those of
runs done separately, and fewer UNet calls."""
from __future__ import annotations

import numpy as np
import pytest

import run
from harness import cache
from harness.cache import WorkCache
from harness.results import RunDir

pytestmark = pytest.mark.usefixtures("one_thread")

SWEEP = ("videoshop", "videoshop_no_rescale", "videoshop_no_norm")
COMMON = ("models=tiny", "metrics=basic", "dataset.limit=2", "device=cpu")


def _run(compose, results, method, share_mb):
    run.main(compose(f"method={method}", *COMMON, f"share_work_mb={share_mb}", results_dir=results))
    return RunDir(results / "sample" / "tiny" / method)


@pytest.mark.slow
def test_a_table5_sweep_shares_the_generation_and_equals_separate_runs(compose, tmp_path):
    cache.work.clear()
    shared = {m: _run(compose, tmp_path / "shared", m, 64) for m in SWEEP}  # one process, in sweep order
    separate = {}
    for m in SWEEP:  # each as if alone: nothing shared
        cache.work.clear()
        separate[m] = _run(compose, tmp_path / "separate", m, 0)
    for m in SWEEP:
        rows_shared, rows_separate = shared[m].rows(), separate[m].rows()
        assert [r.sample_id for r in rows_shared] == [r.sample_id for r in rows_separate] and len(rows_shared) == 2
        for a, b in zip(rows_shared, rows_separate):
            assert a.status == b.status == "ok"
            np.testing.assert_array_equal(shared[m].load_video(a.sample_id), separate[m].load_video(b.sample_id))
            assert a.scores == b.scores
            reuses = m == "videoshop_no_rescale"  # the only variant equal to videoshop up to the rescaling
            assert a.info.get("reused_generation_blocks", 0) == (1 if reuses else 0), m
            assert b.costs.nfe == 26 and a.costs.nfe == (0 if reuses else 26), m
    nfe = lambda runs: sum(r.costs.nfe for d in runs.values() for r in d.rows())
    assert nfe(shared) == nfe(separate) - 2 * 26


def test_rescaling_is_the_only_difference_the_shared_latents_see(compose, tmp_path):
    """With a different seed or setting the key differs: nothing is reused."""
    from hydra.utils import instantiate

    cfg = compose("method=videoshop", *COMMON)
    a = instantiate(cfg.method)
    b = instantiate(compose("method=videoshop_no_rescale", *COMMON).method)
    c = instantiate(compose("method=videoshop", *COMMON, "method.guidance=2").method)
    src, frame = np.zeros((14, 8, 8, 3), np.uint8), np.zeros((8, 8, 3), np.uint8)
    assert a.generation_key(src, frame, 1) == b.generation_key(src, frame, 1)
    assert a.generation_key(src, frame, 1) != a.generation_key(src, frame, 2)
    assert a.generation_key(src, frame, 1) != c.generation_key(src, frame, 1)
    assert a.generation_key(src, frame, 1) != a.generation_key(src + 1, frame, 1)


def test_work_cache_keeps_the_newest_within_its_size():
    w = WorkCache(max_mb=3 / 2 ** 20)  # 3 bytes
    w.put("a", "A", 1), w.put("b", "B", 1), w.put("c", "C", 1)
    assert w.get("a") == "A"  # a is now the newest
    w.put("d", "D", 1)
    assert w.get("b") is None and [w.get(k) for k in "acd"] == ["A", "C", "D"] and w.used == 3
    w.put("big", "X", 4)  # larger than the whole cache: not kept, nothing evicted
    assert w.get("big") is None and w.used == 3
    w.resize(0)
    assert w.used == 0 and w.get("a") is None
