"""Sharded sweeps through Hydra's cluster launchers (submitit, Ray) equal a single-process run; a killed shard's
samples are the only ones a rerun edits; `stage=summarize` recomputes a run's summary. Each launcher runs as a
subprocess of `python run.py -m ...`; the launchers come with `pip install -e ".[cluster]"` (README, Running on a
cluster) and their tests are skipped, saying so, without them."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose as hydra_compose
from hydra import initialize_config_dir

import run
from harness.results import RunDir

REPO = Path(__file__).resolve().parents[1]
# A method that returns the source (and dies on demand), SSIM and GT scores, and a set-level metric.
CONFIG = ("method=identity", "method._target_=tests.cluster_fakes.Dying", "tag=sharded", "metrics=basic",
          "+metrics.spread._target_=tests.cluster_fakes.ColourSpread", "dataset.limit=4")
SHARDS = ("dataset.num_shards=2", "dataset.shard=range(2)")
JOB_FIELDS = {"finished", "skipped", "seconds_per_edit", "peak_mem_mb"}  # timings and the writing job's own counts


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a parent package is missing
        return False


needs_submitit = pytest.mark.skipif(not _installed("hydra_plugins.hydra_submitit_launcher"),
                                    reason='hydra-submitit-launcher is not installed (pip install -e ".[cluster]")')
needs_ray = pytest.mark.skipif(not (_installed("ray") and _installed("hydra_plugins.hydra_ray_launcher")),
                               reason='ray / hydra-ray-launcher are not installed (pip install -e ".[cluster]")')


def _compose(results: Path, data_dir: Path, *overrides: str):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=[f"results_dir={results}", f"data_dir={data_dir}",
                                                              "threads=1", *overrides])


def _sweep(tmp_path: Path, data_dir: Path, results: Path, *overrides: str, env: dict | None = None):
    """`python run.py -m` with the test's config, sweep folder inside tmp_path."""
    cmd = [sys.executable, str(REPO / "run.py"), "-m", f"results_dir={results}", f"data_dir={data_dir}", "threads=1",
           f"hydra.sweep.dir={tmp_path / 'sweep'}", *CONFIG, *overrides]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def _run(results: Path) -> RunDir:
    return RunDir(results / "sample" / "tiny" / "sharded")


def _summary(run_dir: RunDir) -> dict:
    return json.loads((run_dir.root / "summary.json").read_text())


def _comparable(summary: dict) -> dict:
    return {k: v for k, v in summary.items() if k not in JOB_FIELDS}


def _assert_equal_runs(run_dir: RunDir, reference: RunDir) -> None:
    rows = {r.sample_id: (r.status, r.scores) for r in run_dir.rows()}
    assert rows == {r.sample_id: (r.status, r.scores) for r in reference.rows()}
    assert len(rows) == 4 and {s for s, _ in rows.values()} == {"ok"}
    assert _comparable(_summary(run_dir)) == _comparable(_summary(reference))


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data_dir) -> RunDir:
    """The config run in this process, unsharded."""
    results = tmp_path_factory.mktemp("single") / "results"
    summary = run.main(_compose(results, data_dir, *CONFIG))
    assert summary["n_ok"] == 4 and summary["scores"]["colour_spread"] > 0
    return _run(results)


@needs_submitit
@pytest.mark.slow
def test_submitit_local_shards_equal_a_single_process_run(tmp_path, data_dir, reference):
    results = tmp_path / "results"
    done = _sweep(tmp_path, data_dir, results, "hydra/launcher=submitit_local", *SHARDS)
    assert done.returncode == 0, done.stderr[-3000:]
    _assert_equal_runs(_run(results), reference)
    info = _run(results).info()  # both shards started at once: each start is in the history of one run.json
    assert [h["stage"] for h in info["history"]] == ["edit", "edit"]


@needs_ray
@pytest.mark.slow
def test_ray_shards_equal_a_single_process_run(tmp_path, data_dir, reference):
    results = tmp_path / "results"
    done = _sweep(tmp_path, data_dir, results, "hydra/launcher=ray", "+hydra.launcher.ray.init.num_cpus=2",
                  "+hydra.launcher.ray.init.include_dashboard=false", *SHARDS)
    assert done.returncode == 0, done.stderr[-3000:]
    _assert_equal_runs(_run(results), reference)
    assert [h["stage"] for h in _run(results).info()["history"]] == ["edit", "edit"]


@needs_submitit
@pytest.mark.slow
def test_a_killed_shard_is_finished_by_the_rerun_and_nothing_else_is_edited(tmp_path, data_dir, reference):
    results, log = tmp_path / "results", tmp_path / "edits.log"
    env = {"VSB_TEST_EDIT_LOG": str(log)}
    killed = _sweep(tmp_path, data_dir, results, "hydra/launcher=submitit_local", *SHARDS,
                    env={**env, "VSB_TEST_DIE_AFTER": "1"})  # every shard dies on its second sample
    assert killed.returncode != 0
    first = [line.split()[0] for line in log.read_text().splitlines()]
    assert len(first) == 2 and len({r.sample_id for r in _run(results).rows()}) == 2
    kept = {p: p.stat().st_mtime_ns for p in _run(results).root.glob("samples/*/*") if p.parent.name in first}

    rerun = _sweep(tmp_path, data_dir, results, "hydra/launcher=submitit_local", *SHARDS, env=env)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    second = [line.split()[0] for line in log.read_text().splitlines()][2:]
    assert sorted(first + second) == sorted(r.sample_id for r in reference.rows())  # each sample edited once
    assert {p: p.stat().st_mtime_ns for p in kept} == kept
    _assert_equal_runs(_run(results), reference)


def test_summarize_recomputes_a_deleted_or_stale_summary(data_dir, reference):
    written = _summary(reference)
    rows = {p: p.read_bytes() for p in reference.root.rglob("*") if p.is_file() and p.name != "summary.json"}
    (reference.root / "summary.json").unlink()
    damaged = reference.root.parents[2] / "other" / "tiny" / "x"
    damaged.mkdir(parents=True)
    (damaged / "run.json").write_text("{not json")  # logged and left alone; the other runs are summarized
    out = run.main(_compose(reference.root.parents[2], data_dir, "stage=summarize"))
    assert list(out) == [str(reference.root)] and not (damaged / "summary.json").exists()
    assert _comparable(_summary(reference)) == _comparable(written)

    (reference.root / "summary.json").write_text(json.dumps({**written, "n": 1, "scores": {}}))  # stale
    run.main(_compose(reference.root.parents[2], data_dir, "stage=summarize"))
    assert _comparable(_summary(reference)) == _comparable(written)
    assert {p: p.read_bytes() for p in rows} == rows  # rows, features, videos and run.json untouched
    assert sorted(p for p in reference.root.rglob("*") if p.is_file() and p.name != "summary.json") == sorted(rows)


@needs_submitit
@needs_ray
def test_launcher_presets_ask_for_one_gpu_per_job_and_requeue():
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        slurm = hydra_compose(config_name="config", overrides=["hydra/launcher=slurm"], return_hydra_config=True)
        ray = hydra_compose(config_name="config", overrides=["hydra/launcher=ray_cluster"], return_hydra_config=True)
    launcher = slurm.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher") and launcher.gpus_per_node == launcher.tasks_per_node == 1
    assert launcher.max_num_timeout > 0 and launcher.additional_parameters.requeue is True
    assert "export HF_HUB_OFFLINE=1" in launcher.setup
    assert ray.hydra.launcher._target_.endswith("RayLauncher") and ray.hydra.launcher.ray.remote.num_gpus == 1
