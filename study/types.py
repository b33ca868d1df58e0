"""The study's records: a pair shown to raters, one answer, and the study's settings."""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import quote

#: The two questions of the paper's Table 4, in the order the page asks them.
QUESTIONS = ("editing", "video")
CHOICES = ("left", "right", "tie")
#: A pair's media fields (paths relative to the study folder).
MEDIA = ("source", "edited_frame", "left", "right")
#: A rater id from a URL or a platform's CSV: short, printable, no path characters.
RATER_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,127}$")


class StudyError(ValueError):
    """Bad study input (a missing run, an unknown pair, a duplicate answer, a malformed CSV); the message says what
    and where."""


class DuplicateAnswer(StudyError):
    """The rater already answered this question of this pair; the stored answer is kept."""


class UnknownPair(StudyError):
    """An answer for a pair the study does not have."""


def check_rater(rater: object) -> str:
    if not isinstance(rater, str) or not RATER_ID.match(rater):
        raise StudyError(f"rater id {rater!r} must be 1-128 letters, digits or _ . @ - (starting with a letter or digit)")
    return rater


@dataclass(frozen=True)
class Pair:
    """Two edits of one sample shown side by side, method names hidden.

    A real pair is the reference against one opponent; a catch pair is the reference's edit against a corrupted
    copy of it (`catch_bad` names the side raters must not prefer). Media paths are relative to the study folder.
    """

    id: str
    sample_id: str
    instruction: str
    source: str  # media/… source video (mp4)
    edited_frame: str  # media/… the edited first frame (png)
    left: str  # media/… candidate video
    right: str
    left_method: str
    right_method: str
    reference: str
    opponent: str  # the opponent's label; "catch" for a catch pair
    catch_bad: str | None = None  # "left" or "right" on a catch pair
    scores: dict[str, dict[str, float]] = field(default_factory=dict)  # method label -> its row's scores

    @property
    def is_catch(self) -> bool:
        return self.catch_bad is not None

    def side_of(self, method: str) -> str:
        return "left" if self.left_method == method else "right"

    def method_of(self, side: str) -> str | None:
        return {"left": self.left_method, "right": self.right_method}.get(side)

    def urls(self, base: str) -> dict[str, str]:
        """The pair's media as URLs under `base`, every path segment percent-encoded (sample ids may hold `#`, `?`, `%`)."""
        return {k: base + "/".join(quote(part, safe="") for part in getattr(self, k).split("/")) for k in MEDIA}

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "Pair":
        return cls(**d)


@dataclass(frozen=True)
class Answer:
    """One rater's forced choice (or tie) on one question of one pair."""

    rater: str
    pair_id: str
    question: str  # one of QUESTIONS
    choice: str  # one of CHOICES
    seconds: float | None = None  # time from the pair's display to the answer
    origin: str = "lab"  # "lab" (the local web app) or "crowd" (an imported results CSV)
