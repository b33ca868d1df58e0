"""The metric suite against references: identities, scikit-image, closed forms, the sample track's truth."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf
from skimage.metrics import structural_similarity

from harness.metric import SetMetric
from metrics.clip import CLIPScores
from metrics.flow import DISFlow, FlowError
from metrics.fvd import FVD, frechet_distance_from_stats
from metrics.regions import FlowTracker, SampleCache, regions_for
from metrics.ssim import SSIM, frame_ssim, gaussian_kernel
from metrics.tifa import TIFA, load_questions, map_answer, tifa_score

REPO = Path(__file__).resolve().parents[1]
# The tiny models group as Hydra composes it (its entries interpolate `${models.*}`).
TINY = OmegaConf.to_container(OmegaConf.create({"models": OmegaConf.load(REPO / "conf/models/tiny.yaml")}), resolve=True)["models"]
FRAMES = 9  # I3D's minimum; fewer frames keep the tests fast


def short(sample, n: int = FRAMES):
    return dataclasses.replace(sample, source=sample.source[:n])


@pytest.fixture(scope="module")
def sample(sample_track):
    return short(sample_track.load("chelsea_color_ball"))


@pytest.fixture(scope="module")
def clip_metric():
    return CLIPScores(TINY["clip"], TINY["tracker"])


@pytest.fixture(scope="module")
def flow_metric():
    return FlowError(TINY["flow"], TINY["tracker"], size=TINY["flow_size"])


@pytest.mark.slow
def test_identity(sample_track, sample, clip_metric, flow_metric):
    """edited = source: clip_src 100, ssim 100, flow 0, flow_plus 0, fvd ~ 0."""
    src = sample.source
    clip = clip_metric.score(sample, src)
    assert clip["clip_src"] == pytest.approx(1.0, abs=1e-5)
    assert clip["clip_src_plus"] == pytest.approx(1.0, abs=1e-5)
    assert SSIM().score(sample, src)["ssim"] == pytest.approx(1.0)
    flow = flow_metric.score(sample, src)
    assert flow["flow"] == pytest.approx(0.0, abs=1e-6) and flow["flow_plus"] == pytest.approx(0.0, abs=1e-6)

    fvd = FVD(TINY["i3d"])
    samples = [sample] + [short(sample_track.load(s)) for s in ("retina_add_star", "gravel_remove_ball")]
    feats = [fvd.features(s, s.source) for s in samples]
    out = fvd.compute(feats)
    assert isinstance(fvd, SetMetric)
    spread = np.trace(np.cov(np.stack([f["real"] for f in feats]), rowvar=False))
    assert spread > 1e-3  # the features do vary between videos
    assert abs(out["fvd"]) < 1e-4 * spread and out["fvd_n"] == 3 and out["fvd_frames"] == FRAMES
    # ...and it does move when the edit differs from the source
    other = fvd.compute([fvd.features(s, s.source[::-1].copy()) for s in samples[:2]] + feats[2:])
    assert other["fvd"] > 1e-3 * spread


def test_ssim_matches_scikit_image(sample):
    rng = np.random.default_rng(0)
    noisy = np.clip(sample.source.astype(int) + rng.integers(-40, 40, sample.source.shape), 0, 255).astype(np.uint8)
    ref = np.mean([structural_similarity(a, b, channel_axis=-1, data_range=255, gaussian_weights=True, sigma=1.5,
                                         use_sample_covariance=False) for a, b in zip(noisy, sample.source)])
    assert SSIM().score(sample, noisy)["ssim"] == pytest.approx(ref, rel=1e-12)
    assert ref < 0.95


def _skimage_frames(a, b, sigma=1.5):
    return np.array([structural_similarity(x, y, channel_axis=-1, data_range=255, gaussian_weights=True, sigma=sigma,
                                           use_sample_covariance=False) for x, y in zip(a, b)])


@pytest.mark.parametrize("size", [(11, 11), (13, 40), (64, 112), (320, 576), (576, 1024)])
def test_torch_ssim_equals_scikit_image_on_random_frames(size):
    """The GPU path (torch, float64), run on CPU tensors, at the window's minimum, odd sizes and every size the
    datasets and tiny models use: scikit-image's numbers up to summation order (the GPU tolerance is 1e-4)."""
    rng = np.random.default_rng(size[0])
    a = rng.integers(0, 256, (1 if size[0] > 320 else 3, *size, 3), dtype=np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-60, 60, a.shape), 0, 255).astype(np.uint8)
    ref = _skimage_frames(a, b)
    assert np.abs(frame_ssim(a, b, batch=2).numpy() - ref).max() < 1e-12


def test_torch_ssim_equals_scikit_image_on_real_frames(sample):
    blurred = np.ascontiguousarray(sample.source[:, ::-1])  # a mirrored video: real content, low similarity
    for other, sigma in ((blurred, 1.5), (sample.source[::-1].copy(), 1.5), (blurred, 0.8)):
        ref = _skimage_frames(other, sample.source, sigma)
        assert np.abs(frame_ssim(other, sample.source, sigma).numpy() - ref).max() < 1e-12, sigma
    assert frame_ssim(sample.source, sample.source).numpy() == pytest.approx(1.0, abs=1e-12)


def test_ssim_window_matches_scipy():
    """scipy.ndimage's Gaussian (truncate 3.5: 11 taps at σ = 1.5) is the kernel: filtering a unit impulse gives it."""
    from scipy.ndimage import gaussian_filter1d

    for sigma in (1.5, 0.8, 2.0):
        k = gaussian_kernel(sigma).numpy()
        impulse = np.zeros(len(k))
        impulse[len(k) // 2] = 1
        assert np.abs(gaussian_filter1d(impulse, sigma, truncate=3.5, mode="constant") - k[::-1]).max() < 1e-15


def test_frechet_distance_closed_form():
    rng = np.random.default_rng(0)
    d = 6
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    a = rng.normal(size=(d, d))
    s1 = a @ a.T + np.eye(d)
    # S2 = c² S1  =>  (S1 S2)^½ = c S1  =>  d = |mu1 - mu2|² + tr(S1) (1 - c)²
    c = 1.7
    want = np.sum((mu1 - mu2) ** 2) + np.trace(s1) * (1 - c) ** 2
    assert frechet_distance_from_stats(mu1, s1, mu2, c ** 2 * s1) == pytest.approx(want, rel=1e-8)
    # diagonal covariances: sum of squared differences of the standard deviations
    v1, v2 = rng.uniform(0.5, 2, d), rng.uniform(0.5, 2, d)
    want = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(v1) - np.sqrt(v2)) ** 2)
    assert frechet_distance_from_stats(mu1, np.diag(v1), mu2, np.diag(v2)) == pytest.approx(want, rel=1e-8)
    # FVD.compute on sampled Gaussian features approaches the closed form
    n = 4000
    real = rng.multivariate_normal(mu1, np.diag(v1), n)
    fake = rng.multivariate_normal(mu2, np.diag(v2), n)
    fvd = FVD(TINY["i3d"])
    made = {"frames": np.asarray(14), "i3d": np.asarray(fvd.net.weights_id), "convention": np.asarray(fvd.convention_name)}
    got = fvd.compute([{"real": r, "fake": f, **made} for r, f in zip(real, fake)])
    assert got["fvd"] == pytest.approx(want, rel=0.1) and got["fvd_n"] == n
    # identical sets: the square root's round-off must not give a negative distance
    same = fvd.compute([{"real": r, "fake": r, **made} for r in real[:50]])
    assert 0.0 <= same["fvd"] < 1e-6
    # features made with other I3D weights or another convention (or not recorded) are not mixed into one FVD
    for key, other in (("i3d", "0" * 64), ("convention", "videogpt")):
        mixed = [{"real": r, "fake": f, **made} for r, f in zip(real[:50], fake[:50])]
        assert np.isfinite(fvd.compute(mixed)["fvd"])
        mixed[3][key] = np.asarray(other)
        assert np.isnan(fvd.compute(mixed)["fvd"])
        del mixed[3][key]
        assert np.isnan(fvd.compute(mixed)["fvd"])


def test_dis_epe_on_ground_truth_flow(sample_track):
    """DIS on source clips vs their exact flow: mean EPE over valid pixels below 0.75 px (measured about
    0.4 px over the track), every clip below 1.5 px, and far below the error of predicting no motion."""
    dis = DISFlow("medium")
    epes, zero = [], []
    for sid in ("astronaut_add_logo", "coffee_remove_cat", "hubble_appearance_horse", "rocket_appearance_horse"):
        s = sample_track.load(sid)
        gt, valid = s.truth.flow.astype(np.float32), s.truth.flow_valid
        err = np.linalg.norm(dis(s.source[:-1], s.source[1:]) - gt, axis=-1)[valid]
        epes.append(err.mean())
        zero.append(np.linalg.norm(gt, axis=-1)[valid].mean())
    assert np.mean(epes) < 0.75 and max(epes) < 1.5
    assert np.mean(epes) < 0.2 * np.mean(zero)


@pytest.mark.slow
def test_plus_variants_use_only_their_region(sample, clip_metric, flow_metric):
    masks = regions_for(sample, TINY["tracker"]).masks
    assert masks.any(axis=(1, 2)).all()
    rng = np.random.default_rng(1)
    edited = sample.source.copy()
    noise = rng.integers(0, 256, edited.shape, dtype=np.uint8)
    outside = np.where(masks[..., None], edited, noise)
    inside = np.where(masks[..., None], noise, edited)

    base_clip, base_flow = clip_metric.score(sample, edited), flow_metric.score(sample, edited)
    out_clip = clip_metric.score(sample, outside)
    in_clip, in_flow = clip_metric.score(sample, inside), flow_metric.score(sample, inside)
    assert out_clip["clip_tgt_plus"] == pytest.approx(base_clip["clip_tgt_plus"], abs=1e-6)
    assert in_clip["clip_src_plus"] == pytest.approx(base_clip["clip_src_plus"], abs=1e-6)
    # Flow+ (masked_epe) averages full-frame flows outside the region: noise inside moves it less than Flow
    assert base_flow["flow_plus"] == pytest.approx(0.0, abs=1e-6) and 0 < in_flow["flow_plus"] < in_flow["flow"]
    # plus_mode=blank_then_flow blanks the region before the flows: what is inside cannot reach Flow+ at all
    blanked = FlowError(TINY["flow"], TINY["tracker"], size=TINY["flow_size"], plus_mode="blank_then_flow")
    assert blanked.score(sample, inside)["flow_plus"] == pytest.approx(blanked.score(sample, edited)["flow_plus"], abs=1e-6)
    # the full-frame scores do see those pixels
    assert out_clip["clip_src"] < base_clip["clip_src"] - 1e-4
    assert in_flow["flow"] > base_flow["flow"] + 1e-4
    assert in_clip["region_cotracker"] == 0.0 and in_clip["region_skipped"] == 0.0 and in_flow["flow_region_skipped"] == 0.0


def _trigram_embed(texts):
    """A transparent stand-in sentence embedder: character-trigram counts, unit length."""
    import torch

    vocab: dict[str, int] = {}
    grams = [[t[i:i + 3] for i in range(len(t) - 2)] for t in (f"  {x.lower()} " for x in texts)]
    for g in grams:
        for x in g:
            vocab.setdefault(x, len(vocab))
    v = torch.zeros(len(texts), len(vocab))
    for i, g in enumerate(grams):
        for x in g:
            v[i, vocab[x]] += 1
    return torch.nn.functional.normalize(v, dim=-1)


def test_answer_to_choice_mapping():
    assert map_answer(" Yes", ["yes", "no"], _trigram_embed) == "yes"
    assert map_answer("reddish", ["blue", "red", "green"], _trigram_embed) == "red"
    assert map_answer("a pencil sketch", ["photo", "pencil drawing", "painting"], _trigram_embed) == "pencil drawing"


def test_tifa_on_canned_answers(sample_track, monkeypatch):
    questions = load_questions(REPO / "data/tifa/sample.json")
    assert set(questions) == set(sample_track.ids())
    qs = questions["chelsea_color_ball"]
    right = [q["answer"] for q in qs]
    wrong = [next(c for c in q["choices"] if c != q["answer"]) for q in qs]
    # frame 0 all right, frame 1 all wrong, frame 2 right except the first: (1 + 0 + (n-1)/n) / 3
    answers = [right, wrong, [wrong[0], *right[1:]]]
    n = len(qs)
    assert tifa_score(answers, qs, _trigram_embed) == pytest.approx((1 + 0 + (n - 1) / n) / 3)

    metric = TIFA(str(REPO / "data/tifa/sample.json"), TINY["vqa"], TINY["text_embed"])
    monkeypatch.setattr(metric, "answer", lambda frames, qtexts: [right if t % 2 == 0 else wrong for t in range(len(frames))])
    monkeypatch.setattr(metric, "embed", _trigram_embed)
    s = sample_track.load("chelsea_color_ball")
    assert metric.score(s, s.source)["tifa"] == pytest.approx(7 / 14)


def test_tiny_vqa_answers_every_frame_and_question(sample):
    metric = TIFA(str(REPO / "data/tifa/sample.json"), TINY["vqa"], TINY["text_embed"], max_new_tokens=3)
    out = metric.answer(sample.source[:2], ["is there a ball?", "what color is the ball?", "is there a cat?"])
    assert len(out) == 2 and all(len(f) == 3 and all(isinstance(a, str) for a in f) for f in out)
    assert metric.tiny


@pytest.mark.slow
def test_flow_tracker_iou_on_sample_track(sample_track):
    """The flow tracker (DIS) follows the frame-0 mask: mean IoU with the true masks >= 0.75 over the track
    (measured 0.82; fast small balls are its weak spot)."""
    tracker = FlowTracker({"kind": "dis", "dis": {"preset": "medium"}})
    ious = []
    for sid in sample_track.ids():
        s = sample_track.load(sid)
        got, truth = tracker(s.source, s.mask), s.truth.masks
        ious.append(np.mean([(a & b).sum() / max(1, (a | b).sum()) for a, b in zip(got, truth)]))
    assert np.mean(ious) >= 0.75


def test_source_caches_cover_a_method_by_method_sweep():
    """A sweep scores method after method over the dataset: each source's values are computed once, also for
    more samples than the old 8-entry cache held; a bounded cache keeps its first entries rather than cycling."""
    from harness.types import EditSample

    rng = np.random.default_rng(0)
    samples = [EditSample(f"s{i}", rng.integers(0, 256, (2, 8, 8, 3), dtype=np.uint8), np.zeros((8, 8, 3), np.uint8))
               for i in range(20)]
    value = np.zeros(2**17, np.uint8)  # 128 kB

    def sweep(cache, methods=3):
        calls = []
        for _ in range(methods):
            for s in samples:
                cache.get(s, "src", lambda: calls.append(s.id) or value)
        return calls

    assert sorted(sweep(SampleCache())) == sorted(s.id for s in samples)
    bounded = SampleCache(max_mb=5 * 128 / 1024)  # room for 5 values
    calls = sweep(bounded)
    assert len(bounded) == 5 and bounded.nbytes == 5 * value.nbytes
    assert len(calls) == 20 + 2 * 15 and not {"s0", "s4"} & set(calls[20:])


def test_benchmark_full_size_overrides_compose(compose):
    """--full-size names existing keys and the real backbone sizes (random weights, labelled tiny)."""
    from metrics.benchmark import FULL_SIZE

    m = compose("metrics=paper", *FULL_SIZE).models
    assert m.tiny and m.clip.model == "ViT-L-14" and m.flow.raft.arch == "raft_large" and m.flow.raft.num_flow_updates == 12
    assert list(m.flow_size) == [320, 576] and m.i3d.width == 1.0 and m.vqa.arch == "blip-vqa-capfilt-large" and m.text_embed.arch == "all-mpnet-base-v2"
