"""How many CPUs this process may use (the default worker count)."""

from __future__ import annotations

import math
import os


def usable_cpus(cgroup_root: str = "/sys/fs/cgroup", proc_self: str = "/proc/self") -> int:
    """The CPUs this process may use: its affinity, capped by its cgroup's CPU quota.

    `os.cpu_count()` counts the host's cores, which a container limited to 2 CPUs on a 64-core
    node would turn into 64 workers and 64 database pools. The quota (cgroup v2 `cpu.max`, else
    v1 `cpu.cfs_quota_us` / `cpu.cfs_period_us`) is rounded up: 1.5 CPUs run 2 workers.
    """
    cpus = len(os.sched_getaffinity(0))
    quota = _cgroup_quota(cgroup_root, proc_self)
    if quota is not None:
        cpus = min(cpus, math.ceil(quota))
    return max(1, cpus)


def _read(path: str) -> str | None:
    try:
        with open(path) as file:
            return file.read().strip()
    except OSError:
        return None


def _cgroup_quota(root: str, proc_self: str) -> float | None:
    """The tightest CPU quota (in CPUs) on this process's cgroup and its ancestors; None if
    unlimited or unknown."""
    own = "/"
    for line in (_read(f"{proc_self}/cgroup") or "").splitlines():
        hierarchy, _, path = line.partition("::")
        if hierarchy == "0":  # the cgroup v2 line: `0::/path`
            own = path or "/"
    quotas = []
    # v2: the process's own cgroup (inside a container, usually the namespace root) upwards.
    parts = [p for p in own.strip("/").split("/") if p]
    for depth in range(len(parts), -1, -1):
        text = _read(os.path.join(root, *parts[:depth], "cpu.max"))
        if text:
            limit, _, period = text.partition(" ")
            if limit != "max" and period:
                quotas.append(int(limit) / int(period))
    if quotas:
        return min(quotas)
    # v1 fallback: the cpu controller's root as the container sees it.
    for folder in ("cpu", "cpu,cpuacct"):
        quota = _read(os.path.join(root, folder, "cpu.cfs_quota_us"))
        every = _read(os.path.join(root, folder, "cpu.cfs_period_us"))
        if quota and every and int(quota) > 0 and int(every) > 0:
            return int(quota) / int(every)
    return None
