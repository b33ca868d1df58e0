"""How many CPU threads torch should use: the cores this process may run on that other processes leave free."""
from __future__ import annotations

import functools
import os
from pathlib import Path

CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")  # cgroup v2: "<quota> <period>" or "max <period>"


def usable_cores() -> int:
    """Cores this process may use: its CPU affinity, capped by a container's CPU quota."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        quota, period = CGROUP_CPU_MAX.read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, int(int(quota) // int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cores)


def free_cores(usable: int | None = None, load: float | None = None) -> int:
    """Usable cores less the runnable processes of the last minute (load average), at least one."""
    usable = usable_cores() if usable is None else usable
    if load is None:
        try:
            load = os.getloadavg()[0]
        except OSError:
            load = 0.0
    return max(1, min(usable, int(usable - load + 0.5)))


@functools.lru_cache(maxsize=1)
def auto_threads() -> int:
    """Chosen once per process (later jobs of a multirun would otherwise count this process's own load)."""
    return free_cores()


def set_threads(setting: int | str | None) -> int:
    """Apply the config's `threads` (auto | N | None = torch's default) to torch; `auto` leaves a thread count the
    user set with OMP_NUM_THREADS alone. Returns the intra-op threads in effect."""
    import torch

    if setting == "auto":
        if "OMP_NUM_THREADS" not in os.environ:
            torch.set_num_threads(auto_threads())
    elif setting is not None:
        torch.set_num_threads(int(setting))
    return torch.get_num_threads()
