"""The paper's Tables 2, 3, 5 and 4 laid out with measured rows beside the printed ones.

Each of Tables 2, 3 and 5 lists, per method in the paper's order, the paper's row, then every measured
row of that method (one per configured dataset × models) followed by its difference to the paper.
Measured methods the paper's table lacks follow at the end. Rows computed with tiny models, or on another
dataset than the paper's (`COMPARABLE_DATASET`), are marked as not comparable, and so are their Δ rows.
Table 4 gives each method's execution time as a multiple of Videoshop's measured time beside the paper's
multiples and human-preference numbers.

Measured rows carry the table's intervals and tests in `<table>.csv` (`<metric>_lo/_hi`, `_diff`, `_diff_lo/_hi`,
`_p`, FVD's `fvd_floor`); a Δ row's `_lo/_hi` is the measured interval minus the paper's value, so the paper's
number lies within the measured interval when 0 lies within the Δ row's. The printed layouts mark a measured
mean that differs significantly from the reference method's (`*`) and leave the intervals to the CSV.
"""
from __future__ import annotations

import html
import math
import re
from dataclasses import dataclass, field

import pandas as pd

from reports.columns import UNCERTAINTY_SUFFIXES
from reports.paper import COLUMNS, COMPARABLE_DATASET, TABLES, display_name, paper_rows, paper_table4
from reports.uncertainty import UncertaintyConfig

TIME_HEADER = "Time (× Videoshop)"
#: The mark after a measured mean that differs significantly from the reference method's (as in reports.tables).
SIGNIFICANT = "*"
TIME_GROUP = "Efficiency (Table 4)"
LATEX_SYMBOLS = {"↑": r"$\uparrow$", "↓": r"$\downarrow$", "Δ": r"$\Delta$", "−": "-", "—": "--", "×": r"$\times$"}
LATEX_ESCAPES = {"\\": r"\textbackslash{}", "_": r"\_", "%": r"\%", "&": r"\&", "#": r"\#", "$": r"\$", "{": r"\{",
                 "}": r"\}", "<": r"$<$", ">": r"$>$", "`": ""}
#: A layout row's own fields, before its values in `<table>.csv`.
ROW_FIELDS = ["method", "kind", "row", "note", "dataset", "models", "tiny", "comparable"]
ROW_CLASS = {"paper": "paper", "measured": "measured", "Δ": "delta"}


def latex_text(text: str) -> str:
    """Plain text (a caption or note) with LaTeX's special characters escaped and `code` quotes dropped."""
    return re.sub("|".join(map(re.escape, LATEX_ESCAPES)), lambda m: LATEX_ESCAPES[m.group()], text)


def latex_symbols(tex: str) -> str:
    """The report's non-ASCII symbols as pdflatex understands them."""
    for char, cmd in LATEX_SYMBOLS.items():
        tex = tex.replace(char, cmd)
    return tex


@dataclass
class LayoutConfig:
    """Which measured datasets sit beside which paper table, and the intervals' and tests' settings (`report.*` in
    conf/config.yaml)."""

    datasets: dict[str, list[str]] = field(default_factory=lambda: {
        "2": ["magicbrush", "sample"], "3": ["hdvila_expert", "sample"], "4": ["magicbrush", "sample"],
        "5": ["magicbrush", "sample"],
    })
    other_methods: dict[str, bool] = field(default_factory=lambda: {"2": True, "3": True, "5": False})
    aliases: dict[str, str] = field(default_factory=lambda: {"videoshop_paper": "videoshop"})
    time_reference: str = "videoshop"
    uncertainty: UncertaintyConfig = field(default_factory=UncertaintyConfig)

    @classmethod
    def from_config(cls, cfg) -> "LayoutConfig":
        """From the `report` config node: tables.tableN.{datasets, other_methods}, aliases, time_reference,
        reference_method and uncertainty."""
        if cfg is None:
            return cls()
        out = cls(uncertainty=UncertaintyConfig.from_config(cfg))
        for name, t in (cfg.get("tables") or {}).items():
            key = str(name).removeprefix("table")
            if t.get("datasets") is not None:
                out.datasets[key] = [str(d) for d in t["datasets"]]
            if t.get("other_methods") is not None:
                out.other_methods[key] = bool(t["other_methods"])
        if cfg.get("aliases") is not None:
            out.aliases = {str(k): str(v) for k, v in cfg["aliases"].items()}
        if cfg.get("time_reference"):
            out.time_reference = str(cfg["time_reference"])
        return out

    def paper_method(self, label: str) -> str:
        """The paper's row a measured method sits beside: an alias, else its name without `[overrides]`."""
        base = label.split("[", 1)[0]
        return self.aliases.get(label, self.aliases.get(base, base))


@dataclass
class Layout:
    """One paper table: numeric rows (`frame`) plus the columns' groups and headers for printing."""

    key: str
    title: str
    frame: pd.DataFrame  # columns: method, kind, row, dataset, models, tiny, comparable, note, <metric keys>, n_<metric key>
    metrics: list[tuple[str, str, str]]  # (key, group, header with arrow)
    dash: set[str] = field(default_factory=set)  # columns where a missing value prints "—" (not printed), not NaN
    measured: set[str] = field(default_factory=set)  # metrics the results have; others print "—" in measured rows
    uncertainty: UncertaintyConfig = field(default_factory=UncertaintyConfig)  # alpha and reference of the `*` marks

    def formatted(self) -> pd.DataFrame:
        """Strings as printed: 2 decimals, signed differences, grouped (group, header) columns; a measured mean over
        part of the run's finished samples as `63.20 (n=9)`, and `63.20*` when it differs significantly from the
        reference method's."""
        f = self.frame
        out = {("", "Method"): f["method"].map(display_name), ("", "Row"): f["row"]}
        for key, group, header in self.metrics:
            counts = f[f"n_{key}"] if f"n_{key}" in f else pd.Series(math.nan, index=f.index)
            p = f[f"{key}_p"] if f"{key}_p" in f else pd.Series(math.nan, index=f.index)
            out[(group, header)] = [
                "—" if r != "paper" and key not in self.measured | self.dash
                else _fmt(v, signed=r == "Δ", missing="—" if key in self.dash else "NaN")
                + (SIGNIFICANT if r == "measured" and pv < self.uncertainty.alpha else "") + ("" if pd.isna(n) else f" (n={int(n)})")
                for v, r, n, pv in zip(f[key], f["kind"], counts, p.fillna(1.0))
            ]
        out[("", "Note")] = f["note"]
        return pd.DataFrame(out, index=f.index).set_axis(pd.MultiIndex.from_tuples(out), axis=1)

    def markdown(self) -> str:
        shown = self.formatted()
        groups = " · ".join(
            f"**{g}**: {', '.join(h for gg, h in shown.columns if gg == g)}" for g in dict.fromkeys(g for g, _ in shown.columns) if g
        )
        flat = shown.set_axis([h for _, h in shown.columns], axis=1)
        note = f"\n{self.legend()}\n" if self.tested() else ""
        return f"### {self.title}\n\n{groups}\n\n{flat.to_markdown(index=False, disable_numparse=True)}\n{note}"

    def tested(self) -> bool:
        """Whether any measured row was compared with the reference method (has a p-value)."""
        return any(f"{key}_p" in self.frame and self.frame[f"{key}_p"].notna().any() for key, _, _ in self.metrics)

    def legend(self) -> str:
        u = self.uncertainty
        return (f"`{SIGNIFICANT}`: differs from measured {display_name(u.reference_method)} of the same dataset and models on "
                f"the samples both finished (paired permutation test, p < {u.alpha:g}). {u.confidence:.0%} bootstrap "
                f"intervals and p-values: `{self.key}.csv`.")

    def latex(self) -> str:
        """LaTeX that compiles with pdflatex and booktabs: special characters escaped, symbols in math mode."""
        caption = latex_text(f"{self.title}. {self.legend()}" if self.tested() else self.title)
        tex = self.formatted().to_latex(index=False, multicolumn=True, multicolumn_format="c", caption=caption, escape=True)
        return latex_symbols(tex)

    def html(self) -> str:
        """A table with the metric groups centred over their columns, a rule between groups, and each row's
        kind (paper, measured, Δ; `nc` when not comparable) as its class, for the gallery's styling."""
        shown = self.formatted()
        cols = list(shown.columns)
        starts = {i for i, (g, _) in enumerate(cols) if i > 0 and g != cols[i - 1][0]}
        sep = lambda i: ' class="g"' if i in starts else ""  # noqa: E731
        groups, i = [], 0
        while i < len(cols):
            j = i
            while j + 1 < len(cols) and cols[j + 1][0] == cols[i][0]:
                j += 1
            groups.append(f'<th colspan="{j - i + 1}"{sep(i)}>{html.escape(cols[i][0])}</th>')
            i = j + 1
        head = "".join(f"<th{sep(i)}>{html.escape(h)}</th>" for i, (_, h) in enumerate(cols))
        body = []
        for (_, r), values in zip(self.frame.iterrows(), shown.itertuples(index=False)):
            cls = ROW_CLASS.get(r["kind"], "") + ("" if r.get("comparable", True) else " nc")
            cells = "".join(f"<td{sep(i)}>{html.escape(str(v))}</td>" for i, v in enumerate(values))
            body.append(f'<tr class="{cls.strip()}">{cells}</tr>')
        return (f'<table class="paper"><thead><tr class="groups">{"".join(groups)}</tr><tr>{head}</tr></thead>'
                f'<tbody>{"".join(body)}</tbody></table>')


def _fmt(v, signed: bool = False, missing: str = "NaN") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return missing
    return f"{v:+.2f}" if signed else f"{v:.2f}"


def time_multiples(table: pd.DataFrame, reference: str = "videoshop") -> pd.Series:
    """seconds_per_edit divided by the reference method's, within the same dataset and models (NaN without one)."""
    if table.empty or "seconds_per_edit" not in table:
        return pd.Series(math.nan, index=table.index, dtype=float)
    ref = table[table["method"] == reference].set_index(["dataset", "models"])["seconds_per_edit"]
    ref = ref[~ref.index.duplicated()]
    denom = [ref.get((d, m), math.nan) for d, m in zip(table["dataset"], table["models"])]
    return table["seconds_per_edit"] / pd.Series(denom, index=table.index, dtype=float)


def _partial_counts(row: pd.Series, keys: list[str]) -> dict[str, int]:
    """`n_<key>` for each metric whose mean covers fewer than the run's finished samples (see reports.tables)."""
    finished = int(row["n"]) - int(row.get("n_failed", 0))
    counts = {k: row.get(f"n_{k}") for k in keys}
    return {f"n_{k}": int(n) for k, n in counts.items() if n is not None and not pd.isna(n) and 0 < n < finished}


def _uncertainty(row: pd.Series, keys: list[str], paper: dict[str, float] | None = None) -> dict[str, float]:
    """The measured row's intervals and tests of each metric (`<key>_lo`, ...; see reports.uncertainty); with the
    paper's values, the Δ row's: the measured interval minus the paper's value."""
    out = {f"{k}{s}": float(row[f"{k}{s}"]) for k in keys for s in UNCERTAINTY_SUFFIXES
           if f"{k}{s}" in row and not pd.isna(row[f"{k}{s}"])}
    if paper is None:
        return out
    return {f"{k}{s}": out[f"{k}{s}"] - paper[k] for k in keys for s in ("_lo", "_hi") if f"{k}{s}" in out}


def _why_not_comparable(row: pd.Series, key: str) -> list[str]:
    """Why a measured row cannot be compared with paper table `key`'s rows: tiny models, another dataset."""
    why = []
    if row.get("tiny"):
        why.append("tiny models: not comparable")
    if row["dataset"] != COMPARABLE_DATASET[key]:
        why.append("other dataset: not comparable")
    return why


def _note(row: pd.Series, key: str) -> str:
    parts = _why_not_comparable(row, key)
    if row.get("n_failed", 0):
        parts.append(f"{int(row['n_failed'])}/{int(row['n'])} failed (excluded)")
    if row.get("n_nan", 0):
        parts.append(f"{int(row['n_nan'])}/{int(row['n'])} NaN")
    return "; ".join(parts)


def _delta_row(where: str, row: pd.Series, key: str) -> tuple[str, str]:
    """The Δ row's label and note: marked as no comparison when the measured row is not comparable."""
    why = _why_not_comparable(row, key)
    if why:
        return f"Δ {where} − paper (no comparison)", "; ".join(why)
    return f"Δ {where} − paper", ""


def _measured(table: pd.DataFrame, key: str, cfg: LayoutConfig) -> pd.DataFrame:
    """The table's rows of the datasets configured for paper table `key`, in that order, with time multiples
    and the paper method each sits beside."""
    datasets = cfg.datasets.get(key, [])
    if table.empty:
        return table
    measured = table[table["dataset"].isin(datasets)].copy()
    measured["time_x"] = time_multiples(measured, cfg.time_reference)
    measured["paper_method"] = [cfg.paper_method(m) for m in measured["method"]]
    order = {d: i for i, d in enumerate(datasets)}
    return measured.sort_values(["dataset", "models", "method"], key=lambda s: s.map(order) if s.name == "dataset" else s)


def paper_layout(key: str, table: pd.DataFrame, cfg: LayoutConfig) -> Layout:
    """Table 2, 3 or 5 (`key`): the paper's rows, each followed by the measured rows and their differences."""
    title, paper_dataset = TABLES[key]
    paper = paper_rows(key)
    keys = [c.key for c in COLUMNS]
    metrics = [(c.key, c.group, c.title) for c in COLUMNS] + [("time_x", TIME_GROUP, TIME_HEADER + " ↓")]
    paper_time = paper_table4()["time_multiple_of_videoshop"] if key == "2" else pd.Series(dtype=float)

    measured = _measured(table, key, cfg)

    rows = []

    def add(method, kind, row, values, m=None, note=""):
        rows.append({"method": method, "kind": kind, "row": row, "note": note,
                     "dataset": "" if m is None else m["dataset"], "models": "" if m is None else m["models"],
                     "tiny": False if m is None else bool(m["tiny"]),
                     "comparable": m is None or not _why_not_comparable(m, key), **values})

    for method, p in paper.iterrows():
        pvals = {k: float(p[k]) for k in keys}
        pvals["time_x"] = 1.0 if method == "videoshop" and key == "2" else float(paper_time.get(method, math.nan))
        add(method, "paper", f"paper ({paper_dataset})", pvals)
        if measured.empty:
            continue
        for _, m in measured[measured["paper_method"] == method].iterrows():
            mvals = {k: float(m.get(k, math.nan)) for k in keys + ["time_x"]}
            where = f"{m['dataset']}/{m['models']}"
            label = f"measured {where}" + ("" if m["method"] == method else f" ({m['method']})")
            add(method, "measured", f"{label} n={int(m['n'])}", mvals | _partial_counts(m, keys) | _uncertainty(m, keys), m,
                _note(m, key))
            delta = {k: mvals[k] - pvals[k] for k in mvals} | _uncertainty(m, keys, pvals)
            if method == cfg.time_reference:  # its time is 1 by definition: no difference to show
                delta["time_x"] = math.nan
            label, note = _delta_row(where, m, key)
            add(method, "Δ", label, delta, m, note)
    if not measured.empty and cfg.other_methods.get(key, True):
        for _, m in measured[~measured["paper_method"].isin(paper.index)].iterrows():
            mvals = {k: float(m.get(k, math.nan)) for k in keys + ["time_x"]}
            add(m["method"], "measured", f"measured {m['dataset']}/{m['models']} n={int(m['n'])} (not in the paper)",
                mvals | _partial_counts(m, keys) | _uncertainty(m, keys), m, _note(m, key))
    frame = pd.DataFrame(rows)
    beside = [c for k in keys for c in [k, *(k + s for s in UNCERTAINTY_SUFFIXES)] if c in frame]  # each metric, then its intervals
    frame = frame[ROW_FIELDS + beside + [c for c in frame if c not in ROW_FIELDS + beside]]
    frame = frame.astype({c: "Int64" for c in frame if c.startswith("n_")})
    return Layout(f"table{key}", title, frame, metrics, dash={"time_x"}, measured=set(table.columns), uncertainty=cfg.uncertainty)


def table4_layout(table: pd.DataFrame, cfg: LayoutConfig) -> Layout:
    """Table 4: the paper's preference and time multiples, and each measured time as a multiple of Videoshop's.

    The reference method's own measured multiple is 1 by definition, so it gets no Δ row."""
    t4 = paper_table4()
    rows = []
    measured = _measured(table, "4", cfg)
    metrics = [
        ("editing_pref", "Human preference for Videoshop (paper)", "Editing quality % ↑"),
        ("video_pref", "Human preference for Videoshop (paper)", "Video quality % ↑"),
        ("time_x", TIME_GROUP, TIME_HEADER + " ↓"),
        ("seconds", TIME_GROUP, "Seconds per edit ↓"),
    ]

    def add(method, kind, row, values, m=None, note=""):
        rows.append({"method": method, "kind": kind, "row": row, "note": note,
                     "dataset": "" if m is None else m["dataset"], "models": "" if m is None else m["models"],
                     "tiny": False if m is None else bool(m["tiny"]),
                     "comparable": m is None or not _why_not_comparable(m, "4"), **values})

    def times(m):
        return {"editing_pref": math.nan, "video_pref": math.nan, "time_x": float(m["time_x"]),
                "seconds": float(m.get("seconds_per_edit", math.nan))}

    methods = ["videoshop"] + [b for b in t4.index if b != "average"]
    for method in methods:
        paper = {"editing_pref": math.nan, "video_pref": math.nan, "time_x": 1.0, "seconds": math.nan}
        if method in t4.index:
            r = t4.loc[method]
            paper.update(editing_pref=float(r["editing_quality_pref_videoshop_pct"]),
                         video_pref=float(r["video_quality_pref_videoshop_pct"]),
                         time_x=float(r["time_multiple_of_videoshop"]))
        add(method, "paper", "paper (MagicBrush dev)", paper)
        if measured.empty:
            continue
        for _, m in measured[measured["paper_method"] == method].iterrows():
            where = f"{m['dataset']}/{m['models']}"
            vals = times(m)
            add(method, "measured", f"measured {where}" + ("" if m["method"] == method else f" ({m['method']})") + f" n={int(m['n'])}",
                vals, m, _note(m, "4"))
            if method != cfg.time_reference:
                label, note = _delta_row(where, m, "4")
                add(method, "Δ", label, {k: vals[k] - paper[k] for k in vals}, m, note)
    avg = t4.loc["average"] if "average" in t4.index else None
    if avg is not None:
        add("average", "paper", "paper (MagicBrush dev)", {
            "editing_pref": float(avg["editing_quality_pref_videoshop_pct"]), "video_pref": float(avg["video_quality_pref_videoshop_pct"]),
            "time_x": float(avg["time_multiple_of_videoshop"]), "seconds": math.nan})
    if not measured.empty:
        for _, m in measured[~measured["paper_method"].isin(methods)].iterrows():
            add(m["method"], "measured", f"measured {m['dataset']}/{m['models']} n={int(m['n'])} (not in the paper)", times(m), m,
                _note(m, "4"))
    return Layout("table4", "Table 4: human preference and execution time (× Videoshop)", pd.DataFrame(rows), metrics,
                  dash={k for k, _, _ in metrics})


def all_layouts(table: pd.DataFrame, cfg: LayoutConfig | None = None) -> list[Layout]:
    cfg = cfg or LayoutConfig()
    return [paper_layout("2", table, cfg), paper_layout("3", table, cfg), table4_layout(table, cfg), paper_layout("5", table, cfg)]
