"""Names that come from data (sample ids, clip ids, tags, dataset names) become folder names: check them first.

A name is one safe path component: not empty, not `.` or `..`, no path separator or drive, no control
character, no leading dot (the harness's own bookkeeping files start with one), at most `MAX_LEN` characters.
Names that differ only in case would share a folder on a case-insensitive filesystem (macOS, Windows), so a
collection of names is checked for such pairs too.
"""
from __future__ import annotations

import os
import unicodedata
from pathlib import Path
from typing import Iterable

MAX_LEN = 200


class UnsafeName(ValueError):
    """A name from data that cannot safely be a folder name; the message says what it is and why."""


def name_problem(name: object) -> str | None:
    """Why `name` cannot be a folder name, or None when it can."""
    if not isinstance(name, str):
        return f"is a {type(name).__name__}, not a string"
    if not name or not name.strip():
        return "is empty"
    if name in (".", ".."):
        return "is a relative path component"
    if "/" in name or "\\" in name or os.sep in name or (os.altsep and os.altsep in name):
        return "contains a path separator"
    if os.path.isabs(name) or (len(name) >= 2 and name[1] == ":"):
        return "is an absolute path or a drive"
    if any(unicodedata.category(c)[0] == "C" for c in name):
        return "contains a control character"
    if name.startswith("."):
        return "starts with a dot"
    if name != name.strip():
        return "starts or ends with white space"
    if len(name) > MAX_LEN:
        return f"is longer than {MAX_LEN} characters"
    return None


def check_name(name: object, what: str) -> str:
    """`name` itself when it is a safe folder name, else `UnsafeName` saying `what` it is and why not."""
    problem = name_problem(name)
    if problem is not None:
        raise UnsafeName(f"{what} {name!r} {problem}; it cannot be used as a folder name")
    return name  # type: ignore[return-value]


def case_key(name: str) -> str:
    """What a case-insensitive filesystem compares: Unicode case-folded, NFC-normalized."""
    return unicodedata.normalize("NFC", name).casefold()


def case_collisions(names: Iterable[str]) -> dict[str, str]:
    """Each name that collides, case-insensitively, with an earlier one -> that earlier name."""
    first: dict[str, str] = {}
    out: dict[str, str] = {}
    for n in names:
        k = case_key(n)
        if k in first and first[k] != n:
            out[n] = first[k]
        else:
            first.setdefault(k, n)
    return out


def is_inside(path: str | os.PathLike, root: str | os.PathLike) -> bool:
    """Whether `path`, with every symlink resolved, lies inside `root` (also resolved)."""
    return Path(path).resolve().is_relative_to(Path(root).resolve())


def safe_child(root: str | os.PathLike, name: object, what: str) -> Path:
    """`root / name` after checking that `name` is a safe folder name."""
    return Path(root) / check_name(name, what)
