"""The schema of an edit's metadata, shared by a sample's `meta.json` and a manifest row.

    instruction, source_prompt, target_prompt   a string, or null / missing
    edit_type                                   one of `EDIT_TYPES`, or null / missing
    fps                                         a number in (0, MAX_FPS], or null / missing

Other keys (provenance, a manifest's paths and span) pass through unchecked here. A record that breaks the
schema raises `SchemaError` naming the key, so the caller can add the file (and row) it came from.
"""
from __future__ import annotations

import math
from typing import Any

EDIT_TYPES = ("add_object", "change_appearance", "remove_object", "replace_object", "change_action", "change_color")
TEXT_KEYS = ("instruction", "source_prompt", "target_prompt")
#: The highest frame rate taken as real; anything above is a unit mix-up (e.g. frames per minute).
MAX_FPS = 240.0


class SchemaError(ValueError):
    """A record that breaks the schema; `key` is the offending key (None when the record itself is wrong)."""

    def __init__(self, key: str | None, problem: str):
        self.key, self.problem = key, problem
        super().__init__(problem if key is None else f"key {key!r}: {problem}")


def is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _show(v: Any) -> str:
    return f"{type(v).__name__} {v!r}"[:80]


def check_meta(record: Any, required: tuple[str, ...] = ()) -> dict[str, Any]:
    """`record` itself when it fits the schema and has a non-empty string for every key in `required`."""
    if not isinstance(record, dict):
        raise SchemaError(None, f"must be a JSON object, got {type(record).__name__}")
    for key in required:
        v = record.get(key)
        if v is None or (isinstance(v, str) and not v.strip()):
            raise SchemaError(key, "missing or empty")
    for key in TEXT_KEYS:
        v = record.get(key)
        if v is not None and not isinstance(v, str):
            raise SchemaError(key, f"must be a string or null, got {_show(v)}")
    v = record.get("edit_type")
    if v is not None and v not in EDIT_TYPES:
        raise SchemaError("edit_type", f"must be one of {', '.join(EDIT_TYPES)} or null, got {_show(v)}")
    v = record.get("fps")
    if v is not None and not (is_number(v) and math.isfinite(v) and 0 < v <= MAX_FPS):
        raise SchemaError("fps", f"must be a number in (0, {MAX_FPS:g}], got {_show(v)}")
    return record
