"""Fig. 3's linearity analysis: the cosine matrix against closed forms, and the command's outputs."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from videoshop.linearity import analyze, cosine_matrix, summary


def test_straight_trajectory_is_perfectly_linear():
    x0, d = torch.randn(3, 4, 5), torch.randn(3, 4, 5)
    states = [x0 + s * d for s in (10.0, 3.0, 1.0, 0.2)] + [x0]
    m = cosine_matrix(states)
    np.testing.assert_allclose(m, np.ones((4, 4)), atol=1e-12)
    assert summary(m) == pytest.approx({"all_pairs": 1.0, "consecutive_mean": 1.0, "consecutive_min": 1.0})


def test_rotating_displacement_gives_the_cosine_of_the_angle():
    angles = [0.0, 0.3, 0.5, 1.2]
    states = [torch.tensor([math.cos(a), math.sin(a)]) * (4 - i) for i, a in enumerate(angles)] + [torch.zeros(2)]
    m = cosine_matrix(states)
    expected = np.cos(np.subtract.outer(angles, angles))
    np.testing.assert_allclose(m, expected, atol=1e-12)
    s = summary(m)
    assert s["consecutive_mean"] == pytest.approx(np.mean(np.cos([0.3, 0.2, 0.7])))
    assert s["consecutive_min"] == pytest.approx(math.cos(0.7))
    assert s["all_pairs"] == pytest.approx(expected[~np.eye(4, dtype=bool)].mean())


@pytest.fixture
def one_thread():
    """Tiny models are per-op overhead; intra-op threads only add contention on a shared CPU."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_command_writes_matrix_plot_and_figures(compose, tmp_path, one_thread):
    cfg = compose("method=svd_no_src", "dataset.limit=2", "method.steps=6", "device=cpu")
    result = analyze(cfg)
    out = tmp_path / "results" / "linearity" / "sample_tiny"
    m = np.load(out / "cosine.npy")
    assert m.shape == (6, 6) and (out / "cosine.png").stat().st_size > 0
    np.testing.assert_allclose(np.diag(m), 1.0, atol=1e-9)
    np.testing.assert_allclose(m, m.T, atol=1e-12)
    saved = json.loads((out / "linearity.json").read_text())
    assert saved["videos"] == 2 and saved["all_pairs"] == pytest.approx(summary(m)["all_pairs"])
    assert result["consecutive_min"] <= result["consecutive_mean"] <= 1.0
    # stage=report finds the analysis where it was written and reads the same figures.
    from reports.plots import read_linearity

    read = read_linearity(out)
    assert read["consecutive_mean"] == pytest.approx(result["consecutive_mean"]) and read["matrix"].shape == (6, 6)
