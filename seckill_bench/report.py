"""The merged result of a run, and its three renderings: ghz-like text, ghz-shaped JSON, HTML."""

from __future__ import annotations

import datetime as dt
import html
import json
from bisect import bisect_right
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from seckill_bench.worker import PartResult
from seckill_stack.invariants import Invariant, percentile

# ghz prints status codes with Go's names.
GHZ_CODE_NAMES = {
    "OK": "OK",
    "CANCELLED": "Canceled",
    "UNKNOWN": "Unknown",
    "INVALID_ARGUMENT": "InvalidArgument",
    "DEADLINE_EXCEEDED": "DeadlineExceeded",
    "NOT_FOUND": "NotFound",
    "ALREADY_EXISTS": "AlreadyExists",
    "PERMISSION_DENIED": "PermissionDenied",
    "RESOURCE_EXHAUSTED": "ResourceExhausted",
    "FAILED_PRECONDITION": "FailedPrecondition",
    "ABORTED": "Aborted",
    "OUT_OF_RANGE": "OutOfRange",
    "UNIMPLEMENTED": "Unimplemented",
    "INTERNAL": "Internal",
    "UNAVAILABLE": "Unavailable",
    "DATA_LOSS": "DataLoss",
    "UNAUTHENTICATED": "Unauthenticated",
}
PERCENTAGES = (10, 25, 50, 75, 90, 95, 99)
HISTOGRAM_BUCKETS = 10
BAR_WIDTH = 40
TOP_ERRORS = 10


@dataclass(frozen=True)
class Bucket:
    mark_s: float  # upper bound of the bucket, seconds
    count: int
    frequency: float


def histogram(sorted_values: list[float]) -> list[Bucket]:
    """ghz's histogram: 10 equal steps from fastest to slowest, plus the slowest as the last mark.

    A latency counts in the first bucket whose mark it does not exceed.
    """
    if not sorted_values:
        return []
    fastest, slowest = sorted_values[0], sorted_values[-1]
    step = (slowest - fastest) / HISTOGRAM_BUCKETS
    marks = [fastest + step * i for i in range(HISTOGRAM_BUCKETS)] + [slowest]
    buckets: list[Bucket] = []
    below = 0
    for mark in marks:
        upto = bisect_right(sorted_values, mark)
        count = upto - below
        below = upto
        buckets.append(Bucket(mark, count, count / len(sorted_values)))
    return buckets


def ghz_code(code: str) -> str:
    return GHZ_CODE_NAMES.get(code, code)


def format_duration(seconds: float) -> str:
    if seconds >= 1.0:
        return f"{seconds:.2f} s"
    return f"{seconds * 1000:.2f} ms"


@dataclass
class Report:
    """A finished run. Times are in seconds; `latency_ms` holds min, p10..p99 and max in ms."""

    options: dict[str, Any]
    date: str
    count: int
    total_s: float
    average_s: float
    fastest_s: float
    slowest_s: float
    rps: float
    histogram: list[Bucket]
    percentiles_s: dict[int, float]
    status_counts: dict[str, int]  # ghz names: {"OK": 10, "FailedPrecondition": 3}
    reason_counts: dict[str, int]  # {"FAILED_PRECONDITION/SOLD_OUT": 3}
    error_counts: dict[str, int]  # {"rpc error: code = ... desc = ...": n}, most first
    end_reason: str = "normal"
    ok_answers: int = 0  # OK answers including the skipped first calls
    invariants: list[Invariant] = field(default_factory=list)

    # --- numbers a driver wants -------------------------------------------------------

    @property
    def latency_ms(self) -> dict[str, float]:
        values = {"min": self.fastest_s}
        values.update({f"p{p}": v for p, v in self.percentiles_s.items()})
        values["max"] = self.slowest_s
        return {k: v * 1000.0 for k, v in values.items()}

    @property
    def ok(self) -> int:
        return self.status_counts.get("OK", 0)

    @property
    def errors(self) -> int:
        return self.count - self.ok

    @property
    def invariants_ok(self) -> bool:
        return all(i.ok for i in self.invariants)

    # --- building ----------------------------------------------------------------------

    @classmethod
    def from_parts(cls, options: dict[str, Any], parts: Iterable[PartResult],
                   end_reason: str = "normal") -> Report:
        parts = list(parts)
        values: list[float] = []
        statuses: dict[str, int] = {}
        reasons: dict[str, int] = {}
        errors: dict[str, int] = {}
        for part in parts:
            values.extend(part.latencies)
            for code, n in part.statuses.items():
                name = ghz_code(code)
                statuses[name] = statuses.get(name, 0) + n
            for reason, n in part.reasons.items():
                reasons[reason] = reasons.get(reason, 0) + n
            for key, n in part.errors.items():
                code, _, message = key.partition("\x00")
                text = f"rpc error: code = {ghz_code(code)} desc = {message}"
                errors[text] = errors.get(text, 0) + n
        values.sort()
        count = len(values)
        started = min((p.started for p in parts), default=0.0)
        ended = max((p.ended for p in parts), default=0.0)
        total = max(ended - started, 0.0)
        return cls(
            options=options,
            date=dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            count=count,
            total_s=total,
            average_s=sum(values) / count if count else 0.0,
            fastest_s=values[0] if values else 0.0,
            slowest_s=values[-1] if values else 0.0,
            rps=count / total if total > 0 else 0.0,
            histogram=histogram(values),
            percentiles_s={p: percentile(values, p) for p in PERCENTAGES},
            status_counts=dict(sorted(statuses.items(), key=lambda kv: (-kv[1], kv[0]))),
            reason_counts=dict(sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0]))),
            error_counts=dict(sorted(errors.items(), key=lambda kv: (-kv[1], kv[0]))),
            end_reason=end_reason,
            ok_answers=sum(p.ok_total for p in parts),
        )

    # --- JSON, shaped like ghz's --------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        ns = 1e9
        out: dict[str, Any] = {
            "date": self.date,
            "endReason": self.end_reason,
            "options": self.options,
            "count": self.count,
            "total": int(self.total_s * ns),
            "average": int(self.average_s * ns),
            "fastest": int(self.fastest_s * ns),
            "slowest": int(self.slowest_s * ns),
            "rps": self.rps,
            "histogram": [{"mark": b.mark_s, "count": b.count, "frequency": b.frequency}
                          for b in self.histogram],
            "latencyDistribution": [{"percentage": p, "latency": int(v * ns)}
                                    for p, v in self.percentiles_s.items()],
            "statusCodeDistribution": self.status_counts,
            "errorDistribution": self.error_counts,
            "reasonDistribution": self.reason_counts,
        }
        if self.invariants:
            out["invariants"] = [i.to_json() for i in self.invariants]
        return out

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, ensure_ascii=False)

    # --- text, like ghz's summary ------------------------------------------------------

    def summary_text(self) -> str:
        fields = [("Name", self.options.get("name") or "")] if self.options.get("name") else []
        fields += [
            ("Count", str(self.count)),
            ("Total", format_duration(self.total_s)),
            ("Slowest", format_duration(self.slowest_s)),
            ("Fastest", format_duration(self.fastest_s)),
            ("Average", format_duration(self.average_s)),
            ("Requests/sec", f"{self.rps:.2f}"),
        ]
        if self.end_reason != "normal":
            fields.append(("End reason", self.end_reason))
        lines = ["", "Summary:"]
        lines += [f"  {label + ':':<14}{value}" for label, value in fields]
        lines.append("")
        lines.append("Response time histogram:")
        peak = max((b.count for b in self.histogram), default=0)
        marks = [f"{b.mark_s * 1000:.3f}" for b in self.histogram]
        counts = [f"[{b.count}]" for b in self.histogram]
        mark_w = max(map(len, marks), default=0)
        count_w = max(map(len, counts), default=0)
        for bucket, mark, count in zip(self.histogram, marks, counts, strict=True):
            bar = "∎" * (round(bucket.count / peak * BAR_WIDTH) if peak else 0)
            lines.append(f"  {mark:>{mark_w}} {count:<{count_w}} |{bar}")
        lines.append("")
        lines.append("Latency distribution:")
        if self.count:
            lines.append(f"  min in {format_duration(self.fastest_s)}")
            lines += [f"  {p} % in {format_duration(v)}" for p, v in self.percentiles_s.items()]
            lines.append(f"  max in {format_duration(self.slowest_s)}")
        lines += ["", "Status code distribution:"]
        lines += _counted_lines(self.status_counts)
        if self.reason_counts:
            lines += ["", "Error reasons (google.rpc.ErrorInfo):"]
            lines += _counted_lines(self.reason_counts)
        if self.error_counts:
            lines += ["", "Error distribution:"]
            top = list(self.error_counts.items())[:TOP_ERRORS]
            width = max(len(f"[{n}]") for _, n in top)
            lines += [f"  {f'[{n}]':<{width}}  {message}" for message, n in top]
            if len(self.error_counts) > TOP_ERRORS:
                lines.append(f"  ... and {len(self.error_counts) - TOP_ERRORS} more kinds")
        if self.invariants:
            lines += ["", "Invariants:"]
            lines += [f"  {'[ok]    ' if i.ok else '[FAILED]'} {i.name}: {i.detail}"
                      for i in self.invariants]
        return "\n".join(lines) + "\n"

    # --- HTML ------------------------------------------------------------------------------

    def to_html(self) -> str:
        return _render_html(self)


def _counted_lines(counts: dict[str, int]) -> list[str]:
    width = max((len(k) for k in counts), default=0) + 2
    return [f"  {f'[{key}]':<{width}}  {n} responses" for key, n in counts.items()]


_CSS = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 60rem; color: #222; }
h1 { font-size: 1.5rem; margin-bottom: .2rem; } h2 { font-size: 1.15rem; margin-top: 2rem; }
.sub { color: #666; margin-top: 0; }
table { border-collapse: collapse; width: 100%; }
td, th { padding: .25rem .6rem; border-bottom: 1px solid #e4e4e4; text-align: left;
  vertical-align: middle; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.bar { background: #4a7bd0; height: 1rem; min-width: 1px; border-radius: 2px; }
.barcell { width: 55%; }
.ok { color: #17803d; font-weight: 600; } .failed { color: #c0262d; font-weight: 600; }
.cards { display: flex; flex-wrap: wrap; gap: .8rem; }
.card { border: 1px solid #ddd; border-radius: 6px; padding: .6rem 1rem; min-width: 8rem; }
.card b { display: block; font-size: 1.3rem; } .card span { color: #666; font-size: .85rem; }
table.info { width: auto; margin-top: 1rem; } table.info th { padding-right: 2rem; }
pre { background: #f6f6f6; padding: .8rem; overflow-x: auto; }
"""


def _bar_rows(rows: list[tuple[str, int, str]]) -> str:
    """Table rows of label | bar | value, bars scaled to the largest count."""
    peak = max((n for _, n, _ in rows), default=0) or 1
    out = []
    for label, n, value in rows:
        width = 100.0 * n / peak
        out.append(f"<tr><td class=num>{html.escape(label)}</td><td class=barcell>"
                   f"<div class=bar style='width:{width:.1f}%'></div></td>"
                   f"<td class=num>{html.escape(value)}</td></tr>")
    return "\n".join(out)


def _render_html(report: Report) -> str:
    e = html.escape
    opts = report.options
    cards = [
        ("Count", str(report.count)),
        ("Total", format_duration(report.total_s)),
        ("Requests/sec", f"{report.rps:.2f}"),
        ("Average", format_duration(report.average_s)),
        ("Fastest", format_duration(report.fastest_s)),
        ("Slowest", format_duration(report.slowest_s)),
        ("p99", format_duration(report.percentiles_s.get(99, 0.0))),
    ]
    card_html = "".join(f"<div class=card><span>{e(k)}</span><b>{e(v)}</b></div>"
                        for k, v in cards)
    hist_rows = _bar_rows([(f"{b.mark_s * 1000:.3f} ms", b.count,
                            f"{b.count} ({b.frequency * 100:.1f}%)") for b in report.histogram])
    lat = report.latency_ms
    lat_rows = "".join(f"<tr><td>{e(k)}</td><td class=num>{v:.3f} ms</td></tr>"
                       for k, v in lat.items()) if report.count else ""
    status_rows = _bar_rows([(k, n, str(n)) for k, n in report.status_counts.items()])
    sections = [
        f"<h2>Summary</h2><div class=cards>{card_html}</div>",
        "<table class=info><tr><th>call</th><td>" + e(str(opts.get("call", ""))) + "</td></tr>"
        "<tr><th>host</th><td>" + e(str(opts.get("host", ""))) + "</td></tr>"
        f"<tr><th>concurrency / connections / processes</th><td>{opts.get('concurrency')} / "
        f"{opts.get('connections')} / {opts.get('procs')}</td></tr>"
        f"<tr><th>end reason</th><td>{e(report.end_reason)}</td></tr></table>",
        "<h2 id=histogram>Latency histogram</h2>"
        "<table><tr><th class=num>up to</th><th></th><th class=num>responses</th></tr>"
        f"{hist_rows}</table>",
        "<h2 id=latency>Latency distribution</h2>"
        f"<table><tr><th>percentile</th><th class=num>latency</th></tr>{lat_rows}</table>",
        "<h2 id=status>Status codes</h2>"
        f"<table><tr><th class=num>code</th><th></th><th class=num>responses</th></tr>"
        f"{status_rows}</table>",
    ]
    if report.reason_counts:
        rows = _bar_rows([(k, n, str(n)) for k, n in report.reason_counts.items()])
        sections.append("<h2 id=reasons>Error reasons (google.rpc.ErrorInfo)</h2>"
                        f"<table>{rows}</table>")
    if report.error_counts:
        rows = "".join(f"<tr><td class=num>{n}</td><td>{e(msg)}</td></tr>"
                       for msg, n in list(report.error_counts.items())[:TOP_ERRORS])
        sections.append(f"<h2 id=errors>Error messages</h2><table>{rows}</table>")
    if report.invariants:
        rows = "".join(
            f"<tr><td class={'ok' if i.ok else 'failed'}>{'ok' if i.ok else 'FAILED'}</td>"
            f"<td>{e(i.name)}</td><td>{e(i.detail)}</td></tr>" for i in report.invariants)
        sections.append(f"<h2 id=invariants>Invariants</h2><table>{rows}</table>")
    sections.append("<h2>Options</h2><pre>" + e(json.dumps(opts, indent=2)) + "</pre>")
    title = f"seckill-bench: {opts.get('call', '')}"
    return (
        "<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8>"
        f"<title>{e(title)}</title><style>{_CSS}</style></head><body>"
        f"<h1>{e(opts.get('name') or 'seckill-bench report')}</h1>"
        f"<p class=sub>{e(str(opts.get('call', '')))} on {e(str(opts.get('host', '')))}"
        f" &middot; {e(report.date)}</p>"
        + "\n".join(sections) + "</body></html>\n"
    )
