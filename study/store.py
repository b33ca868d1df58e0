"""The answers database: SQLite in WAL mode beside the study (`answers.sqlite`), one transaction per submission.

A submission (a rater's answers to one pair, or one imported CSV) is checked whole before anything is written and
committed in one transaction, so a refused submission leaves the database as it was. (rater, pair, question) is
unique: a second answer to the same question is refused with `DuplicateAnswer`, the first one kept.
"""
from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path
from typing import Iterable

from study.types import CHOICES, QUESTIONS, Answer, DuplicateAnswer, StudyError, UnknownPair, check_rater

DB_FILE = "answers.sqlite"
SCHEMA = """
CREATE TABLE IF NOT EXISTS answers (
    id INTEGER PRIMARY KEY,
    rater TEXT NOT NULL,
    pair_id TEXT NOT NULL,
    question TEXT NOT NULL CHECK (question IN ('editing', 'video')),
    choice TEXT NOT NULL CHECK (choice IN ('left', 'right', 'tie')),
    seconds REAL,
    origin TEXT NOT NULL,
    recorded_at REAL NOT NULL,
    UNIQUE (rater, pair_id, question)
);
"""


class Store:
    """The study's answers. `pair_ids` (when given) are the pairs answers may name; `allow_tie` whether "tie" is
    an answer (the study's tie option)."""

    def __init__(self, study_root: str | Path, pair_ids: Iterable[str] | None = None, allow_tie: bool = True):
        self.path = Path(study_root) / DB_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.pair_ids = None if pair_ids is None else set(pair_ids)
        self.choices = CHOICES if allow_tie else tuple(c for c in CHOICES if c != "tie")
        self.db = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
        self.lock = threading.RLock()  # one connection shared by the app's threads: one submission at a time
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")  # an acknowledged answer survives a power cut
        self.db.executescript(SCHEMA)

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.db.close()

    def check(self, answers: list[Answer]) -> None:
        """Refuse a submission with an unknown pair, question or choice, a bad rater id, or a duplicate (within
        the submission or against the database); the message names the first offenders."""
        seen = set()
        for a in answers:
            check_rater(a.rater)
            if self.pair_ids is not None and a.pair_id not in self.pair_ids:
                raise UnknownPair(f"pair {a.pair_id!r} (rater {a.rater!r}) is not in this study")
            if a.question not in QUESTIONS:
                raise StudyError(f"question must be one of {', '.join(QUESTIONS)}, got {a.question!r}")
            if a.choice not in self.choices:
                raise StudyError(f"answer to {a.question!r} of pair {a.pair_id!r} must be one of {', '.join(self.choices)}, "
                                 f"got {a.choice!r}")
            key = (a.rater, a.pair_id, a.question)
            if key in seen:
                raise DuplicateAnswer(f"rater {a.rater!r} answered {a.question!r} of pair {a.pair_id!r} twice in one submission")
            seen.add(key)
        dupes = [k for k in seen if self.db.execute(
            "SELECT 1 FROM answers WHERE rater=? AND pair_id=? AND question=?", k).fetchone()]
        if dupes:
            shown = "; ".join(f"rater {r!r}, pair {p!r}, {q}" for r, p, q in sorted(dupes)[:5])
            raise DuplicateAnswer(f"{len(dupes)} answer(s) already recorded ({shown}); the recorded answers are kept")

    def add(self, answers: list[Answer]) -> int:
        """Record a submission in one transaction, after `check`; returns how many answers were added."""
        with self.lock:
            self.check(answers)
            now = time.time()
            try:
                self.db.execute("BEGIN IMMEDIATE")
                self.db.executemany(
                    "INSERT INTO answers (rater, pair_id, question, choice, seconds, origin, recorded_at) VALUES (?,?,?,?,?,?,?)",
                    [(a.rater, a.pair_id, a.question, a.choice, a.seconds, a.origin, now) for a in answers])
                self.db.execute("COMMIT")
            except sqlite3.IntegrityError as e:  # a concurrent request got there first
                self.db.execute("ROLLBACK")
                raise DuplicateAnswer(f"answer already recorded ({e}); the recorded answer is kept") from e
            except BaseException:
                if self.db.in_transaction:
                    self.db.execute("ROLLBACK")
                raise
        return len(answers)

    def answers(self) -> list[Answer]:
        with self.lock:
            rows = self.db.execute("SELECT rater, pair_id, question, choice, seconds, origin FROM answers ORDER BY id").fetchall()
        return [Answer(*r) for r in rows]

    def answered(self, rater: str) -> set[str]:
        """The pairs `rater` answered every question of."""
        with self.lock:
            rows = self.db.execute("SELECT pair_id FROM answers WHERE rater=? GROUP BY pair_id HAVING COUNT(DISTINCT question)=?",
                                   (rater, len(QUESTIONS))).fetchall()
        return {r[0] for r in rows}

    def count(self) -> int:
        with self.lock:
            return self.db.execute("SELECT COUNT(*) FROM answers").fetchone()[0]
