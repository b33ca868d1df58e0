"""The few types the whole harness passes around: an edit sample, an edited video with its costs, a score row."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np


class SampleError(ValueError):
    """Bad input for one sample; the message names the sample and the file."""

    def __init__(self, sample_id: str, path: Any, problem: str):
        self.sample_id, self.path, self.problem = sample_id, str(path), problem
        super().__init__(f"sample {sample_id!r}: {path}: {problem}")


@dataclass
class GroundTruth:
    """What the synthetic track knows by construction (all optional elsewhere)."""

    video: np.ndarray | None = None  # uint8 T×H×W×3, the correctly edited video
    masks: np.ndarray | None = None  # bool T×H×W, the edited region in every frame
    flow: np.ndarray | None = None  # float32 (T-1)×H×W×2, forward flow (dx, dy) of the source video
    flow_valid: np.ndarray | None = None  # bool (T-1)×H×W, pixels whose flow is unoccluded and exact


@dataclass
class EditSample:
    """One localized video edit: a source video and the user's edit of its first frame."""

    id: str
    source: np.ndarray  # uint8 T×H×W×3
    edited_frame: np.ndarray  # uint8 H×W×3, the edit of source[0]
    mask: np.ndarray | None = None  # bool H×W, the edited region of frame 0
    instruction: str = ""
    source_prompt: str | None = None
    target_prompt: str | None = None
    edit_type: str | None = None
    truth: GroundTruth | None = None
    fps: float = 7.0
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def num_frames(self) -> int:
        return int(self.source.shape[0])

    @property
    def size(self) -> tuple[int, int]:
        """(H, W) of the frames."""
        return int(self.source.shape[1]), int(self.source.shape[2])

    @property
    def target_video(self) -> np.ndarray | None:
        return None if self.truth is None else self.truth.video


@dataclass
class Costs:
    """What one edit cost. `nfe` counts denoiser forward calls (a CFG-batched call counts once)."""

    seconds: float = math.nan
    peak_mem_mb: float = math.nan
    nfe: int | None = None


@dataclass
class EditedVideo:
    """A method's output: uint8 T×H×W×3 frames at the source's size, plus what the method itself measured.

    `seconds` may be set by a method that times only part of its work (Videoshop's release times
    inversion + generation, not model loading or decoding); otherwise the runner's wall clock is used.
    """

    frames: np.ndarray
    nfe: int | None = None
    seconds: float | None = None
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class ScoreRow:
    """One sample of one run: its status, scores and costs. What the report aggregates."""

    sample_id: str
    status: str  # "ok" or "failed"
    scores: dict[str, float] = field(default_factory=dict)
    costs: Costs = field(default_factory=Costs)
    error: str | None = None
    edit_type: str | None = None
    info: dict[str, Any] = field(default_factory=dict)  # what the method reported (prompts, sizes, nfe split)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["scores"] = {k: _json_float(v) for k, v in self.scores.items()}
        d["costs"] = {k: _json_float(v) if isinstance(v, float) else v for k, v in d["costs"].items()}
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "ScoreRow":
        scores = {k: (math.nan if v is None else float(v)) for k, v in d.get("scores", {}).items()}
        c = d.get("costs", {})
        costs = Costs(
            seconds=math.nan if c.get("seconds") is None else float(c["seconds"]),
            peak_mem_mb=math.nan if c.get("peak_mem_mb") is None else float(c["peak_mem_mb"]),
            nfe=c.get("nfe"),
        )
        return cls(d["sample_id"], d["status"], scores, costs, d.get("error"), d.get("edit_type"), d.get("info") or {})


def _json_float(v: float) -> float | None:
    """JSON has no NaN: store it as null, read back as NaN."""
    v = float(v)
    return None if not math.isfinite(v) else v
