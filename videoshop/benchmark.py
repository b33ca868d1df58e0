"""Time Videoshop edits at the paper's size with full-size, architecture-equal, random-weight SVD components.

    python -m videoshop.benchmark                       14 × 576×1024, 25 steps, strength 0.55 (fp16 on CUDA)
    python -m videoshop.benchmark --frames 2 --height 64 --width 128 --steps 4     a reduced CPU measurement
    python -m videoshop.benchmark method.guidance=2     any other override of the composed config
    python -m videoshop.benchmark --throughput 8 speed=fast    then 8 edits of distinct inputs, saved like a run's

The editor is built from the composed config (`method=videoshop models=svd` plus the overrides: settings, size,
frame count and seed are the config's), with its backbone swapped for seeded random weights of SVD's full
architecture. `--repeats` edits run on random inputs; the first warms up (kernel selection, allocator) and the
last is reported. Prints seconds per edit (the whole edit, timed by `harness.runner.edit_one` as every row's
`seconds`), its phases (`info["phases"]`) and the sampling loops alone (inversion + generation), seconds per
UNet call for the inversion (batch 1) and the CFG generation (batch 2), and peak memory; with `--throughput N`, the
steady state of a run, in turn and with `overlap` (edits per hour, loading and warm-up excluded, the mean time of
every phase, and the mean time between edits: the GPU's idle time per sample). Random weights change no shape or
operation count, so the timings stand for real SVD (only speed, not output, is meaningful).
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from harness.types import EditSample
from videoshop.models import SVD_FULL


def compose_config(overrides: list[str]):
    """The harness config for `method=videoshop models=svd` plus `overrides`, as run.py composes it."""
    import run

    return run.compose("method=videoshop", "models=svd", *overrides)


def measure(overrides: list[str] = (), repeats: int = 2, architecture: dict | None = None, throughput: int = 0) -> dict:
    """Build the configured editor on random SVD weights (`architecture`: unet/vae/clip configs, default SVD's full
    size, `SVD_FULL`), run `repeats` edits, and return the last one's timings; with `throughput` > 0 also a run of
    that many further edits of distinct inputs run as `stage=edit` runs them (`steady_state`)."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from harness.runner import edit_one, resolve_device

    cfg = compose_config(list(overrides))
    device = resolve_device(cfg.device)
    entry = OmegaConf.to_container(cfg.models.svd_backbone, resolve=True)
    backbone = {"tiny": True, "seed": 0, "dtype": entry["dtype"], "num_frames": entry["num_frames"],
                **(architecture or SVD_FULL)}
    t0 = time.perf_counter()
    method = instantiate(cfg.method, backbone=backbone, device=device)
    load_s = time.perf_counter() - t0
    (height, width), frames = method.size, method.num_frames
    rng = np.random.default_rng(0)
    source = rng.integers(0, 256, (frames, height, width, 3), dtype=np.uint8)
    sample = EditSample("benchmark", source, rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
    c = method.svd
    calls: dict[int, list[float]] = {}
    forward = c.counter.forward

    def timed(*args, **kwargs):
        """The counter's forward, timed per call and filed by batch size (1: inversion, 2: CFG generation)."""
        if c.device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        out = forward(*args, **kwargs)
        if c.device.type == "cuda":
            torch.cuda.synchronize()
        calls.setdefault(int(args[0].shape[0]), []).append(time.perf_counter() - t)
        return out

    c.counter.forward = timed
    cuda = c.device.type == "cuda"
    runs = []
    for _ in range(max(1, repeats)):
        calls.clear()
        out, costs, _ = edit_one(method, sample, int(cfg.seed), str(device))
        runs.append((out, costs))
    out, costs = runs[-1]
    phases = dict(out.info["phases"])
    per_call = lambda b: float(np.mean(calls[b])) if calls.get(b) else None  # noqa: E731
    result = {
        "device": torch.cuda.get_device_name(c.device) if cuda else f"cpu ({torch.get_num_threads()} threads)",
        "dtype": str(c.dtype), "frames": frames, "height": height, "width": width, "seed": int(cfg.seed),
        "method_config": {k: v for k, v in OmegaConf.to_container(cfg.method, resolve=True).items()
                          if k not in ("backbone", "_target_", "device")},
        "nfe": out.nfe, "load_s": load_s,
        "repeats": len(runs), "reported": "last (warm)" if len(runs) > 1 else "only (cold: includes warm-up)",
        "seconds_per_edit": costs.seconds, "first_edit_seconds": runs[0][1].seconds, "phases": phases,
        "loops_s": phases["invert"] + phases["generate"],
        "seconds_per_unet_call_inversion": per_call(1), "unet_calls_inversion": len(calls.get(1, [])),
        "seconds_per_unet_call_generation": per_call(2), "unet_calls_generation": len(calls.get(2, [])),
        "peak_mem_mb": costs.peak_mem_mb, "peak_mem_kind": f"{'cuda max allocated' if cuda else 'peak RSS'} (last edit)",
    }
    result["throughput"] = steady_state(method, sample, int(cfg.seed), str(device), throughput) if throughput > 0 else None
    return result


def steady_state(method, like: EditSample, seed: int, device: str, n: int) -> dict:
    """`n` edits of distinct random inputs shaped like `like`, run as `stage=edit` runs them (each read from a sample
    folder, edited, saved and its row written; no metrics), once in turn and once with `overlap`: for each, edits per
    hour (loading and warm-up excluded), the mean seconds of every phase of an edit, and the mean time between edits
    (reading and writing that did not run beside an edit), so the GPU's idle time per sample."""
    import tempfile
    from pathlib import Path

    from data.folder import FolderDataset
    from data.video_io import write_image, write_video_lossless
    from harness.results import RunDir
    from harness.runner import Job, Suite

    rng = np.random.default_rng(1)
    out: dict = {"edits": n}
    with tempfile.TemporaryDirectory(prefix="benchmark-run-") as tmp:
        inputs = Path(tmp) / "inputs"
        for i in range(n):
            write_video_lossless(inputs / f"throughput{i}" / "source.mkv",
                                 rng.integers(0, 256, like.source.shape, dtype=np.uint8), like.fps)
            write_image(inputs / f"throughput{i}" / "edited.png",
                        rng.integers(0, 256, like.edited_frame.shape, dtype=np.uint8))
        for mode, overlap in (("in_turn", False), ("overlap", True)):
            dataset = FolderDataset(inputs, num_frames=like.source.shape[0])
            run_dir = RunDir(Path(tmp) / mode)
            counts = {"ok": 0, "nan": 0, "failed": 0, "skipped": 0}
            job = Job("edit", dataset, method, Suite({}, {}), "none", run_dir, seed, device, counts, overlap)
            t0 = time.perf_counter()
            job.run(dataset.ids())
            wall = time.perf_counter() - t0
            rows = run_dir.rows()
            if counts["ok"] != n:
                raise RuntimeError(f"{mode}: {counts['failed']} of {n} edits failed: "
                                   f"{[r.error for r in rows if r.status == 'failed'][:1]}")
            totals: dict[str, float] = {}
            for r in rows:
                for name, seconds in r.info["phases"]:
                    totals[name] = totals.get(name, 0.0) + seconds
            edits_s = sum(r.costs.seconds for r in rows)
            out[mode] = {"seconds": wall, "edits_per_hour": 3600 * n / wall,
                         "mean_phase_s": {k: v / n for k, v in totals.items()},
                         "mean_between_edits_s": (wall - edits_s) / n}
    return out


def main(argv: list[str] | None = None) -> dict:
    """Parse the command line, measure, print the figures as JSON and return them."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frames", type=int, help="frames of the random clip (default: models.svd_backbone.num_frames)")
    p.add_argument("--height", type=int, help="working height (default: the config's, 576)")
    p.add_argument("--width", type=int, help="working width (default: the config's, 1024)")
    p.add_argument("--steps", type=int, help="Euler steps of the full schedule (default: the config's, 25)")
    p.add_argument("--strength", type=float, help="fraction of the schedule used (default: the config's, 0.55)")
    p.add_argument("--repeats", type=int, default=2, help="edits to run; the first warms up, the last is reported")
    p.add_argument("--device", help="cpu | cuda (default: the config's device, auto)")
    p.add_argument("--throughput", type=int, default=0, help="then N edits of distinct inputs run as a run "
                                                                 "runs them, in turn and with overlap: edits per hour, "
                                                                 "time per phase, time between edits")
    p.add_argument("overrides", nargs="*", help="further config overrides, e.g. method.guidance=2")
    a = p.parse_args(argv)
    flags = {"method.num_frames": a.frames, "method.height": a.height, "method.width": a.width,
             "method.steps": a.steps, "method.strength": a.strength, "device": a.device}
    overrides = [f"{k}={v}" for k, v in flags.items() if v is not None] + list(a.overrides)
    result = measure(overrides, a.repeats, throughput=a.throughput)
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
