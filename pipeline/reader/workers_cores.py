"""How many reader workers to start: the CPU cores this process may really use.

``os.cpu_count()`` counts the machine's cores; a container, a CPU-pinned job or a node shared by
several ranks gets fewer. :func:`usable_cores` takes the smallest of

* the CPU affinity mask (``os.sched_getaffinity``: taskset, Slurm, Kubernetes static CPUs),
* the cgroup CPU quota (v2 ``cpu.max``, v1 ``cpu.cfs_quota_us / cpu.cfs_period_us``), rounded up,

and divides it by the ranks on this machine (``LOCAL_WORLD_SIZE``, set by torchrun, which
TorchDistributor uses to start its ranks), at least 1.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["CoreCount", "available_memory", "cgroup_cpu_limit", "usable_cores"]

_CGROUP = Path("/sys/fs/cgroup")


@dataclass(frozen=True)
class CoreCount:
    """The cores one rank's reader may use, and why."""

    cores: int
    """Cores for this rank's workers (>= 1)."""
    affinity: int
    """CPUs in this process's affinity mask (``os.cpu_count()`` where there is none)."""
    quota: float | None
    """CPUs allowed by the cgroup quota; ``None`` = no quota."""
    local_ranks: int
    """Ranks sharing this machine (``LOCAL_WORLD_SIZE``, default 1)."""

    def describe(self) -> str:
        quota = "none" if self.quota is None else f"{self.quota:g}"
        return (
            f"{self.cores} usable cores (affinity {self.affinity}, cgroup quota {quota}, "
            f"{self.local_ranks} ranks on this machine)"
        )


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="ascii").strip()
    except OSError:
        return None


def cgroup_cpu_limit(root: Path = _CGROUP) -> float | None:
    """CPUs allowed by this process's cgroup (v2 or v1), ``None`` when unlimited or unknown."""
    text = _read(root / "cpu.max")  # v2: "max 100000" or "200000 100000"
    if text is not None:
        quota, _, period = text.partition(" ")
        if quota != "max" and period:
            return int(quota) / int(period)
        return None
    quota_v1 = _read(root / "cpu" / "cpu.cfs_quota_us") or _read(root / "cpu.cfs_quota_us")
    period_v1 = _read(root / "cpu" / "cpu.cfs_period_us") or _read(root / "cpu.cfs_period_us")
    if quota_v1 and period_v1 and int(quota_v1) > 0:
        return int(quota_v1) / int(period_v1)
    return None


def usable_cores(environ: dict[str, str] | None = None, cgroup_root: Path = _CGROUP) -> CoreCount:
    """The :class:`CoreCount` of this process (see the module docstring)."""
    env = os.environ if environ is None else environ
    try:
        affinity = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # macOS, Windows
        affinity = os.cpu_count() or 1
    quota = cgroup_cpu_limit(cgroup_root)
    cores = affinity if quota is None else min(affinity, max(1, math.ceil(quota)))
    try:
        local_ranks = max(1, int(env.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        local_ranks = 1
    return CoreCount(max(1, cores // local_ranks), affinity, quota, local_ranks)


def available_memory(meminfo: Path = Path("/proc/meminfo"), cgroup_root: Path = _CGROUP) -> int | None:
    """Bytes this process could still allocate: the machine's ``MemAvailable``, or what is left
    under the cgroup's memory limit (v2 ``memory.max - memory.current``, v1
    ``memory.limit_in_bytes - memory.usage_in_bytes``, the inactive page cache of ``memory.stat``
    not counted as used) if that is less; ``None`` where unknown."""
    found: list[int] = []
    text = _read(meminfo)
    for line in (text or "").splitlines():
        if line.startswith("MemAvailable:"):
            parts = line.split()
            if len(parts) >= 2 and parts[1].isdigit():
                found.append(int(parts[1]) * 1024)
    for folder, limit_name, usage_name, cache_name in (
        ("", "memory.max", "memory.current", "inactive_file"),
        ("memory", "memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file"),
        ("", "memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file"),
    ):
        limit, usage = _read(cgroup_root / folder / limit_name), _read(cgroup_root / folder / usage_name)
        if limit and usage and limit.isdigit() and usage.isdigit() and int(limit) < 2**60:
            # the usage counts the page cache; its inactive part is reclaimed before anything fails
            # (what docker stats and the kubelet subtract)
            cache = 0
            for line in (_read(cgroup_root / folder / "memory.stat") or "").splitlines():
                key, _, value = line.partition(" ")
                if key == cache_name and value.strip().isdigit():
                    cache = int(value)
            found.append(max(0, int(limit) - max(0, int(usage) - cache)))
            break
    return min(found) if found else None
