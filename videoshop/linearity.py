"""Near-linearity of SVD's denoising trajectory (paper Sec. 3.5, Fig. 3).

For each video, SVD generates from the video's first frame (svd_no_src's settings, full schedule) and every
state x_t is recorded; the cosine similarity of (x_t − x₀) and (x_t' − x₀), x₀ the final clean latent, forms a
steps×steps matrix. Matrices are averaged over videos; the three summary figures are read off the mean matrix:
all pairs (t ≠ t'), consecutive steps, and the minimum over consecutive steps (paper, 100 videos:
0.9282, 0.9919, 0.9107).

    python -m videoshop.linearity dataset=sample models=tiny [dataset.limit=N] [method.steps=25]

writes cosine.npy, cosine.png and linearity.json under results_dir/linearity/<dataset>_<models>/, where
`python run.py stage=report` finds it and plots it beside the paper's figures.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

from reports.paper import paper_linearity


def cosine_matrix(states: list[torch.Tensor]) -> np.ndarray:
    """Cosine similarity of every pair of displacements (x_t − x₀), x₀ = states[-1]; one row per noisy state."""
    d = torch.stack([(s - states[-1]).flatten().double() for s in states[:-1]])
    d = d / d.norm(dim=1, keepdim=True)
    return (d @ d.T).cpu().numpy()


def summary(m: np.ndarray) -> dict[str, float]:
    """The paper's three figures from a cosine matrix."""
    n = m.shape[0]
    consecutive = np.diag(m, 1)
    return {"all_pairs": float(m[~np.eye(n, dtype=bool)].mean()), "consecutive_mean": float(consecutive.mean()),
            "consecutive_min": float(consecutive.min())}


def plot(m: np.ndarray, path: Path, title: str) -> None:
    """Save the cosine matrix as a heat map (rows and columns: denoising steps) to `path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4.2))
    im = ax.imshow(m, vmin=min(0.0, float(m.min())), vmax=1.0, cmap="viridis")
    ax.set_xlabel("denoising step t'")
    ax.set_ylabel("denoising step t")
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, label="cos(x_t − x₀, x_t' − x₀)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def analyze(cfg) -> dict:
    """Mean cosine matrix and summary over the dataset of `cfg`, written under results_dir."""
    from harness.cache import instantiate_cached
    from harness.runner import resolve_device
    from videoshop.svd import resize_frames

    device = resolve_device(cfg.device)
    dataset = instantiate_cached(cfg.dataset)
    method = instantiate_cached(cfg.method, device=device)
    mats = []
    for sid in dataset.ids():
        sample = dataset.load(sid)
        states: list[torch.Tensor] = []
        image = resize_frames(sample.source[:1], method.size)[0]
        method.latents(image, method.num_frames, int(cfg.seed), trajectory=states)  # the backbone's clip length
        mats.append(cosine_matrix(states))
    mean = np.mean(mats, axis=0)
    out = Path(cfg.results_dir) / "linearity" / f"{cfg.dataset.name}_{cfg.models.name}"
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / "cosine.npy", mean)
    result = {"dataset": str(cfg.dataset.name), "models": str(cfg.models.name), "tiny": bool(cfg.models.tiny),
              "videos": len(mats), "steps": int(mean.shape[0]), **summary(mean),
              "per_video": [summary(m) for m in mats], "paper": paper_linearity()}
    (out / "linearity.json").write_text(json.dumps(result, indent=2))
    s = summary(mean)
    plot(mean, out / "cosine.png", f"{cfg.models.name} on {cfg.dataset.name} ({len(mats)} videos)\nall pairs "
         f"{s['all_pairs']:.4f}, consecutive {s['consecutive_mean']:.4f}, min {s['consecutive_min']:.4f}")
    result["dir"] = str(out)
    return result


def main(argv: list[str]) -> dict:
    """Compose `method=svd_no_src` plus the command-line overrides, analyze, and print the figures beside the paper's."""
    import run

    cfg = run.compose("method=svd_no_src", *argv)
    result = analyze(cfg)
    paper = paper_linearity()
    print(f"linearity of {result['models']} on {result['dataset']} ({result['videos']} videos, {result['steps']} steps): "
          f"all pairs {result['all_pairs']:.4f} (paper {paper['all_pairs']}), consecutive {result['consecutive_mean']:.4f} "
          f"(paper {paper['consecutive_mean']}), min consecutive {result['consecutive_min']:.4f} (paper "
          f"{paper['consecutive_min']}) -> {result['dir']}")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
