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
    """A method's output: uint8 T×H×W×3 frames at the source's size, its UNet calls, and what else it reports
    (`info`, e.g. `info["phases"]`). Its time is not among them: the runner's clock is the one definition
    (`harness.method`)."""

    frames: np.ndarray
    nfe: int | None = None
    info: dict[str, Any] = field(default_factory=dict)


ROW_STATUSES = ("ok", "nan", "failed")


@dataclass
class ScoreRow:
    """One sample of one run: its status, scores and costs. What the report aggregates.

    `scores` holds the columns that apply to the sample; a column a metric left out (no mask for the `+`
    columns, no ground truth, a column added to the suite after the sample was scored) is *not applicable*
    and absent, and means are taken over the samples that have it. NaN is kept for non-finite edits.
    `suite` names the metric suite that scored the row (see `harness.runner.suite_id`).
    """

    sample_id: str
    status: str  # "ok", "nan" (the edit went non-finite) or "failed" (bad input or a crash; see `error`)
    scores: dict[str, float] = field(default_factory=dict)
    costs: Costs = field(default_factory=Costs)
    error: str | None = None
    edit_type: str | None = None
    info: dict[str, Any] = field(default_factory=dict)  # what the method reported (prompts, sizes, nfe split)
    suite: str | None = None

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["scores"] = {k: _json_float(v) for k, v in self.scores.items()}
        d["costs"] = {k: _json_float(v) if isinstance(v, float) else v for k, v in d["costs"].items()}
        return d

    @classmethod
    def from_json(cls, d: Any) -> "ScoreRow":
        """The row from its JSON; `ValueError` naming the key when a key is missing or of the wrong type."""
        if not isinstance(d, dict):
            raise ValueError(f"a row is a JSON object, got {type(d).__name__}")
        sid, status = d.get("sample_id"), d.get("status")
        if not isinstance(sid, str) or not sid:
            raise ValueError(f"sample_id must be a non-empty string, got {sid!r}")
        if status not in ROW_STATUSES:
            raise ValueError(f"status must be one of {', '.join(ROW_STATUSES)}, got {status!r}")
        raw_scores, c = d.get("scores", {}), d.get("costs", {})
        if not isinstance(raw_scores, dict) or not all(_number_or_null(v) for v in raw_scores.values()):
            raise ValueError("scores must be an object of numbers (null for NaN)")
        if not isinstance(c, dict) or not all(_number_or_null(c.get(k)) for k in ("seconds", "peak_mem_mb", "nfe")):
            raise ValueError("costs must be an object with numeric seconds, peak_mem_mb and nfe (or null)")
        for key in ("error", "edit_type", "suite"):
            if d.get(key) is not None and not isinstance(d[key], str):
                raise ValueError(f"{key} must be a string or null, got {type(d[key]).__name__}")
        if d.get("info") is not None and not isinstance(d["info"], dict):
            raise ValueError(f"info must be an object, got {type(d['info']).__name__}")
        scores = {str(k): (math.nan if v is None else float(v)) for k, v in raw_scores.items()}
        costs = Costs(
            seconds=math.nan if c.get("seconds") is None else float(c["seconds"]),
            peak_mem_mb=math.nan if c.get("peak_mem_mb") is None else float(c["peak_mem_mb"]),
            nfe=None if c.get("nfe") is None else int(c["nfe"]),
        )
        return cls(sid, status, scores, costs, d.get("error"), d.get("edit_type"), d.get("info") or {}, d.get("suite"))


def _number_or_null(v: Any) -> bool:
    return v is None or (isinstance(v, (int, float)) and not isinstance(v, bool))


def _json_float(v: float) -> float | None:
    """JSON has no NaN: store it as null, read back as NaN."""
    v = float(v)
    return None if not math.isfinite(v) else v
