"""Atomic file writes and advisory locks: a reader (or a rerun after Ctrl-C or kill -9) never sees half a file,
and two processes sharing a folder never do the same work twice.

A temporary file is named `.<name>.tmp.<host>.<pid>.<random>` beside its target, so the next run can tell the
leftovers of a dead process from the files another live process is still writing (`clean_stale_temps`).
Locks are `fcntl.flock` locks on small files: the kernel releases them when their process dies, so a crashed
process never leaves a claim behind (POSIX; on NFS, Linux maps them to byte-range locks).
"""
from __future__ import annotations

import contextlib
import fcntl
import io
import json
import logging
import os
import re
import socket
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

log = logging.getLogger("harness")

HOST = re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname()) or "host"
_TEMP = re.compile(r"^\..+\.tmp\.(?P<host>[A-Za-z0-9_-]+)\.(?P<pid>\d+)\.[^.]*(\.[A-Za-z0-9]+)?$")


def temp_prefix(path: Path) -> str:
    return f".{path.name}.tmp.{HOST}.{os.getpid()}."


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """A temporary path beside `path` (same suffix) to write to; renamed onto `path` when the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=temp_prefix(path), suffix=path.suffix)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_atomic(path: str | os.PathLike, data: bytes | str) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)


def write_with(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """`write(tmp)` writes the file at a temporary path; the result replaces `path` in one rename."""
    with atomic_path(path) as tmp:
        write(tmp)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_atomic(path, json.dumps(obj, indent=2, sort_keys=False, allow_nan=False, default=str) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text())


def write_npz(path: str | os.PathLike, **arrays: np.ndarray) -> None:
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    write_atomic(path, buf.getvalue())


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def clean_stale_temps(root: str | os.PathLike) -> list[Path]:
    """Delete the temporary files under `root` left by dead processes of this host; returns what was deleted.

    Temporaries of live processes, and of other hosts sharing the folder (whose pids mean nothing here), stay.
    """
    root = Path(root)
    if not root.is_dir():
        return []
    removed = []
    for p in root.rglob(".*.tmp.*"):
        m = _TEMP.match(p.name)
        if m and m["host"] == HOST and not _alive(int(m["pid"])) and p.is_file() and not p.is_symlink():
            p.unlink(missing_ok=True)
            removed.append(p)
    if removed:
        log.info("removed %d temporary file(s) left under %s by interrupted runs", len(removed), root)
    return removed


@contextlib.contextmanager
def file_lock(path: str | os.PathLike, blocking: bool = True) -> Iterator[bool]:
    """Hold an exclusive lock on `path` (created if missing) for the block; yields False, holding nothing,
    when `blocking` is False and another process holds it. The file records the holder's host and pid."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        os.ftruncate(fd, 0)
        os.write(fd, f"{HOST} {os.getpid()}\n".encode())
        try:
            yield True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
