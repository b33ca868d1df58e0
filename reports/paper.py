"""The Videoshop paper's reference numbers (read from `reports/paper_data/`) and how its tables print them."""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import pandas as pd

PAPER_DATA = Path(__file__).resolve().parent / "paper_data"


@dataclass(frozen=True)
class PaperColumn:
    """A metric column as the paper prints it: header, group and whether higher is better."""

    key: str
    header: str
    group: str
    higher_is_better: bool

    @property
    def title(self) -> str:
        return f"{self.header} {'↑' if self.higher_is_better else '↓'}"


#: Tables 2, 3 and 5 in the paper's column order, with its metric groups.
COLUMNS = [
    PaperColumn("clip_tgt", "CLIP_tgt", "Edit fidelity", True),
    PaperColumn("clip_tgt_plus", "CLIP_tgt+", "Edit fidelity", True),
    PaperColumn("tifa", "TIFA", "Edit fidelity", True),
    PaperColumn("clip_src", "CLIP_src", "Source faithfulness", True),
    PaperColumn("clip_src_plus", "CLIP_src+", "Source faithfulness", True),
    PaperColumn("flow", "Flow", "Source faithfulness", False),
    PaperColumn("flow_plus", "Flow+", "Source faithfulness", False),
    PaperColumn("fvd", "FVD", "Source faithfulness", False),
    PaperColumn("ssim", "SSIM", "Source faithfulness", True),
    PaperColumn("clip_tc", "CLIP_TC", "Temporal consistency", True),
]
COLUMN_BY_KEY = {c.key: c for c in COLUMNS}

#: Row names as the paper prints them; measured methods not listed keep their own label.
METHOD_NAMES = {
    "bdia": "BDIA",
    "pix2video": "Pix2Video",
    "fatezero": "FateZero",
    "spacetime": "SpaceTime",
    "rave": "RAVE",
    "svd_no_src": "SVD (no source)",
    "videoshop": "Videoshop",
    "videoshop_no_norm": "w/o latent normalization",
    "videoshop_no_rescale": "w/o rescaling",
    "videoshop_no_extrapolation": "w/o noise extrapolation",
    "videoshop_no_threshold": "w/o thresholding",
    "tokenflow": "TokenFlow",
    "anyv2v": "AnyV2V",
}

#: The paper's tables: title and the dataset name its rows were computed on.
TABLES = {
    "2": ("Table 2: MagicBrush-derived videos", "magicbrush"),
    "3": ("Table 3: HD-VILA expert edits", "hdvila_expert"),
    "5": ("Table 5: ablations (10-video subset)", "ablation10"),
}

#: The dataset a measured row must come from to be compared with each table's paper rows (Table 5's
#: 10 videos are MagicBrush-derived; Table 4's times were measured on MagicBrush dev).
COMPARABLE_DATASET = {"2": "magicbrush", "3": "hdvila_expert", "4": "magicbrush", "5": "magicbrush"}


@lru_cache(maxsize=None)
def paper_tables(path: Path = PAPER_DATA / "paper_tables.csv") -> pd.DataFrame:
    """Tables 2, 3 and 5: one row per (table, method); NaN where the paper prints none."""
    df = pd.read_csv(path, dtype={"table": str})
    missing = [c.key for c in COLUMNS if c.key not in df]
    if missing:
        raise ValueError(f"{path}: missing columns {missing}")
    return df


def paper_rows(table: str) -> pd.DataFrame:
    """The paper's rows of one table, in its printed order, indexed by method."""
    df = paper_tables()
    rows = df[df["table"] == str(table)]
    if rows.empty:
        raise KeyError(f"the paper data has no Table {table} (tables: {sorted(df['table'].unique())})")
    return rows.set_index("method")[[c.key for c in COLUMNS]]


@lru_cache(maxsize=None)
def paper_table4(path: Path = PAPER_DATA / "paper_table4.csv") -> pd.DataFrame:
    """Table 4, indexed by baseline: preference for Videoshop (%) and time as a multiple of Videoshop's."""
    return pd.read_csv(path).set_index("baseline")


@lru_cache(maxsize=None)
def paper_linearity(path: Path = PAPER_DATA / "paper_linearity.csv") -> dict[str, float]:
    """Sec. 3.5's cosine similarities of the denoising trajectory: all_pairs, consecutive_mean, consecutive_min."""
    df = pd.read_csv(path)
    return dict(zip(df["statistic"], df["value"].astype(float)))


def display_name(method: str) -> str:
    return METHOD_NAMES.get(method, method)
