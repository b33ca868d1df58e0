"""The study's answers turned into Table 4's first two columns, and what qualifies them.

- Preference for the reference per opponent and question: the share of judgments preferring the reference (a tie
  counts half), with its Wilson score interval and the number of judgments, beside the paper's number.
- Catch trials: each rater's share of failed catch answers (preferring the corrupted video, or a tie); raters
  above `exclude_catch_failure_above` are excluded from every other number.
- Agreement where several raters judged the same pair: Krippendorff's α (nominal, any number of raters per pair)
  and Fleiss' κ (over the pairs with the most common number of raters, which κ needs to be equal).
- Bradley–Terry strengths of every method from all pairwise judgments (Hunter's MM algorithm; ties half a win
  each way; a small prior keeps unbeaten methods finite), as log-strengths centred on 0.
- Which automatic metrics agree with people: per metric and question, over pairs, Spearman's ρ between the
  metric's advantage of the reference (signed so that positive means better) and the share of raters preferring
  the reference, and how often the metric's winner is the raters' majority.
"""
from __future__ import annotations

import math
from collections import Counter, defaultdict
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from study.build import Study
from study.types import QUESTIONS, Answer


def wilson(k: float, n: int, confidence: float = 0.95) -> tuple[float, float, float]:
    """The proportion k/n and its Wilson score interval (NaNs when n is 0)."""
    if n == 0:
        return math.nan, math.nan, math.nan
    z = stats.norm.ppf(0.5 + confidence / 2)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return p, max(0.0, centre - half), min(1.0, centre + half)


def reference_outcome(study: Study, a: Answer) -> float:
    """1 when the answer prefers the pair's reference (the good video of a catch pair), 0 the other, 0.5 a tie."""
    if a.choice == "tie":
        return 0.5
    return float(study.pair(a.pair_id).method_of(a.choice) == study.pair(a.pair_id).reference)


def catch_failures(study: Study, answers: list[Answer]) -> pd.DataFrame:
    """Per rater: catch answers, failed ones (the corrupted video or a tie), failure rate, excluded or not."""
    n, failed = Counter(), Counter()
    for a in answers:
        p = study.pair(a.pair_id)
        if p is not None and p.is_catch:
            n[a.rater] += 1
            failed[a.rater] += a.choice != ("right" if p.catch_bad == "left" else "left")
    raters = sorted({a.rater for a in answers})
    rate = [failed[r] / n[r] if n[r] else math.nan for r in raters]
    limit = study.settings.exclude_catch_failure_above
    return pd.DataFrame({"rater": raters, "n_catch": [n[r] for r in raters], "n_failed": [failed[r] for r in raters],
                         "failure_rate": rate, "excluded": [bool(x > limit) for x in rate]})


def kept_answers(study: Study, answers: list[Answer]) -> list[Answer]:
    """The answers to real (non-catch) pairs of the raters not excluded by the catch trials."""
    c = catch_failures(study, answers)
    out = set(c.loc[c["excluded"], "rater"])
    return [a for a in answers if a.rater not in out and study.pair(a.pair_id) is not None and not study.pair(a.pair_id).is_catch]


def preference_table(study: Study, answers: list[Answer]) -> pd.DataFrame:
    """Table 4's first two columns: per opponent and question, % preferring the reference with its Wilson interval
    and n, beside the paper's %; then the average over opponents (as the paper's last row)."""
    from reports.paper import paper_table4

    s = study.settings
    paper = paper_table4()
    paper_col = {"editing": "editing_quality_pref_videoshop_pct", "video": "video_quality_pref_videoshop_pct"}
    wins, n, ties = defaultdict(float), Counter(), Counter()
    for a in kept_answers(study, answers):
        key = (study.pair(a.pair_id).opponent, a.question)
        wins[key] += reference_outcome(study, a)
        n[key] += 1
        ties[key] += a.choice == "tie"
    rows = []
    for opponent in s.against:
        for q in QUESTIONS:
            k, m = wins[(opponent, q)], n[(opponent, q)]
            p, lo, hi = wilson(k, m, s.confidence)
            rows.append({"opponent": opponent, "question": q, "pref_pct": 100 * p, "lo_pct": 100 * lo, "hi_pct": 100 * hi,
                         "n": m, "n_ties": ties[(opponent, q)],
                         "paper_pct": float(paper.loc[opponent, paper_col[q]]) if opponent in paper.index else math.nan})
    df = pd.DataFrame(rows)
    for q in QUESTIONS:
        sub = df[df["question"] == q]
        mean = sub["pref_pct"].mean(skipna=False)  # NaN until every opponent has judgments, like the paper's over all
        rows.append({"opponent": "average", "question": q, "pref_pct": mean, "lo_pct": math.nan,
                     "hi_pct": math.nan, "n": int(sub["n"].sum()), "n_ties": int(sub["n_ties"].sum()),
                     "paper_pct": float(paper.loc["average", paper_col[q]]) if "average" in paper.index else math.nan})
    return pd.DataFrame(rows)


def krippendorff_alpha(units: list[list[str]]) -> float:
    """Krippendorff's α for nominal values; `units` holds each unit's values (units with fewer than 2 are ignored)."""
    units = [u for u in units if len(u) >= 2]
    if not units:
        return math.nan
    cats = sorted({v for u in units for v in u})
    idx = {c: i for i, c in enumerate(cats)}
    o = np.zeros((len(cats), len(cats)))  # coincidence matrix
    for u in units:
        counts = np.bincount([idx[v] for v in u], minlength=len(cats)).astype(float)
        o += (np.outer(counts, counts) - np.diag(counts)) / (len(u) - 1)
    n_c, n = o.sum(1), o.sum()
    d_o = (n - np.trace(o)) / n
    d_e = (n * n - (n_c ** 2).sum()) / (n * (n - 1))
    return 1.0 if d_e == 0 else float(1 - d_o / d_e)


def fleiss_kappa(counts: np.ndarray) -> float:
    """Fleiss' κ of an items × categories count matrix with the same number of ratings per item."""
    counts = np.asarray(counts, float)
    m = counts.sum(1)
    if len(counts) == 0 or m[0] < 2 or not np.all(m == m[0]):
        return math.nan
    m = m[0]
    p_j = counts.sum(0) / counts.sum()
    p_i = ((counts ** 2).sum(1) - m) / (m * (m - 1))
    p_e = (p_j ** 2).sum()
    return 1.0 if p_e == 1 else float((p_i.mean() - p_e) / (1 - p_e))


def agreement(study: Study, answers: list[Answer]) -> pd.DataFrame:
    """Per question: pairs judged by ≥2 kept raters, Krippendorff's α over them, Fleiss' κ over those with the
    modal number of raters."""
    rows = []
    for q in QUESTIONS:
        by_pair = defaultdict(list)
        for a in kept_answers(study, answers):
            if a.question == q:
                by_pair[a.pair_id].append(a.choice)
        units = [v for v in by_pair.values() if len(v) >= 2]
        kappa, n_kappa = math.nan, 0
        if units:
            m = Counter(len(u) for u in units).most_common(1)[0][0]
            same = [u for u in units if len(u) == m]
            cats = ["left", "right", "tie"]
            kappa, n_kappa = fleiss_kappa(np.array([[u.count(c) for c in cats] for u in same])), len(same)
        rows.append({"question": q, "n_pairs": len(units), "krippendorff_alpha": krippendorff_alpha(units),
                     "fleiss_kappa": kappa, "n_pairs_kappa": n_kappa})
    return pd.DataFrame(rows)


def bradley_terry(comparisons: list[tuple[str, str, float]], prior: float = 0.1, iterations: int = 10000,
                  tol: float = 1e-12) -> dict[str, float]:
    """Bradley–Terry log-strengths (mean 0) from (i, j, w) records: `i` beat `j` with weight `w` (0.5 each way for
    a tie). Hunter's (2004) MM updates. `prior` pseudo-wins each way between every two methods that met keep a
    method that never won (or never lost) finite; it is negligible against hundreds of judgments."""
    names = sorted({c[0] for c in comparisons} | {c[1] for c in comparisons})
    if not names:
        return {}
    idx = {m: i for i, m in enumerate(names)}
    won = np.zeros((len(names), len(names)))  # won[i, j]: weight of i beating j
    for i, j, w in comparisons:
        won[idx[i], idx[j]] += w
    met = (won + won.T) > 0
    won = won + prior * met
    wins, games = won.sum(1), won + won.T
    p = np.ones(len(names))
    for _ in range(iterations):
        new = wins / (games / (p[:, None] + p[None, :])).sum(1)
        new = new / np.exp(np.mean(np.log(new)))
        done = np.max(np.abs(new - p)) < tol
        p = new
        if done:
            break
    logp = np.log(p)
    return {m: float(logp[idx[m]] - logp.mean()) for m in names}


def bt_scores(study: Study, answers: list[Answer]) -> pd.DataFrame:
    """Bradley–Terry log-strengths of every method per question, from the kept real judgments."""
    rows = []
    for q in QUESTIONS:
        comps = []
        for a in kept_answers(study, answers):
            if a.question == q:
                p, x = study.pair(a.pair_id), reference_outcome(study, a)
                comps += [(p.reference, p.opponent, x), (p.opponent, p.reference, 1 - x)]
        rows += [{"question": q, "method": m, "bt_score": v} for m, v in sorted(bradley_terry(comps).items(), key=lambda t: -t[1])]
    return pd.DataFrame(rows, columns=["question", "method", "bt_score"])


def metric_correlations(study: Study, answers: list[Answer]) -> pd.DataFrame:
    """Per metric and question, over real pairs with judgments: Spearman's ρ (and p) between the metric's advantage
    of the reference (its direction applied) and the share of raters preferring it; and the share of pairs where
    the metric's winner is the raters' majority (pairs with a metric tie or a rater tie left out)."""
    share = defaultdict(list)
    for a in kept_answers(study, answers):
        share[(a.pair_id, a.question)].append(reference_outcome(study, a))
    rows = []
    metrics = sorted({m for p in study.pairs if not p.is_catch for m in p.scores.get(p.reference, {})})
    for metric in metrics:
        col = study.columns.get(metric, {})
        sign = -1.0 if col.get("higher_is_better") is False else 1.0
        for q in QUESTIONS:
            x, y = [], []
            for p in study.pairs:
                got = share.get((p.id, q))
                a, b = p.scores.get(p.reference, {}).get(metric), p.scores.get(p.opponent, {}).get(metric)
                if got and a is not None and b is not None:
                    x.append(sign * (a - b))
                    y.append(float(np.mean(got)))
            x, y = np.array(x), np.array(y)
            decided = (x != 0) & (y != 0.5)
            rho, pval = (stats.spearmanr(x, y) if len(x) >= 3 and np.ptp(x) > 0 and np.ptp(y) > 0 else (math.nan, math.nan))
            rows.append({"metric": metric, "question": q, "n_pairs": len(x), "spearman_rho": float(rho), "p": float(pval),
                         "agree_pct": 100 * float(np.mean((x[decided] > 0) == (y[decided] > 0.5))) if decided.any() else math.nan,
                         "higher_is_better": sign > 0})
    return pd.DataFrame(rows, columns=["metric", "question", "n_pairs", "spearman_rho", "p", "agree_pct", "higher_is_better"])


@dataclass
class Analysis:
    preference: pd.DataFrame
    catch: pd.DataFrame
    agreement: pd.DataFrame
    bradley_terry: pd.DataFrame
    metrics: pd.DataFrame
    n_answers: int


def analyze(study: Study, answers: list[Answer]) -> Analysis:
    return Analysis(preference_table(study, answers), catch_failures(study, answers), agreement(study, answers),
                    bt_scores(study, answers), metric_correlations(study, answers), len(answers))
