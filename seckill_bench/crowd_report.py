"""What a crowd on one sale is asked to do (CrowdConfig) and what it reports (CrowdReport):
each buyer's answer, the refusals heard on the way, the stages' times (seckill_bench/crowd.py
runs the crowd)."""

from __future__ import annotations

import json
from array import array
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from seckill_bench.runner import BenchError
from seckill_common.client.tls import ClientTLS
from seckill_stack.invariants import percentile

QUEUED, DIRECT = "queued", "direct"
STREAMS_PER_CHANNEL = 100
# The answers a buyer can end with, besides a status code.
WON, SOLD_OUT, ENDED = "won", "SOLD_OUT", "ENDED"
# The stages whose times are reported (seconds), by name.
STAGES = ("join_to_first_message", "join_to_admitted", "admitted_to_answer",
          "join_to_answer", "start_to_answer")


class CrowdError(BenchError):
    """The run could not be done: the activity unreadable, a client process failed."""


@dataclass(frozen=True)
class CrowdConfig:
    mode: str  # QUEUED or DIRECT
    host: str
    activity_id: int
    buyers: int
    procs: int = 1
    user_prefix: str = "buyer-"
    quantity: int = 0  # 0: the activity's default (1)
    # Buyers joining a second, in total (QUEUED; 0: all at once). Direct buyers all call at
    # the sale's start.
    join_rate: float = 0.0
    streams_per_channel: int = STREAMS_PER_CHANNEL
    # A buyer's whole budget: the stream's deadline, and the end of their retries.
    timeout_s: float = 300.0
    connect_timeout_s: float = 30.0
    metadata: tuple[tuple[str, str], ...] = ()
    tls: ClientTLS = field(default_factory=ClientTLS)
    progress: bool = False

    def validate(self) -> None:
        problems = []
        if self.mode not in (QUEUED, DIRECT):
            problems.append(f"mode must be {QUEUED} or {DIRECT}")
        if self.buyers < 1 or self.procs < 1 or self.procs > self.buyers:
            problems.append("need 1 <= procs <= buyers")
        if self.streams_per_channel < 1 or self.join_rate < 0 or self.timeout_s <= 0:
            problems.append("streams per channel >= 1, join rate >= 0, timeout > 0")
        if problems:
            raise CrowdError("; ".join(problems))


@dataclass
class PartResult:
    index: int
    answers: dict[str, int] = field(default_factory=dict)  # WON, SOLD_OUT, ENDED, CODE[/REASON]
    heard: dict[str, int] = field(default_factory=dict)  # refusals retried, by CODE[/REASON]
    first_states: dict[str, int] = field(default_factory=dict)  # the first message's state
    # Buyers whose stream ended without an answer, by status and the last state they heard.
    ended_after: dict[str, int] = field(default_factory=dict)
    stages: dict[str, array] = field(default_factory=dict)  # STAGES -> seconds
    last_won: float | None = None  # time.time() of the last OK Seckill answer
    last_sold_out: float | None = None  # time.time() of the last SOLD_OUT heard
    channels: int = 0
    answered_s: array = field(default_factory=lambda: array("d"))  # DIRECT: start to answer


@dataclass
class CrowdReport:
    config: CrowdConfig
    start_at: float
    wall_s: float
    answers: dict[str, int]
    heard: dict[str, int]
    first_states: dict[str, int]
    ended_after: dict[str, int]
    stages_ms: dict[str, dict[str, float]]
    last_won: float | None
    last_sold_out: float | None
    channels: int
    # DIRECT: buyers answered (won, SOLD_OUT, ENDED) within 10 s of the start.
    answered_within_10s: int | None = None

    @classmethod
    def merge(cls, config: CrowdConfig, start_at: float, wall_s: float,
              parts: list[PartResult]) -> CrowdReport:
        answers: Counter[str] = Counter()
        heard: Counter[str] = Counter()
        first: Counter[str] = Counter()
        ended: Counter[str] = Counter()
        stages: dict[str, list[float]] = {s: [] for s in STAGES}
        for part in parts:
            answers.update(part.answers)
            heard.update(part.heard)
            first.update(part.first_states)
            ended.update(part.ended_after)
            for stage, values in part.stages.items():
                stages[stage].extend(values)
        wons = [p.last_won for p in parts if p.last_won is not None]
        sold = [p.last_sold_out for p in parts if p.last_sold_out is not None]
        within = (None if config.mode != DIRECT else
                  sum(1 for p in parts for s in p.answered_s if s <= 10.0))
        return cls(config, start_at, wall_s, dict(answers), dict(heard), dict(first),
                   dict(ended),
                   {stage: quantiles_ms(values) for stage, values in stages.items() if values},
                   max(wons) if wons else None, max(sold) if sold else None,
                   sum(p.channels for p in parts), within)

    @property
    def answered(self) -> int:
        return sum(self.answers.get(a, 0) for a in (WON, SOLD_OUT, ENDED))

    @property
    def sold_out_after_last_sale_s(self) -> float | None:
        """From the last unit sold (its OK answer) to the last SOLD_OUT heard."""
        if self.last_won is None or self.last_sold_out is None:
            return None
        return self.last_sold_out - self.last_won

    def count(self, status: str) -> int:
        """Buyers who ended with `status` (a code), plus refusals of it heard and retried."""
        return sum(n for source in (self.answers, self.heard) for key, n in source.items()
                   if key.split("/", 1)[0] == status)

    def to_json(self) -> dict[str, Any]:
        return {"mode": self.config.mode, "activity_id": self.config.activity_id,
                "buyers": self.config.buyers, "procs": self.config.procs,
                "channels": self.channels, "join_rate": self.config.join_rate,
                "start_at": self.start_at, "wall_s": self.wall_s, "answered": self.answered,
                "answers": self.answers, "heard": self.heard,
                "first_states": self.first_states, "ended_after": self.ended_after,
                "stages_ms": self.stages_ms,
                "resource_exhausted": self.count("RESOURCE_EXHAUSTED"),
                "deadline_exceeded": self.count("DEADLINE_EXCEEDED"),
                "sold_out_after_last_sale_s": self.sold_out_after_last_sale_s,
                "answered_within_10s": self.answered_within_10s}

    def summary_text(self) -> str:
        c = self.config
        lines = [f"{c.mode} sale of activity {c.activity_id}: {c.buyers:,} buyers from "
                 f"{c.procs} process(es) over {self.channels} channel(s), {self.wall_s:.1f} s",
                 f"  answered: {self.answered:,} of {c.buyers:,} ("
                 + ", ".join(f"{k} {v:,}" for k, v in sorted(self.answers.items())) + ")",
                 f"  RESOURCE_EXHAUSTED: {self.count('RESOURCE_EXHAUSTED'):,}, "
                 f"DEADLINE_EXCEEDED: {self.count('DEADLINE_EXCEEDED'):,} (answers and "
                 "refusals retried)"]
        if self.heard:
            lines.append("  refusals heard and retried: " + ", ".join(
                f"{k} {v:,}" for k, v in sorted(self.heard.items())))
        if self.first_states:
            lines.append("  first message: " + ", ".join(
                f"{k} {v:,}" for k, v in sorted(self.first_states.items())))
        if self.ended_after:
            lines.append("  streams ended without an answer: " + ", ".join(
                f"{k} {v:,}" for k, v in sorted(self.ended_after.items())))
        gap = self.sold_out_after_last_sale_s
        if gap is not None:
            lines.append(f"  last unit sold to last SOLD_OUT heard: {gap * 1000:,.0f} ms")
        if self.answered_within_10s is not None:
            lines.append(f"  answered within 10 s of the start: {self.answered_within_10s:,}")
        for stage, q in self.stages_ms.items():
            lines.append(f"  {stage.replace('_', ' ')} (ms): " + ", ".join(
                f"{k} {v:,.0f}" for k, v in q.items()))
        return "\n".join(lines) + "\n"


def quantiles_ms(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {"n": float(len(ordered)),
            **{f"p{p}": 1000 * percentile(ordered, p) for p in (50, 90, 99)},
            "max": 1000 * ordered[-1]}


def report_json(report: CrowdReport, indent: int | None = None) -> str:
    return json.dumps(report.to_json(), indent=indent)

