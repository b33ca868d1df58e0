"""The runner: reference rows, resume, failures, NaN rows, and the report's arithmetic."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

import run
from harness.results import RunDir


def _rows(results, method, dataset="sample", models="tiny"):
    return {r.sample_id: r for r in RunDir(results / dataset / models / method).rows()}


def test_identity_ssim_is_perfect_and_oracle_beats_static(compose, tmp_path):
    for m in ("identity", "static", "oracle"):
        run.main(compose(f"method={m}", "dataset.limit=3"))
    res = tmp_path / "results"
    ident, static, oracle = (_rows(res, m) for m in ("identity", "static", "oracle"))
    assert len(ident) == 3 and all(r.status == "ok" for r in ident.values())
    for sid in ident:
        assert ident[sid].scores["ssim"] == pytest.approx(1.0)
        assert oracle[sid].scores["gt_ssim"] == pytest.approx(1.0)
        assert oracle[sid].scores["gt_psnr"] > static[sid].scores["gt_psnr"]
        assert oracle[sid].scores["gt_ssim"] > static[sid].scores["gt_ssim"]
