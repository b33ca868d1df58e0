"""Which result columns are metrics, costs or bookkeeping, their order, and their headers with ↑/↓.

One place for tables, plots and the gallery, so that all three show the same columns in the paper's
order with the same arrows. Directions come from the column info each run records (`summary.json`,
from the metric's `Column.higher_is_better`); the paper's columns and the costs have known directions
for runs that recorded none.
"""
from __future__ import annotations

from reports.paper import COLUMN_BY_KEY, COLUMNS, display_name

#: What identifies and counts a run: never a metric.
ID_COLUMNS = ["dataset", "method", "models", "tiny", "n", "n_failed", "n_nan"]
#: The paper's column order (Tables 2, 3, 5); other metrics follow in name order.
PAPER_COLUMNS = [c.key for c in COLUMNS]
#: What an edit cost, per edit; `time_x_<reference>` columns are costs too. Lower is better for all.
COST_COLUMNS = ["seconds_per_edit", "nfe", "peak_mem_mb"]
COST_HEADERS = {"seconds_per_edit": "seconds per edit", "nfe": "UNet calls", "peak_mem_mb": "peak memory (MB)"}
#: Column groups that count things about the scoring (tracker used, frames skipped, FVD's set size): not metrics.
DIAGNOSTIC_GROUPS = {"regions", "set size"}
#: The bookkeeping columns the metrics write today, for runs whose summary records no column info.
DIAGNOSTIC_COLUMNS = {"region_cotracker", "region_skipped", "flow_region_skipped", "fvd_n", "fvd_frames"}
#: What reports.uncertainty adds beside a metric `m`, in table order: its interval (`m_lo`, `m_hi`), FVD's noise
#: floor and its range, and the difference to the reference method with its interval and p-value.
UNCERTAINTY_SUFFIXES = ("_lo", "_hi", "_floor", "_floor_lo", "_floor_hi", "_diff", "_diff_lo", "_diff_hi", "_p")
#: The suffixes whose columns are in the metric's unit (×100 with it); `_p` is a probability.
SCALED_SUFFIXES = tuple(s for s in UNCERTAINTY_SUFFIXES if s != "_p")


def count_column(name: str) -> str:
    """The diagnostic column counting the samples behind column `name`'s mean."""
    return f"n_{name}"


def is_count(name: str) -> bool:
    """A sample count (`n_<metric>`, `n_damaged`, `n_suites`) beyond the run's own counts in ID_COLUMNS."""
    return name.startswith("n_") and name not in ID_COLUMNS


def uncertainty_of(name: str, names) -> tuple[str, str] | None:
    """(metric, suffix) when column `name` is one of UNCERTAINTY_SUFFIXES beside a metric among `names`, else None."""
    names = set(names)
    for suffix in sorted(UNCERTAINTY_SUFFIXES, key=len, reverse=True):
        if name.endswith(suffix) and name[: -len(suffix)] in names:
            return name[: -len(suffix)], suffix
    return None


def is_cost(name: str) -> bool:
    return name in COST_COLUMNS or name.startswith("time_x_")


def is_diagnostic(name: str, columns: dict[str, dict]) -> bool:
    """A bookkeeping column: a sample count, its recorded group is one of DIAGNOSTIC_GROUPS, or it is a known one."""
    return is_count(name) or name in DIAGNOSTIC_COLUMNS or columns.get(name, {}).get("group") in DIAGNOSTIC_GROUPS


def metric_order(names, columns: dict[str, dict]) -> list[str]:
    """The metric columns among `names`: the paper's in its order, then the others by name (no ids, costs,
    diagnostics, or the intervals and tests beside a metric)."""
    names = list(names)
    rest = sorted(n for n in names if n not in PAPER_COLUMNS + ID_COLUMNS and not is_cost(n) and not is_diagnostic(n, columns)
                  and uncertainty_of(n, names) is None)
    return [c for c in PAPER_COLUMNS if c in names] + rest


def higher_is_better(name: str, columns: dict[str, dict]) -> bool | None:
    """The direction recorded for the column, else the paper's, else lower for costs; None if unknown."""
    if "higher_is_better" in columns.get(name, {}):
        return bool(columns[name]["higher_is_better"])
    if name in COLUMN_BY_KEY:
        return COLUMN_BY_KEY[name].higher_is_better
    return False if is_cost(name) else None


def header(name: str, columns: dict[str, dict]) -> str:
    """The column's printed name with its arrow: `CLIP_tgt ↑`, `gt_psnr ↑`, `seconds per edit ↓`."""
    col = COLUMN_BY_KEY.get(name)
    if col is not None:
        text = col.header
    elif name.startswith("time_x_"):
        text = f"time (× {display_name(name.removeprefix('time_x_'))})"
    else:
        text = COST_HEADERS.get(name, name)
    if is_diagnostic(name, columns):
        return text
    higher = higher_is_better(name, columns)
    return text if higher is None else f"{text} {'↑' if higher else '↓'}"
