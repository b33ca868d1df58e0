"""Time one Videoshop edit at the paper's size with full-size, architecture-equal, random-weight SVD components.

    python -m videoshop.benchmark                       14 × 576×1024, 25 steps, strength 0.55 (fp16 on CUDA)
    python -m videoshop.benchmark --frames 2 --height 64 --width 128 --steps 4     a reduced CPU measurement

Prints seconds per edit (encode + inversion + generation, as the release times it), seconds per UNet call,
VAE encode/decode seconds and peak memory. Random weights change no shape or operation count, so the timings
stand for real SVD (the inputs are random too, so only speed, not output, is meaningful).
"""
from __future__ import annotations

import argparse
import json
import resource
import time

import numpy as np
import torch

from harness.types import EditSample
from videoshop.models import SVD_FULL
from videoshop.pipeline import Videoshop


def measure(frames: int, height: int, width: int, steps: int, strength: float, device: str, repeats: int = 1) -> dict:
    backbone = {"tiny": True, "seed": 0, "dtype": "auto", **SVD_FULL}
    t0 = time.perf_counter()
    method = Videoshop("videoshop", backbone, device=device, height=height, width=width, steps=steps, strength=strength)
    load_s = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    source = rng.integers(0, 256, (frames, height, width, 3), dtype=np.uint8)
    sample = EditSample("benchmark", source, rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
    calls: list[float] = []
    counter, forward = method.svd.counter, method.svd.counter.forward

    def timed(*args, **kwargs):
        method._sync()
        t = time.perf_counter()
        out = forward(*args, **kwargs)
        method._sync()
        calls.append(time.perf_counter() - t)
        return out

    counter.forward = timed
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    runs = []
    for _ in range(repeats):
        calls.clear()
        out = method.edit(sample, 42)
        runs.append(out)
    out = runs[-1]
    peak = (torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda")
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return {
        "device": torch.cuda.get_device_name() if device.startswith("cuda") else f"cpu ({torch.get_num_threads()} threads)",
        "dtype": str(method.svd.dtype), "frames": frames, "height": height, "width": width, "steps": steps,
        "strength": strength, "nfe": out.nfe, "load_s": load_s,
        "seconds_per_edit": out.seconds, "seconds_per_unet_call": float(np.mean(calls)),
        "vae_encode_s": out.info["encode_s"], "vae_decode_s": out.info["decode_s"],
        "peak_mem_mb": peak, "peak_mem_kind": "cuda max allocated" if device.startswith("cuda") else "process max RSS",
    }


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frames", type=int, default=14)
    p.add_argument("--height", type=int, default=576)
    p.add_argument("--width", type=int, default=1024)
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--strength", type=float, default=0.55)
    p.add_argument("--repeats", type=int, default=1, help="edits to run; the last one is reported (the first warms up)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a = p.parse_args(argv)
    result = measure(a.frames, a.height, a.width, a.steps, a.strength, a.device, a.repeats)
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
