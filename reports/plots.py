"""PNG plots of a report: each metric compared across methods, and the near-linearity cosine matrix.

The cosine matrix is read from whatever `videoshop/linearity.py` wrote under `results_dir/linearity/<name>/`:
either `cosine.npy` (a square matrix of cosines between denoising steps) or a JSON file (`cosine.json`
or `linearity.json`) holding `matrix` and optionally `all_pairs`, `consecutive_mean`, `consecutive_min`
and `n_videos`. Statistics missing from the file are computed from the matrix.
"""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from reports.paper import COLUMN_BY_KEY, TABLES, display_name, paper_linearity, paper_table4, paper_tables  # noqa: E402

log = logging.getLogger("report")

TITLES = {"seconds_per_edit": "seconds per edit ↓", "time_x_videoshop": "time (× Videoshop) ↓"}
NOT_METRICS = {"dataset", "method", "models", "tiny", "n", "n_failed", "n_nan", "nfe", "peak_mem_mb"}


def metric_comparison(table: pd.DataFrame, dataset: str, models: str, path: Path, paper_dataset: str | None = None) -> Path | None:
    """One bar panel per metric, one bar per method; the paper's values as black ticks where it has them."""
    df = table[(table["dataset"] == dataset) & (table["models"] == models)].sort_values("method")
    metrics = [c for c in df.columns if c not in NOT_METRICS and df[c].notna().any()]
    if df.empty or not metrics:
        return None
    paper = pd.DataFrame()
    if paper_dataset:
        p = paper_tables()
        paper = p[p["dataset"] == paper_dataset].set_index("method")
    ncols = min(4, len(metrics))
    nrows = math.ceil(len(metrics) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.6 * ncols, 2.9 * nrows + 0.6), squeeze=False)
    x = np.arange(len(df))
    times = paper_table4()["time_multiple_of_videoshop"].to_dict() | {"videoshop": 1.0} if paper_dataset == "magicbrush" else {}
    for ax, name in zip(axes.flat, metrics):
        col = COLUMN_BY_KEY.get(name)
        vals = df[name].to_numpy(float)
        ax.bar(x, np.nan_to_num(vals), color="tab:blue")
        for xi, v in zip(x, vals):
            if np.isnan(v):
                ax.text(xi, 0, "NaN", ha="center", va="bottom", fontsize=7, color="tab:red")
        ref = paper[name] if name in paper else times if name == "time_x_videoshop" and not paper.empty else None
        if ref is not None:
            ax.scatter(x, [ref.get(m.split("[", 1)[0], np.nan) for m in df["method"]], marker="_", s=300, color="black", zorder=3)
        arrow = "" if col is None else (" ↑" if col.higher_is_better else " ↓")
        ax.set_title((col.header if col else TITLES.get(name, name)) + arrow, fontsize=10)
        ax.set_xticks(x, [display_name(m) for m in df["method"]], rotation=45, ha="right", fontsize=7)
    for ax in list(axes.flat)[len(metrics):]:
        ax.axis("off")
    tiny = " (tiny models: not comparable)" if df["tiny"].any() else ""
    fig.suptitle(f"{dataset} / {models}{tiny}" + (" — black ticks: paper" if not paper.empty else ""), fontsize=11)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def read_linearity(folder: Path) -> dict | None:
    """The cosine matrix and its statistics from one `linearity/<name>/` folder, or None if it holds none."""
    data: dict = {}
    for name in ("cosine.json", "linearity.json"):
        if (folder / name).is_file():
            data = json.loads((folder / name).read_text())
            break
    if (folder / "cosine.npy").is_file():
        data["matrix"] = np.load(folder / "cosine.npy")
    if data.get("matrix") is None:
        return None
    m = np.asarray(data["matrix"], dtype=float)
    if m.ndim != 2 or m.shape[0] != m.shape[1] or m.shape[0] < 2:
        raise ValueError(f"{folder}: the cosine matrix must be square with at least 2 steps, got shape {m.shape}")
    from videoshop.linearity import summary

    data["matrix"] = m
    for key, value in summary(m).items():
        data.setdefault(key, value)
    return data


def linearity_plot(data: dict, title: str, path: Path) -> Path:
    """Heatmap of step-to-step cosines, with the measured and the paper's statistics."""
    paper = paper_linearity()
    fig, ax = plt.subplots(figsize=(5.4, 5.0))
    im = ax.imshow(data["matrix"], cmap="viridis", vmin=min(0.8, float(np.nanmin(data["matrix"]))), vmax=1.0)
    fig.colorbar(im, ax=ax, fraction=0.046, label="cosine")
    ax.set_xlabel("denoising step")
    ax.set_ylabel("denoising step")
    n = f", {data['n_videos']} videos" if "n_videos" in data else ""
    ax.set_title(
        f"{title}{n}\nall pairs {data['all_pairs']:.4f} (paper {paper['all_pairs']:.4f})\n"
        f"consecutive mean {data['consecutive_mean']:.4f} (paper {paper['consecutive_mean']:.4f}), "
        f"min {data['consecutive_min']:.4f} (paper {paper['consecutive_min']:.4f})",
        fontsize=8,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_plots(results_dir: Path, table: pd.DataFrame) -> list[Path]:
    """Every plot under `results_dir/plots/`; returns their paths."""
    out_dir = results_dir / "plots"
    paths = []
    paper_of = {ds: ds for _, ds in TABLES.values()}
    if not table.empty:
        for (dataset, models), _ in table.groupby(["dataset", "models"], sort=True):
            p = metric_comparison(table, dataset, models, out_dir / f"metrics_{dataset}_{models}.png", paper_of.get(dataset))
            if p is not None:
                paths.append(p)
    for folder in sorted(p for p in (results_dir / "linearity").glob("*") if p.is_dir()):
        try:
            data = read_linearity(folder)
        except (ValueError, OSError, json.JSONDecodeError) as e:
            log.error("linearity: cannot read %s: %s", folder, e)
            continue
        if data is not None:
            paths.append(linearity_plot(data, f"Near-linearity: {folder.name}", out_dir / f"linearity_{folder.name}.png"))
    return paths
