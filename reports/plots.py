"""PNG plots of a report: each metric compared across methods, and the near-linearity cosine matrix.

Metric panels show the metrics in the paper's column order, then the costs; bookkeeping columns (region
tracker, skipped frames, FVD's set size) are not plotted. Each panel has its own value range and every
bar its value, since CLIP scores of 80 and 100 look alike on an axis from 0.

The cosine matrix is read from what `videoshop/linearity.py` writes under `results_dir/linearity/<name>/`:
`cosine.npy` (a square matrix of cosines between denoising steps) and `linearity.json` (`videos`, `tiny`,
`all_pairs`, `consecutive_mean`, `consecutive_min`, ...); a `matrix` in the JSON (or `cosine.json`)
serves when there is no `cosine.npy`. Statistics missing from the files are computed from the matrix.
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

from reports.columns import header, metric_order  # noqa: E402
from reports.paper import TABLES, display_name, paper_linearity, paper_table4, paper_tables  # noqa: E402

log = logging.getLogger("report")

def _limits(values: np.ndarray) -> tuple[float, float]:
    """A panel's y range: the values (measured and paper) with a margin, room above for the value labels,
    and never below 0 for values that cannot be negative."""
    finite = values[np.isfinite(values)]
    if not finite.size:
        return 0.0, 1.0
    lo, hi = float(finite.min()), float(finite.max())
    span = hi - lo if hi > lo else max(abs(hi) * 0.05, 0.5)
    bottom, top = lo - 0.15 * span, hi + 0.3 * span
    return (0.0 if lo >= 0 > bottom else bottom), top


def plotted_columns(df: pd.DataFrame, columns: dict[str, dict]) -> list[str]:
    """The panels: metrics in the paper's order, then seconds per edit and time multiples; only columns with a value.
    UNet calls, memory and the bookkeeping columns stay in the tables."""
    costs = [c for c in df.columns if c == "seconds_per_edit" or c.startswith("time_x_")]
    return [c for c in metric_order(df.columns, columns) + costs if df[c].notna().any()]


def metric_comparison(table: pd.DataFrame, dataset: str, models: str, path: Path, paper_dataset: str | None = None,
                      columns: dict[str, dict] | None = None) -> Path | None:
    """One bar panel per metric, one bar per method, each with its value; the paper's values as black ticks where it has them."""
    columns = columns or {}
    df = table[(table["dataset"] == dataset) & (table["models"] == models)].sort_values("method")
    metrics = plotted_columns(df, columns)
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
        vals = df[name].to_numpy(float)
        ref = paper[name] if name in paper else times if name == "time_x_videoshop" and not paper.empty else None
        ticks = np.array([np.nan] * len(x) if ref is None else [ref.get(m.split("[", 1)[0], np.nan) for m in df["method"]], float)
        lo, hi = _limits(np.concatenate([vals, ticks]))
        ax.set_ylim(lo, hi)
        ax.bar(x, np.where(np.isnan(vals), lo, vals) - lo, bottom=lo, color="tab:blue")
        for xi, v in zip(x, vals):
            label, color = ("NaN", "tab:red") if np.isnan(v) else (f"{v:.2f}" if abs(v) < 1000 else f"{v:.0f}", "black")
            ax.text(xi, lo if np.isnan(v) else v, label, ha="center", va="bottom", fontsize=7, color=color)
        if ref is not None:
            ax.scatter(x, ticks, marker="_", s=300, color="black", zorder=3)
        ax.set_title(header(name, columns), fontsize=10)
        ax.set_xticks(x, [display_name(m) for m in df["method"]], rotation=45, ha="right", fontsize=7)
    for ax in list(axes.flat)[len(metrics):]:
        ax.axis("off")
    tiny = " (tiny models: not comparable)" if df["tiny"].any() else ""
    fig.suptitle(f"{dataset} / {models}{tiny} — each panel has its own scale" + ("; black ticks: paper" if not paper.empty else ""),
                 fontsize=11)
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


def linearity_title(data: dict, title: str) -> str:
    """The plot's title: what was measured on how many videos (tiny models marked), and the paper's figures beside."""
    paper = paper_linearity()
    videos = data.get("videos", data.get("n_videos"))  # linearity.py writes `videos`; `n_videos` from older files
    n = "" if videos is None else f", {videos} videos"
    tiny = " (tiny models: not comparable)" if data.get("tiny") else ""
    return (f"{title}{n}{tiny}\nall pairs {data['all_pairs']:.4f} (paper {paper['all_pairs']:.4f})\n"
            f"consecutive mean {data['consecutive_mean']:.4f} (paper {paper['consecutive_mean']:.4f}), "
            f"min {data['consecutive_min']:.4f} (paper {paper['consecutive_min']:.4f})")


def linearity_plot(data: dict, title: str, path: Path) -> Path:
    """Heatmap of step-to-step cosines, with the measured and the paper's statistics."""
    fig, ax = plt.subplots(figsize=(5.4, 5.0))
    im = ax.imshow(data["matrix"], cmap="viridis", vmin=min(0.8, float(np.nanmin(data["matrix"]))), vmax=1.0)
    fig.colorbar(im, ax=ax, fraction=0.046, label="cosine")
    ax.set_xlabel("denoising step")
    ax.set_ylabel("denoising step")
    ax.set_title(linearity_title(data, title), fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_plots(results_dir: Path, table: pd.DataFrame, columns: dict[str, dict] | None = None) -> list[Path]:
    """Every plot under `results_dir/plots/`; `columns` is the runs' column info (directions). Returns the paths."""
    out_dir = results_dir / "plots"
    paths = []
    paper_of = {ds: ds for _, ds in TABLES.values()}
    if not table.empty:
        for (dataset, models), _ in table.groupby(["dataset", "models"], sort=True):
            try:
                p = metric_comparison(table, dataset, models, out_dir / f"metrics_{dataset}_{models}.png", paper_of.get(dataset), columns)
            except Exception as e:  # one plot must not stop the report
                log.error("plots: metrics of %s/%s: %s: %s", dataset, models, type(e).__name__, e)
                plt.close("all")
                continue
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
