"""The `study:` section of conf/config.yaml as a typed record (every knob of building, serving and analyzing)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from study.types import QUESTIONS, StudyError

#: The paper's two questions (Table 4: editing quality judged given the instruction, the source and the edited
#: frame; video generation quality). The paper does not print its raters' exact wording; these are ours.
DEFAULT_QUESTIONS = {
    "editing": "Given the instruction, the source video and the edited first frame: which video carries out the edit better?",
    "video": "Which video has the better video quality (sharp, stable, natural motion)?",
}
#: Column names of an Amazon Mechanical Turk batch results CSV (HIT inputs `Input.*`, form fields `Answer.*`).
DEFAULT_CROWD_COLUMNS = {"rater": "WorkerId", "pair": "Input.pair_id", "editing": "Answer.editing",
                         "video": "Answer.video", "seconds": "WorkTimeInSeconds"}


@dataclass
class Settings:
    name: str = "videoshop_vs_baselines"
    dataset: str = "magicbrush"
    models: str = "svd"
    reference: str = "videoshop"
    against: list[str] = field(default_factory=lambda: ["bdia", "pix2video", "fatezero", "spacetime", "rave"])
    seed: int = 0
    tie_option: bool = False
    catch_rate: float = 0.1
    exclude_catch_failure_above: float = 0.25
    confidence: float = 0.95
    host: str = "127.0.0.1"
    port: int = 5000
    questions: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_QUESTIONS))
    crowd_base_url: str = ""
    crowd_columns: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_CROWD_COLUMNS))

    def __post_init__(self):
        if set(self.questions) != set(QUESTIONS):
            raise StudyError(f"study.questions must have exactly the keys {', '.join(QUESTIONS)}, got {sorted(self.questions)}")
        if not 0 <= self.catch_rate <= 1:
            raise StudyError(f"study.catch_rate must lie in [0, 1], got {self.catch_rate}")
        if not 0 < self.confidence < 1:
            raise StudyError(f"study.confidence must lie in (0, 1), got {self.confidence}")
        missing = {"rater", "pair", *QUESTIONS} - set(self.crowd_columns)
        if missing:
            raise StudyError(f"study.crowd.columns lacks {', '.join(sorted(missing))}")
        if self.reference in self.against or "catch" in self.against or not self.against:
            raise StudyError(f"study.against must name at least one opponent, not the reference {self.reference!r} "
                             f"nor 'catch' (the catch pairs' name); got {self.against}")

    @classmethod
    def from_config(cls, cfg: Any) -> "Settings":
        """From the `study` config node (OmegaConf or dict); `crowd: {base_url, columns}` is flattened."""
        if cfg is None:
            return cls()
        from omegaconf import OmegaConf

        d = OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else dict(cfg)
        crowd = d.pop("crowd", None) or {}
        if "base_url" in crowd:
            d["crowd_base_url"] = crowd["base_url"] or ""
        if "columns" in crowd:
            d["crowd_columns"] = {**DEFAULT_CROWD_COLUMNS, **crowd["columns"]}
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise StudyError(f"unknown study setting(s): {', '.join(sorted(unknown))}")
        d["against"] = [str(a) for a in d.get("against", cls().against)]
        return cls(**d)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)
