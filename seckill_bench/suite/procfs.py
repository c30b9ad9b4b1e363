"""What the benchmark rows read of the servers' processes in /proc: a supervisor's workers,
their memory (VmRSS) and their CPU time (utime + stime)."""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path

RSS_SAMPLE_INTERVAL_S = 1.0
TICKS = os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    """The process's children (a service's workers), in pid order."""
    found: list[int] = []
    for path in Path(f"/proc/{pid}/task").glob("*/children"):
        with contextlib.suppress(OSError):
            found.extend(int(p) for p in path.read_text().split())
    return sorted(found)


def family(pid: int) -> list[int]:
    """The process and all its descendants (a service's supervisor, workers and their
    helpers), in pid order."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children(current))
    return sorted(found)


def rss_kib(pid: int) -> int | None:
    """The process's VmRSS in KiB; None once it has gone."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return None


def rss_mib(pid: int) -> float | None:
    kib = rss_kib(pid)
    return None if kib is None else kib / 1024.0


def total_rss_kib(pids: list[int]) -> int:
    return sum(rss_kib(pid) or 0 for pid in pids)


def cpu_seconds(pids: list[int]) -> float:
    """User and system CPU time the processes have used so far (those still there)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / TICKS


class RssSampler:
    """The processes' VmRSS every second while a run lasts, for the peak."""

    def __init__(self, pids: list[int]) -> None:
        self.peak: dict[int, float] = {}
        self._pids = pids
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(RSS_SAMPLE_INTERVAL_S):
            for pid in self._pids:
                value = rss_mib(pid)
                if value is not None:
                    self.peak[pid] = max(self.peak.get(pid, 0.0), value)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
