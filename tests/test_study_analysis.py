"""The study's statistics on synthetic answers with known truth: Wilson intervals and Fleiss' kappa against
statsmodels, Krippendorff's alpha by hand and against kappa, a simulated rater panel's preference recovered, catch
trials excluding careless raters, Bradley–Terry against a direct maximum-likelihood fit, metric correlations,
and the pair randomization (balanced, reproducible by seed)."""
from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from scipy.optimize import minimize
from statsmodels.stats.inter_rater import fleiss_kappa as sm_fleiss_kappa
from statsmodels.stats.proportion import proportion_confint

from study.analysis import (agreement, bradley_terry, bt_scores, catch_failures, fleiss_kappa, krippendorff_alpha,
                            metric_correlations, preference_table, wilson)
from study.build import CATCH, Study, plan_pairs, rater_order
from study.settings import Settings
from study.types import Answer, Pair


def synthetic_study(opponents: dict[str, int], n_catch: int = 0, seed: int = 0, **settings) -> Study:
    """A study without media: `opponents[o]` pairs against each opponent, sides drawn at random, ssim scores."""
    rng = np.random.default_rng(seed)
    pairs = []
    for o, n in opponents.items():
        for i in range(n):
            ref_left = bool(rng.random() < 0.5)
            lm, rm = ("videoshop", o) if ref_left else (o, "videoshop")
            adv = float(rng.normal())
            pairs.append(Pair(f"{o}-{i}", f"s{i}", "", "", "", "l.mp4", "r.mp4", lm, rm, "videoshop", o,
                              scores={"videoshop": {"ssim": 0.5 + adv / 10, "flow_err": 1 - adv, "noise": float(rng.normal())},
                                      o: {"ssim": 0.5, "flow_err": 1.0, "noise": float(rng.normal())}}))
    for i in range(n_catch):
        bad = "left" if rng.random() < 0.5 else "right"
        lm, rm = (CATCH, "videoshop") if bad == "left" else ("videoshop", CATCH)
        pairs.append(Pair(f"catch-{i}", f"s{i}", "", "", "", "l.mp4", "r.mp4", lm, rm, "videoshop", CATCH, catch_bad=bad))
    s = Settings(against=list(opponents), **settings)
    return Study(Path("."), s, pairs, {"ssim": {"higher_is_better": True}, "flow_err": {"higher_is_better": False},
                                       "noise": {"higher_is_better": True}})


def answer(study: Study, rater: str, pair: Pair, q: str, prefer_reference: bool) -> Answer:
    side = pair.side_of(pair.reference)
    return Answer(rater, pair.id, q, side if prefer_reference else ("right" if side == "left" else "left"))


@pytest.mark.parametrize("confidence", [0.95, 0.9])
def test_wilson_matches_statsmodels(confidence):
    for n in (1, 2, 7, 30, 528):
        for k in sorted({0, 1, n // 3, n // 2, n - 1, n}):
            p, lo, hi = wilson(k, n, confidence)
            ref = proportion_confint(k, n, alpha=1 - confidence, method="wilson")
            assert p == pytest.approx(k / n)
            assert (lo, hi) == pytest.approx(ref, abs=1e-12), (k, n)
    assert all(math.isnan(v) for v in wilson(0, 0))


def test_fleiss_kappa_matches_statsmodels_and_alpha_agrees():
    rng = np.random.default_rng(0)
    for raters in (2, 3, 5):
        truth = rng.random(400) < 0.7  # each item's true answer; raters agree with it 80% of the time
        votes = np.where(rng.random((400, raters)) < 0.8, truth[:, None], ~truth[:, None])
        counts = np.stack([votes.sum(1), raters - votes.sum(1), np.zeros(400, int)], 1)
        assert fleiss_kappa(counts) == pytest.approx(sm_fleiss_kappa(counts), abs=1e-12)
        units = [["left" if v else "right" for v in row] for row in votes]
        # Krippendorff's alpha differs from Fleiss' kappa only by a small-sample correction of order 1/(items x raters)
        assert krippendorff_alpha(units) == pytest.approx(fleiss_kappa(counts), abs=0.01)
    # By hand: units {a,a}, {a,b}, {b,b}: coincidences o_aa = o_bb = 2, o_ab = o_ba = 1, n = 6;
    # alpha = 1 - (n - 1) * (o_ab + o_ba) / (n_a n_b + n_b n_a) = 1 - 5 * 2 / 18 = 4/9.
    assert krippendorff_alpha([["a", "a"], ["a", "b"], ["b", "b"]]) == pytest.approx(4 / 9)
    assert krippendorff_alpha([["a", "a", "a"], ["b", "b"]]) == 1.0
    assert math.isnan(krippendorff_alpha([["a"]]))


def test_simulated_panel_recovers_its_preference_rate():
    """528 pairs per opponent, one judgment each per question (the paper's design), known rates per opponent.
    Four intervals are checked at once, so at 99% each (the 95% level's coverage is checked below)."""
    truth = {"bdia": 0.9489, "rave": 0.7405}
    study = synthetic_study({o: 528 for o in truth}, confidence=0.99)
    rng = np.random.default_rng(1)
    answers = [answer(study, f"r{i % 7}", p, q, bool(rng.random() < truth[p.opponent]))
               for i, p in enumerate(study.pairs) for q in ("editing", "video")]
    pref = preference_table(study, answers).set_index(["opponent", "question"])
    for o, rate in truth.items():
        for q in ("editing", "video"):
            row = pref.loc[(o, q)]
            assert row["n"] == 528
            assert row["pref_pct"] / 100 * 528 == pytest.approx(round(row["pref_pct"] / 100 * 528))  # a multiple of 1/528
            assert row["lo_pct"] <= 100 * rate <= row["hi_pct"], row
            assert row["hi_pct"] - row["lo_pct"] < 11  # 528 judgments pin a rate down to a few percent
    assert pref.loc[("bdia", "editing"), "paper_pct"] == 94.89
    partial = preference_table(study, [a for a in answers if a.pair_id.startswith("bdia")]).set_index(["opponent", "question"])
    assert math.isnan(partial.loc[("average", "video"), "pref_pct"]) and partial.loc[("average", "video"), "n"] == 528
    assert pref.loc[("average", "video"), "pref_pct"] == pytest.approx(
        (pref.loc[("bdia", "video"), "pref_pct"] + pref.loc[("rave", "video"), "pref_pct"]) / 2)


def test_wilson_intervals_cover_the_truth_at_their_level():
    rng = np.random.default_rng(2)
    hits = [lo <= 0.85 <= hi for k in rng.binomial(100, 0.85, 2000) for _, lo, hi in [wilson(int(k), 100)]]
    assert 0.93 <= np.mean(hits) <= 0.97


def test_catch_trials_exclude_careless_raters():
    """Careful raters prefer the reference 90% of the time and pass catch pairs; careless ones click at random.
    Excluding raters who fail the catch pairs brings the estimate back to the careful raters' rate."""
    study = synthetic_study({"bdia": 300}, n_catch=40, seed=3)
    rng = np.random.default_rng(4)
    answers = []
    for r in range(6):
        careless = r >= 4
        for p in study.pairs:
            for q in ("editing", "video"):
                if p.is_catch:
                    good = "right" if p.catch_bad == "left" else "left"
                    ok = rng.random() < (0.5 if careless else 0.98)
                    answers.append(Answer(f"r{r}", p.id, q, good if ok else p.catch_bad))
                else:
                    answers.append(answer(study, f"r{r}", p, q, bool(rng.random() < (0.5 if careless else 0.9))))
    c = catch_failures(study, answers).set_index("rater")
    assert c.loc[["r4", "r5"], "excluded"].all() and not c.loc[["r0", "r1", "r2", "r3"], "excluded"].any()
    assert (c["n_catch"] == 80).all()
    pref = preference_table(study, answers).set_index(["opponent", "question"]).loc[("bdia", "editing")]
    assert pref["n"] == 4 * 300
    assert pref["lo_pct"] <= 90 <= pref["hi_pct"]
    # Without the rule the careless raters drag the estimate below the truth's interval.
    loose = synthetic_study({"bdia": 300}, n_catch=40, seed=3, exclude_catch_failure_above=1.0)
    everyone = preference_table(loose, answers).set_index(["opponent", "question"]).loc[("bdia", "editing")]
    assert everyone["n"] == 6 * 300 and everyone["hi_pct"] < 90


def test_agreement_of_a_panel():
    study = synthetic_study({"bdia": 200}, seed=5)
    rng = np.random.default_rng(6)
    answers = []
    for p in study.pairs:
        majority = bool(rng.random() < 0.6)
        for r in range(3):
            same = rng.random() < 0.95 if p.id < "bdia-50" else rng.random() < 0.5  # consistent vs. coin-flip raters
            answers.append(answer(study, f"r{r}", p, "editing", majority if same else not majority))
    a = agreement(study, answers).set_index("question")
    assert a.loc["editing", "n_pairs"] == 200 and a.loc["editing", "n_pairs_kappa"] == 200
    assert a.loc["video", "n_pairs"] == 0 and math.isnan(a.loc["video", "krippendorff_alpha"])
    assert -0.2 < a.loc["editing", "krippendorff_alpha"] < 0.9


def test_bradley_terry_matches_maximum_likelihood_and_recovers_the_order():
    strengths = {"videoshop": 1.2, "rave": 0.4, "bdia": 0.0, "pix2video": -0.9}
    rng = np.random.default_rng(7)
    comps = []
    names = list(strengths)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            p = 1 / (1 + math.exp(strengths[b] - strengths[a]))
            wins = int(rng.binomial(400, p))
            comps += [(a, b, float(wins)), (b, a, float(400 - wins))]
    got = bradley_terry(comps, prior=0.0)
    assert sorted(got, key=got.get, reverse=True) == names

    def nll(theta):  # the Bradley-Terry likelihood, fitted directly (reference for the MM updates)
        t = dict(zip(names, np.append(theta, -theta.sum())))
        return -sum(w * (t[a] - np.logaddexp(t[a], t[b])) for a, b, w in comps)

    fit = minimize(nll, np.zeros(len(names) - 1), method="BFGS", options={"gtol": 1e-9})
    mle = dict(zip(names, np.append(fit.x, -fit.x.sum())))
    for m in names:
        assert got[m] == pytest.approx(mle[m], abs=1e-4)
        assert got[m] == pytest.approx(strengths[m] - np.mean(list(strengths.values())), abs=0.2)  # 400 games a pair
    # Study level (every pair has the reference): the reference ranks above opponents it beats more often.
    study = synthetic_study({"bdia": 200, "rave": 200}, seed=8)
    answers = [answer(study, "r", p, q, bool(rng.random() < {"bdia": 0.9, "rave": 0.6}[p.opponent]))
               for p in study.pairs for q in ("editing", "video")]
    bt = bt_scores(study, answers)
    assert list(bt[bt["question"] == "editing"]["method"]) == ["videoshop", "rave", "bdia"]


def test_metric_correlations_find_the_metric_people_follow():
    """Raters prefer the reference exactly when its ssim advantage is positive (flow_err is the same signal with
    lower = better); `noise` is unrelated."""
    study = synthetic_study({"bdia": 150}, seed=9)
    answers = [answer(study, f"r{r}", p, q, p.scores["videoshop"]["ssim"] > 0.5)
               for p in study.pairs for r in range(2) for q in ("editing", "video")]
    m = metric_correlations(study, answers).set_index(["metric", "question"])
    assert m.loc[("ssim", "editing"), "spearman_rho"] > 0.8 and m.loc[("ssim", "editing"), "agree_pct"] == 100
    assert m.loc[("flow_err", "video"), "spearman_rho"] > 0.8 and m.loc[("flow_err", "video"), "agree_pct"] == 100
    assert abs(m.loc[("noise", "editing"), "spearman_rho"]) < 0.25
    assert m.loc[("ssim", "editing"), "n_pairs"] == 150


def test_pair_plan_is_balanced_and_reproducible():
    common = {o: [f"s{i:03d}" for i in range(528)] for o in ("bdia", "pix2video", "fatezero", "spacetime", "rave")}
    ref_ids = common["bdia"]
    plan = plan_pairs(0, common, ref_ids, 0.1)
    real = [p for p in plan if p.opponent != CATCH]
    assert len(real) == 5 * 528 and Counter(p.opponent for p in real) == {o: 528 for o in common}
    assert sum(p.opponent == CATCH for p in plan) == math.ceil(0.1 * 5 * 528)
    assert len({p.sample_id for p in plan if p.opponent == CATCH}) == math.ceil(0.1 * 5 * 528)  # distinct samples
    for o in common:  # exactly balanced per opponent, in random order
        sides = [p.reference_right for p in real if p.opponent == o]
        assert sum(sides) == 264, o
        switches = sum(a != b for a, b in zip(sides, sides[1:]))  # a random order switches sides about half the time
        assert abs(switches - 263.5) < 4 * math.sqrt(527 / 4), switches
    assert sum(p.reference_right for p in plan if p.opponent == CATCH) == 132
    opponents_in_order = [p.opponent for p in real[:200]]
    assert len(set(opponents_in_order)) == 5  # shuffled, not blocked by opponent
    assert plan_pairs(0, common, ref_ids, 0.1) == plan
    assert plan_pairs(1, common, ref_ids, 0.1) != plan
    order = rater_order(len(plan), 0, "alice")
    assert sorted(order) == list(range(len(plan))) and order == rater_order(len(plan), 0, "alice")
    assert order != rater_order(len(plan), 0, "bob") and order != rater_order(len(plan), 1, "alice")


def test_media_urls_are_percent_encoded():
    """Sample ids are safe folder names but may hold URL syntax (`#`, `?`, `%`, spaces)."""
    p = Pair("x", "a#b ?%", "", "media/src/a#b ?%/source.mp4", "media/src/a#b ?%/edited.png", "media/v/1.mp4",
             "media/v/2.mp4", "videoshop", "bdia", "videoshop", "bdia")
    urls = p.urls("/")
    assert urls["source"] == "/media/src/a%23b%20%3F%25/source.mp4" and urls["left"] == "/media/v/1.mp4"
    from urllib.parse import unquote

    assert unquote(urls["edited_frame"]) == "/" + p.edited_frame
