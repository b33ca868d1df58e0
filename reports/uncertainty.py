"""How sure the report's numbers are: bootstrap intervals over samples, paired tests against a reference method,
and FVD's interval and noise floor from the per-video I3D features.

* A mean's interval is the percentile bootstrap over the samples that have the column (`report.uncertainty.
  resamples` resamples of the samples, with replacement); NaN when a sample is NaN, as the mean is.
* A method's difference to the reference method (`report.reference_method`, same dataset and models) is taken
  on the samples both runs finished and both have the column: `<metric>_diff` is the mean of the per-sample
  differences (method − reference), `<metric>_diff_lo/_hi` its paired-bootstrap interval, and `<metric>_p` the
  two-sided p-value of a paired sign-flip permutation test (exact under the null that each sample's two values
  are exchangeable). A difference is significant when p < `alpha`.
* FVD is a distance between two sets, so its interval resamples videos (each with its source and its edit) and
  recomputes the Fréchet distance from the stored features; its paired test swaps a video's edits between the
  two methods. The noise floor is the Fréchet distance between two disjoint random halves of the run's own N
  source videos (N/2 videos each, no edit at all), averaged over random splits: what FVD reads when nothing
  differs but the videos drawn. With N/2 videos per side it sits above the floor of an N-vs-N comparison.

Every random draw is seeded by `seed` and the names of the run(s) and column, so a run's numbers do not depend
on which other runs or columns the report holds.
"""
from __future__ import annotations

import math
import zipfile
import zlib
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from reports.columns import is_diagnostic
from reports.runs import Problems, ReportRun

#: The set-level column whose interval and floor come from per-video features, and those features' keys.
FVD_COLUMN = "fvd"
FVD_REAL, FVD_FAKE, FVD_WEIGHTS = "fvd.real", "fvd.fake", "fvd.i3d"
#: Recomputed FVD must equal the summary's within this relative tolerance, else the features are not the summary's.
FVD_MATCH_RTOL = 1e-6
#: Floats per batch of resampled feature sets (bounds memory: 2**23 float64 = 64 MiB per array).
CHUNK_FLOATS = 2**23
#: A permuted statistic ties the observed one within this fraction of the largest |difference| (round-off).
TIE_RTOL = 1e-9


@dataclass(frozen=True)
class UncertaintyConfig:
    """`report.reference_method` and `report.uncertainty.*` in conf/config.yaml."""

    confidence: float = 0.95
    resamples: int = 2000
    permutations: int = 2000
    fvd_resamples: int = 200
    fvd_permutations: int = 200
    fvd_floor_repeats: int = 100
    seed: int = 0
    alpha: float = 0.05
    reference_method: str = "videoshop"

    @classmethod
    def from_config(cls, cfg) -> "UncertaintyConfig":
        """From the `report` config node (None: the defaults)."""
        if cfg is None:
            return cls()
        node = dict(cfg.get("uncertainty") or {})
        if cfg.get("reference_method"):
            node["reference_method"] = str(cfg["reference_method"])
        return cls(**node)


@dataclass(frozen=True)
class Paired:
    """A method's difference to the reference on their common samples: mean difference, its interval, p, count."""

    diff: float
    lo: float
    hi: float
    p: float
    n: int


NOT_PAIRED = Paired(math.nan, math.nan, math.nan, math.nan, 0)


def seeded(seed: int, *names: str) -> np.random.Generator:
    """A generator seeded by `seed` and the names (runs, column): the same numbers whatever else the report holds."""
    return np.random.default_rng([seed, *(zlib.crc32(n.encode()) for n in names)])


def percentile_interval(stats: np.ndarray, confidence: float) -> tuple[np.ndarray, np.ndarray]:
    """The central `confidence` range of `stats` along its last axis (NaN where any is NaN)."""
    tail = 50 * (1 - confidence)
    lo, hi = np.percentile(stats, [tail, 100 - tail], axis=-1)
    return lo, hi


def bootstrap_means(values: np.ndarray, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """Means of `resamples` bootstrap resamples of the last axis of `values` (…, n) -> (…, resamples), as one
    product with the resamples' counts of each sample; the resamples are shared by the leading axes."""
    n = values.shape[-1]
    picks = rng.integers(0, n, (resamples, n)) + n * np.arange(resamples)[:, None]
    counts = np.bincount(picks.ravel(), minlength=resamples * n).reshape(resamples, n)
    return values @ counts.T / n


def mean_interval(values: np.ndarray, cfg: UncertaintyConfig, rng: np.random.Generator) -> tuple[float, float]:
    """The percentile-bootstrap interval of the mean of `values` (NaN without values or with a NaN among them)."""
    values = np.asarray(values, float)
    if values.size == 0:
        return math.nan, math.nan
    lo, hi = percentile_interval(bootstrap_means(values, cfg.resamples, rng), cfg.confidence)
    return float(lo), float(hi)


def _p_value(null: np.ndarray, observed: float, scale: float) -> float:
    """Two-sided Monte-Carlo p-value: (1 + #|null| >= |observed|) / (1 + #null), ties within round-off counted."""
    extreme = np.abs(null) >= abs(observed) - TIE_RTOL * scale
    return float((1 + extreme.sum()) / (1 + null.size))


def sign_flip_p(d: np.ndarray, permutations: int, rng: np.random.Generator) -> float:
    """The paired permutation test of mean(d) = 0: each difference's sign flipped at random (NaN with a NaN in d)."""
    if d.size == 0 or not np.isfinite(d).all():
        return math.nan
    signs = rng.integers(0, 2, (permutations, d.size)) * 2.0 - 1.0
    return _p_value(signs @ d / d.size, float(d.mean()), float(np.abs(d).max()))


def paired_test(a: np.ndarray, b: np.ndarray, cfg: UncertaintyConfig, rng: np.random.Generator) -> Paired:
    """mean(a − b) over paired samples, its paired-bootstrap interval and the sign-flip p-value."""
    d = np.asarray(a, float) - np.asarray(b, float)
    if d.size == 0:
        return NOT_PAIRED
    lo, hi = mean_interval(d, cfg, rng)
    return Paired(float(d.mean()), lo, hi, sign_flip_p(d, cfg.permutations, rng), int(d.size))


def frechet_distances(real: np.ndarray, fake: np.ndarray, ddof: int = 1) -> np.ndarray:
    """The Fréchet distance of metrics.fvd for stacks of sets, real and fake (…, n, d) -> (…): the Gaussians'
    means and covariances (normalised by n − ddof, as the FVD convention says), with tr((S1 S2)^½) as the nuclear norm of
    (centred real)(centred fake)ᵀ / (n − ddof), which is exact for covariances and needs no matrix square root. With
    more videos than features each centred set is first reduced to its d×d QR factor (same Gram matrix)."""
    n, d = real.shape[-2:]
    mr, mf = real.mean(-2), fake.mean(-2)
    rc, fc = real - mr[..., None, :], fake - mf[..., None, :]
    if n > d:
        rc, fc = np.linalg.qr(rc, mode="r"), np.linalg.qr(fc, mode="r")
    nuclear = np.linalg.svd(rc @ np.swapaxes(fc, -1, -2), compute_uv=False).sum(-1)
    spread = (rc**2).sum((-2, -1)) + (fc**2).sum((-2, -1)) - 2 * nuclear
    return np.maximum(0.0, ((mr - mf) ** 2).sum(-1) + spread / (n - ddof))


def _centred(g: np.ndarray) -> np.ndarray:
    """A stack of Gram blocks x yᵀ -> (x − mean x)(y − mean y)ᵀ."""
    return g - g.mean(-1, keepdims=True) - g.mean(-2, keepdims=True) + g.mean((-2, -1), keepdims=True)


def _gram_distances(gram: np.ndarray, a: np.ndarray, b: np.ndarray, ddof: int) -> np.ndarray:
    """frechet_distances of the row subsets a, b (…, m) of a feature matrix, from its Gram matrix: the same terms
    as m×m blocks, so a subset costs O(m²) plus one m×m SVD whatever the feature size."""
    aa, bb, ab = (gram[x[..., :, None], y[..., None, :]] for x, y in ((a, a), (b, b), (a, b)))
    m = a.shape[-1]
    means = aa.mean((-2, -1)) + bb.mean((-2, -1)) - 2 * ab.mean((-2, -1))
    trace = lambda g: np.trace(g, axis1=-2, axis2=-1) - g.sum((-2, -1)) / m  # noqa: E731  tr of the centred block
    nuclear = np.linalg.svd(_centred(ab), compute_uv=False).sum(-1)
    return np.maximum(0.0, means + (trace(aa) + trace(bb) - 2 * nuclear) / (m - ddof))


def subset_distances(z: np.ndarray, a: np.ndarray, b: np.ndarray, ddof: int = 1) -> np.ndarray:
    """The Fréchet distance between rows a[i] and rows b[i] of features z (N×d) for every i (a, b: k×m row
    indices), in batches: from z's Gram matrix when m <= d, else from the features."""
    z = z - z.mean(0)  # a common shift: no distance changes, and the Gram terms do not cancel large norms
    m, d = a.shape[1], z.shape[1]
    gram = z @ z.T if m <= d else None
    out = np.empty(len(a))
    for s in _chunks(len(a), m, m if gram is not None else d):
        out[s] = (_gram_distances(gram, a[s], b[s], ddof) if gram is not None
                  else frechet_distances(z[a[s]], z[b[s]], ddof))
    return out


def _chunks(count: int, m: int, width: int) -> Iterator[slice]:
    """Slices of `count` stacked m×width blocks, each batch within CHUNK_FLOATS."""
    step = max(1, CHUNK_FLOATS // max(1, 3 * m * width))
    for start in range(0, count, step):
        yield slice(start, min(count, start + step))


def _recentred(stats: np.ndarray, estimate: float, confidence: float) -> tuple[float, float]:
    """The percentile interval of resampled Fréchet distances moved by their mean's excess over the estimate:
    resampling with replacement repeats videos, which inflates a Fréchet distance (fewer distinct videos), so the
    raw percentiles sit above the value they are about."""
    lo, hi = percentile_interval(stats, confidence)
    bias = float(stats.mean()) - estimate
    return float(lo) - bias, float(hi) - bias


def fvd_interval(real: np.ndarray, fake: np.ndarray, cfg: UncertaintyConfig, rng: np.random.Generator,
                 ddof: int = 1) -> tuple[float, float]:
    """FVD's bootstrap interval: videos resampled with replacement (each keeps its source and edit), FVD recomputed,
    the percentile interval recentred on FVD (`_recentred`)."""
    n = len(real)
    if n < 2:
        return math.nan, math.nan
    rows = rng.integers(0, n, (cfg.fvd_resamples, n))
    z = np.concatenate([real, fake])
    estimate = float(subset_distances(z, np.arange(n)[None], np.arange(n, 2 * n)[None], ddof)[0])
    return _recentred(subset_distances(z, rows, rows + n, ddof), estimate, cfg.confidence)


def fvd_noise_floor(real: np.ndarray, cfg: UncertaintyConfig, rng: np.random.Generator,
                    ddof: int = 1) -> tuple[float, float, float]:
    """The mean Fréchet distance between two disjoint random halves of the source videos (N/2 each, N//2 when N is
    odd), over `fvd_floor_repeats` splits, and the central `confidence` range of those distances."""
    half = len(real) // 2
    if half < 2:
        return math.nan, math.nan, math.nan
    order = rng.permuted(np.tile(np.arange(len(real)), (cfg.fvd_floor_repeats, 1)), axis=1)
    dist = subset_distances(real, order[:, :half], order[:, half:2 * half], ddof)
    lo, hi = percentile_interval(dist, cfg.confidence)
    return float(dist.mean()), float(lo), float(hi)


def fvd_paired(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray], cfg: UncertaintyConfig,
               rng: np.random.Generator, ddof: int = 1) -> Paired:
    """FVD(a) − FVD(b) on the same videos ((real, fake) features each, rows aligned): its paired-bootstrap interval
    (the same videos resampled for both, recentred as `fvd_interval`) and a permutation p-value (each video's two
    edits swapped at random)."""
    n = len(a[0])
    if n < 2:
        return NOT_PAIRED
    z = np.concatenate([*a, *b])  # rows: a's sources, a's edits, b's sources, b's edits
    ra, fa, rb, fb = (k * n for k in range(4))

    def diffs(rows: np.ndarray, swap: np.ndarray) -> np.ndarray:
        return (subset_distances(z, rows + ra, rows + np.where(swap, fb, fa), ddof)
                - subset_distances(z, rows + rb, rows + np.where(swap, fa, fb), ddof))

    whole = np.arange(n)[None]
    diff = float(diffs(whole, np.zeros_like(whole, bool))[0])
    rows = rng.integers(0, n, (cfg.fvd_resamples, n))
    lo, hi = _recentred(diffs(rows, np.zeros_like(rows, bool)), diff, cfg.confidence)
    swap = rng.integers(0, 2, (cfg.fvd_permutations, n)).astype(bool)
    null = diffs(np.repeat(whole, cfg.fvd_permutations, 0), swap)
    return Paired(diff, lo, hi, _p_value(null, diff, max(abs(diff), 1.0)), n)


@dataclass
class FvdFeatures:
    """A run's per-video FVD features, rows aligned with `ids`, and the I3D weights they were made with."""

    ids: list[str]
    real: np.ndarray
    fake: np.ndarray
    weights: str
    ddof: int  # covariance normalisation of the run's FVD convention (metrics.fvd.CONVENTIONS)

    def rows(self, ids: list[str]) -> tuple[np.ndarray, np.ndarray]:
        where = {sid: i for i, sid in enumerate(self.ids)}
        take = [where[sid] for sid in ids]
        return self.real[take], self.fake[take]


def fvd_features(run: ReportRun, problems: Problems) -> FvdFeatures | None:
    """The features behind the run's FVD (its "ok" samples' features.npz, as the runner computes it), checked
    against the summary's FVD; None, with a note, when they cannot be read or do not give the summary's value."""
    fvd = run.summary.get("scores", {}).get(FVD_COLUMN)
    if fvd is None or not math.isfinite(fvd):
        return None
    ids, real, fake, weights = [], [], [], set()
    for row in run.rows:
        if row.status != "ok":
            continue
        try:
            f = run.dir.load_features(row.sample_id) or {}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:  # a damaged file, or an unsafe sample id
            problems.file(run.dir.root / "samples" / row.sample_id / "features.npz",
                          f"unreadable ({type(e).__name__}: {e}): no FVD interval for the run")
            return None
        if FVD_REAL in f and FVD_FAKE in f:
            ids.append(row.sample_id)
            real.append(np.asarray(f[FVD_REAL], np.float64).ravel())
            fake.append(np.asarray(f[FVD_FAKE], np.float64).ravel())
            weights.add(str(f.get(FVD_WEIGHTS, "unrecorded")))
    if len(ids) < 2 or len({len(r) for r in real + fake}) != 1 or len(weights) != 1:
        problems.note(f"run {run.where}: its features.npz files do not hold FVD features of one I3D and one size for "
                      f"2 or more videos: no FVD interval")
        return None
    from metrics.fvd import CONVENTIONS, DEFAULT_CONVENTION, frechet_distance  # here: metrics.fvd imports torch

    convention = run.summary.get("metric_info", {}).get("fvd_convention") or DEFAULT_CONVENTION
    if convention not in CONVENTIONS:
        problems.note(f"run {run.where}: unknown FVD convention {convention!r}: no FVD interval")
        return None
    feats = FvdFeatures(ids, np.stack(real), np.stack(fake), weights.pop(), CONVENTIONS[convention].ddof)
    again = frechet_distance(feats.real, feats.fake, convention)
    if not math.isclose(again, fvd, rel_tol=FVD_MATCH_RTOL, abs_tol=FVD_MATCH_RTOL):
        problems.note(f"run {run.where}: FVD from its features.npz files ({again:.4f}) is not its summary's ({fvd:.4f}); "
                      f"rescore it (`{run.rescore_command()}`): no FVD interval")
        return None
    return feats


def sample_values(run: ReportRun) -> dict[str, dict[str, float]]:
    """column -> sample id -> value over the run's finished samples that have the column; a status-"nan" sample
    is NaN in every column (see reports.tables)."""
    done = [r for r in run.rows if r.status in ("ok", "nan")]
    out: dict[str, dict[str, float]] = {}
    for name in sorted({k for r in done for k in r.scores}):
        out[name] = {r.sample_id: r.scores.get(name, math.nan) for r in done if name in r.scores or r.status == "nan"}
    return out


def _put_paired(rec: dict, name: str, p: Paired) -> None:
    rec.update({f"{name}_diff": p.diff, f"{name}_diff_lo": p.lo, f"{name}_diff_hi": p.hi, f"{name}_p": p.p,
                f"n_{name}_diff": p.n})


def uncertainty_records(runs: list[ReportRun], columns: dict[str, dict], cfg: UncertaintyConfig,
                        problems: Problems) -> list[dict]:
    """Per run (in order): `<metric>_lo/_hi` for every metric (not the bookkeeping columns), FVD's interval and
    `fvd_floor`(`_lo/_hi`), and against the reference run of the same dataset and models `<metric>_diff`,
    `_diff_lo/_hi`, `_p` and `n_<metric>_diff` (the reference's own row has none)."""
    values = [sample_values(run) for run in runs]
    feats = [fvd_features(run, problems) for run in runs]
    refs = {(r.dataset, r.models): i for i, r in enumerate(runs) if r.method == cfg.reference_method}
    out = []
    for i, run in enumerate(runs):
        rec: dict[str, float] = {}
        for name, by_id in values[i].items():
            if not is_diagnostic(name, columns):
                rec[f"{name}_lo"], rec[f"{name}_hi"] = mean_interval(np.fromiter(by_id.values(), float, len(by_id)),
                                                                     cfg, seeded(cfg.seed, run.where, name))
        if feats[i] is not None:
            f = feats[i]
            rec["fvd_lo"], rec["fvd_hi"] = fvd_interval(f.real, f.fake, cfg, seeded(cfg.seed, run.where, FVD_COLUMN), f.ddof)
            rec["fvd_floor"], rec["fvd_floor_lo"], rec["fvd_floor_hi"] = fvd_noise_floor(
                f.real, cfg, seeded(cfg.seed, run.where, "fvd_floor"), f.ddof)
        j = refs.get((run.dataset, run.models))
        if j is not None and j != i:
            ref = runs[j]
            for name, by_id in values[i].items():
                if is_diagnostic(name, columns) or name not in values[j]:
                    continue
                theirs = values[j][name]
                common = sorted(set(by_id) & set(theirs))
                _put_paired(rec, name, paired_test(np.array([by_id[s] for s in common]), np.array([theirs[s] for s in common]),
                                                       cfg, seeded(cfg.seed, run.where, ref.where, name)))
            if feats[i] is not None and feats[j] is not None:
                _put_paired(rec, FVD_COLUMN, _fvd_against(run, feats[i], ref, feats[j], cfg, problems))
        out.append(rec)
    return out


def _fvd_against(run: ReportRun, mine: FvdFeatures, ref: ReportRun, theirs: FvdFeatures, cfg: UncertaintyConfig,
                 problems: Problems) -> Paired:
    """FVD's paired test of `run` against the reference run on the videos both have features of (one I3D)."""
    if mine.weights != theirs.weights or mine.real.shape[1] != theirs.real.shape[1] or mine.ddof != theirs.ddof:
        problems.note(f"run {run.where}: its FVD features come from other I3D weights or another FVD convention than "
                      f"{ref.where}'s: no paired FVD test")
        return NOT_PAIRED
    common = sorted(set(mine.ids) & set(theirs.ids))
    return fvd_paired(mine.rows(common), theirs.rows(common), cfg, seeded(cfg.seed, run.where, ref.where, FVD_COLUMN),
                      mine.ddof)
