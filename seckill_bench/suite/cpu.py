"""CPU per call, by process: what a row's calls cost each server process, read from /proc.

Wall-clock rates move with whatever else the machine runs; the CPU time a process used around
a run, divided by the run's calls, is what a change to the code moves. Every process of a
service is counted (supervisor, workers: the order service's relay runs in them), and MariaDB.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from seckill_bench.suite.procfs import cpu_seconds, family
from seckill_bench.suite.stack import BenchStack

# After a run, the last reading waits for the processes to go quiet (less than QUIET_SHARE of
# one core over a SETTLE_S interval, for at most SETTLE_MAX_S): the order service's relay may
# still be publishing the run's events, whose cost is the run's, not the next row's.
SETTLE_S = 0.5
QUIET_SHARE = 0.05
SETTLE_MAX_S = 60.0
# The processes of a row, in the table's order: the activity service under load, the peers.
PROCESSES = ("activity", "order", "product", "MariaDB")


@dataclass
class CpuReading:
    """CPU seconds used so far, by process name (PROCESSES)."""

    seconds: dict[str, float]

    @classmethod
    def of(cls, stack: BenchStack, activity_label: str) -> CpuReading:
        pids: dict[str, list[int]] = {}
        for name, label in zip(PROCESSES[:3], (activity_label, "order", "product"),
                               strict=True):
            pid = stack.services[label].pid
            pids[name] = family(pid) if pid is not None else []
        db_pid = stack.db.recorded_pid() if stack.db is not None else None
        pids["MariaDB"] = [] if db_pid is None else [db_pid]
        return cls({name: cpu_seconds(found) for name, found in pids.items()})


class CpuMeter:
    """Reads the processes' CPU before (`start`) and after (`stop`) a run: `per_call(calls)`
    is then the milliseconds of CPU each process spent per call."""

    def __init__(self, stack: BenchStack, activity_label: str) -> None:
        self._stack = stack
        self._label = activity_label
        self._before: CpuReading | None = None
        self._after: CpuReading | None = None

    def start(self) -> None:
        self._before = CpuReading.of(self._stack, self._label)

    def stop(self) -> None:
        deadline = time.monotonic() + SETTLE_MAX_S
        last = CpuReading.of(self._stack, self._label)
        while True:
            time.sleep(SETTLE_S)  # other processes' work: nothing of ours to await
            self._after = CpuReading.of(self._stack, self._label)
            busy = sum(self._after.seconds.values()) - sum(last.seconds.values())
            if busy < QUIET_SHARE * SETTLE_S or time.monotonic() > deadline:
                return
            last = self._after

    def per_call(self, calls: int) -> dict[str, float]:
        assert self._before is not None and self._after is not None
        if calls <= 0:
            return {}
        return {name: (self._after.seconds[name] - self._before.seconds[name]) * 1000 / calls
                for name in PROCESSES}
