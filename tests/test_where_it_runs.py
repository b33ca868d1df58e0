"""Where a job runs changes no result: torch's CPU threads come from the cores really free (affinity, a container's
quota, the load average), and the metric suite's identity does not depend on the device."""
from __future__ import annotations

import pytest
import torch

import run
from harness import cpu


@pytest.mark.parametrize("usable, load, expected", [(2, 0.1, 2), (2, 0.6, 1), (2, 1.3, 1), (2, 7.0, 1), (16, 3.2, 13),
                                                     (16, 0.0, 16)])
def test_free_cores_subtracts_the_load_average(usable, load, expected):
    assert cpu.free_cores(usable, load) == expected


@pytest.mark.parametrize("text, cap", [("150000 100000\n", 1), ("400000 100000\n", 4), ("max 100000\n", None),
                                       ("garbage", None)])
def test_usable_cores_honours_a_container_quota(tmp_path, monkeypatch, text, cap):
    monkeypatch.setattr(cpu, "CGROUP_CPU_MAX", tmp_path / "absent")
    affinity = cpu.usable_cores()
    (tmp_path / "cpu.max").write_text(text)
    monkeypatch.setattr(cpu, "CGROUP_CPU_MAX", tmp_path / "cpu.max")
    assert cpu.usable_cores() == (affinity if cap is None else min(affinity, cap))


@pytest.fixture
def threads_restored():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def test_auto_sets_the_free_cores_once_and_respects_omp_num_threads(monkeypatch, threads_restored):
    cpu.auto_threads.cache_clear()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(cpu.os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    monkeypatch.setattr(cpu, "usable_cores", lambda: 1)
    assert cpu.set_threads("auto") == 1
    monkeypatch.setattr(cpu, "usable_cores", lambda: 2)
    assert cpu.set_threads("auto") == 1  # chosen once per process: a later job does not count this one's own load
    cpu.auto_threads.cache_clear()
    assert cpu.set_threads(2) == 2 and cpu.set_threads(None) == 2
    torch.set_num_threads(1)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setattr(cpu, "usable_cores", lambda: 2)
    assert cpu.set_threads("auto") == 1  # the user's OMP_NUM_THREADS wins over auto
    cpu.auto_threads.cache_clear()


def test_run_applies_the_threads_setting(compose, monkeypatch, threads_restored):
    cpu.auto_threads.cache_clear()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(cpu, "usable_cores", lambda: 2)
    monkeypatch.setattr(cpu.os, "getloadavg", lambda: (1.4, 1.0, 1.0))
    torch.set_num_threads(2)
    run.main(compose("method=identity", "metrics=basic", "dataset.limit=1", "threads=auto"))
    assert torch.get_num_threads() == 1
    run.main(compose("method=identity", "metrics=basic", "dataset.limit=1", "threads=2"))
    assert torch.get_num_threads() == 2
    assert run.compose().threads == "auto"  # what a newcomer gets
    cpu.auto_threads.cache_clear()


def test_the_metric_suite_does_not_depend_on_the_device(compose):
    from harness.runner import suite_id

    assert suite_id(compose("metrics=paper", "device=cpu")) == suite_id(compose("metrics=paper", "device=cuda"))
    assert suite_id(compose("metrics=paper")) != suite_id(compose("metrics=paper", "metrics.ssim.sigma=1.0"))
