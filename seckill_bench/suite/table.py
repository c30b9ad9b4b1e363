"""The Markdown of one run: where it ran, the rows, the targets, the memory, the invariants;
written between BENCHMARKS.md's `bench:` markers, everything outside them kept as it is."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import platform
import shlex
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from seckill_bench.suite.cpu import PROCESSES
from seckill_bench.suite.h2load import targets as h2load_targets
from seckill_bench.suite.scenarios import Results, Row
from seckill_stack.services import REPO

BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"
TARGET_FLASH_SALE_RATIO = 0.8  # (b)/(a)
TARGET_GET_ACTIVITY_RATIO = 0.7  # (d)/(a)
TARGET_P99_MS = 50.0  # p99 of (b)
TARGET_QUANTITIES_RATIO = 0.9  # (q)/(b): quantities cost at most 10% of the one-unit rate
TARGET_OUTBOX_RATIO = 0.9  # (b)/(n): the flash sale with order events against without
TARGET_WINNER_RATIO = 0.7  # (w1)/(a): all winners against Health/Check, the same client
TARGET_WINNER_EVENTS_RATIO = 0.95  # (w1)/(w2): all winners with order events against without
TARGET_WINNER_CPU_MS = 0.6  # the activity service's CPU per winner in (w1)


def fmt(value: float | None, digits: int = 1) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def machine_text(db_version: str) -> str:
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory = "?"
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    return (f"{len(os.sched_getaffinity(0))} cores (nproc), {cpu}, {memory} memory, "
            f"Linux {platform.release()}, Python {platform.python_version()}, "
            f"MariaDB {db_version}")


def code_version() -> str:
    """The commit measured, and the tracked files that differ from it (read-only git)."""
    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True,
                              timeout=30, check=True)
        return done.stdout.rstrip("\n")  # not strip(): porcelain lines begin with a space

    try:
        commit = git("rev-parse", "--short", "HEAD")
        changed = [line[3:] for line in git("status", "--porcelain", "--untracked-files=no")
                   .splitlines() if line.strip()]
    except (OSError, subprocess.SubprocessError):
        return "? (not a git checkout)"
    if not changed:
        return f"commit {commit}"
    shown = ", ".join(f"`{name}`" for name in changed[:8])
    more = f" and {len(changed) - 8} more" if len(changed) > 8 else ""
    return f"commit {commit} plus uncommitted changes to {shown}{more}"


def load_average() -> str:
    try:
        return f"{os.getloadavg()[0]:.2f}"
    except OSError:
        return "?"


def ratio(top: Row | None, bottom: Row | None) -> float | None:
    if top is None or bottom is None or not top.rps or not bottom.rps:
        return None
    return top.rps / bottom.rps


def targets(results: Results) -> list[tuple[str, str, bool | None]]:
    """(target, measured, met) of one run; met is None when a row was not measured."""
    a, b, d, n, q = (results.row(key) for key in "abdnq")

    def judged(value: float | None, ok: Callable[[float], bool]) -> bool | None:
        return None if value is None else ok(value)

    def ratio_target(name: str, top: Row | None, target: float, bottom: Row | None = a
                     ) -> tuple[str, str, bool | None]:
        value = ratio(top, bottom)
        if value is None or top is None or bottom is None:
            return f"{name} ≥ {target:g}", "—", None
        measured = f"{value:.2f} ({fmt(top.rps, 0)} / {fmt(bottom.rps, 0)} req/s)"
        return f"{name} ≥ {target:g}", measured, value >= target

    p99 = b.p99 if b is not None else None
    return [
        ratio_target("flash sale (b) / ceiling (a), throughput", b, TARGET_FLASH_SALE_RATIO),
        ratio_target("GetActivity (d) / ceiling (a), throughput", d, TARGET_GET_ACTIVITY_RATIO),
        (f"p99 of (b) ≤ {TARGET_P99_MS:g} ms at {results.settings.concurrency} in flight",
         "—" if p99 is None else f"{p99:.1f} ms", judged(p99, lambda v: v <= TARGET_P99_MS)),
        ratio_target("flash sale of 1-3 units (q) / flash sale (b), throughput", q,
                     TARGET_QUANTITIES_RATIO, b),
        *h2load_targets(results),  # from the h2load rows and (e)
        ratio_target("flash sale with order events (b) / without (n), throughput", b,
                     TARGET_OUTBOX_RATIO, n),
    ]


def winner_targets(results: Results) -> list[tuple[str, str, bool | None]]:
    """The winner's path's targets, from rows (a), (w1) and (w2): (target, measured, met)."""
    a, w1, w2 = results.row("a"), results.row("w1"), results.row("w2")
    found: list[tuple[str, str, bool | None]] = []
    for name, top, bottom, target in (
            ("all winners (w1) / ceiling (a), throughput, the same client", w1, a,
             TARGET_WINNER_RATIO),
            ("all winners with order events (w1) / without (w2), throughput", w1, w2,
             TARGET_WINNER_EVENTS_RATIO)):
        value = ratio(top, bottom)
        found.append((f"{name} ≥ {target:g}", "—" if value is None or top is None
                      or bottom is None else
                      f"{value:.2f} ({fmt(top.rps, 0)} / {fmt(bottom.rps, 0)} req/s)",
                      None if value is None else value >= target))
    cpu = w1.cpu_ms.get("activity") if w1 is not None else None
    found.append((f"activity service CPU per winner in (w1) ≤ {TARGET_WINNER_CPU_MS:g} ms",
                  "—" if cpu is None else f"{cpu:.3f} ms",
                  None if cpu is None else cpu <= TARGET_WINNER_CPU_MS))
    return found


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _header(results: Results, argv: list[str]) -> list[str]:
    s = results.settings
    took = time.monotonic() - results.started
    date = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    args = f' BENCH_ARGS="{shlex.join(argv)}"' if argv else ""
    return [
        f"Run on {date}: `make bench{args}`, {took:.0f} s in all (start and stop included).",
        "",
        f"- **Machine**: {machine_text(results.db_version)}.",
        f"- **Code**: {results.code}.",
        f"- **Clients** (every row): seckill-bench, -c {s.concurrency} in flight over "
        f"--connections {s.connections}, --procs {s.procs} client processes; on the same "
        "machine as the servers.",
        f"- **Services**: an activity service per commit mode (coalesced, per_request) and a "
        f"coalesced one without order events (row (n)), with --workers {s.workers} each, "
        "product and order services with their default workers (the order service relays "
        "events to a private nats-server -js: row (r)), one database; "
        "SECKILL_LOG_LEVEL=WARNING, other settings at their defaults.",
        f"- **Load average** (1 min): {results.load_before} before the run, "
        f"{results.load_after} after the scenarios.",
        f"- **Warm-up**: {s.warmup_calls:,} unreported Seckill calls per activity service "
        "before (a)." if s.warmup_calls > 0 else "- **Warm-up**: none.",
    ]


def _rows(results: Results) -> list[str]:
    lines = ["", "| row | scenario | calls | seconds | req/s | p50 ms | p90 ms | p99 ms "
             "| max ms | outcomes |", "|---|---|--:|--:|--:|--:|--:|--:|--:|---|"]
    for row in results.rows:
        lines.append(
            f"| ({row.key}) | {_cell(row.title)} | "
            f"{'—' if row.calls is None else f'{row.calls:,}'} | {fmt(row.seconds, 2)} | "
            f"{fmt(row.rps, 0)} | {fmt(row.p50)} | {fmt(row.p90)} | {fmt(row.p99)} | "
            f"{fmt(row.max_ms)} | {_cell(row.outcome)} |")
    lines += ["", "### Targets", "", "| target | measured | met |", "|---|---|---|"]
    for name, measured, met in [*targets(results), *winner_targets(results)]:
        verdict = "not measured" if met is None else ("**met**" if met else "**not met**")
        lines.append(f"| {name} | {measured} | {verdict} |")
    return lines


def _cpu(results: Results) -> list[str]:
    rows = [row for row in results.rows if row.cpu_ms]
    if not rows:
        return []
    lines = ["", "### CPU per call, by process", "",
             "Each process's user + system CPU time (`/proc/<pid>/stat`, a service's "
             "supervisor and workers together; the order service relays the events) read "
             "before and after the row's calls, divided by the calls: milliseconds per call. "
             "Less noisy than req/s on a shared machine.", "",
             "| row | req/s | " + " | ".join(f"{name} ms" for name in PROCESSES)
             + " | all ms |", "|---|--:|" + "--:|" * (len(PROCESSES) + 1)]
    for row in rows:
        cells = " | ".join(fmt(row.cpu_ms.get(name), 3) for name in PROCESSES)
        lines.append(f"| ({row.key}) | {fmt(row.rps, 0)} | {cells} | "
                     f"{fmt(sum(row.cpu_ms.values()), 3)} |")
    return lines


def _memory(results: Results) -> list[str]:
    memory = results.memory
    if memory is None:
        return []
    lines = ["", "### Memory of the coalesced activity service's workers during (e)", "",
             "VmRSS from `/proc/<pid>/status` just before the soak and right after it; the "
             "peak of the samples taken every second.", "",
             "| worker pid | start MiB | end MiB | growth MiB | peak MiB |",
             "|--:|--:|--:|--:|--:|"]
    for pid in memory.pids:
        start, end = memory.start.get(pid), memory.end.get(pid)
        growth = None if start is None or end is None else end - start
        lines.append(f"| {pid} | {fmt(start)} | {fmt(end)} | "
                     f"{'—' if growth is None else f'{growth:+.1f}'} | "
                     f"{fmt(memory.peak.get(pid))} |")
    if memory.pids_after != memory.pids:
        lines += ["", f"The workers changed during the soak (restarted?): "
                      f"{memory.pids} before, {memory.pids_after} after."]
    return lines


def _checks(results: Results) -> list[str]:
    lines: list[str] = []
    for row in results.rows:
        if row.report is not None and row.report.invariants:
            lines += ["", f"Invariants of ({row.key}):", ""]
            lines += [f"- {'ok' if i.ok else '**FAILED**'}: {i.name}: {i.detail}"
                      for i in row.report.invariants]
    errors = [(row.key, message, n) for row in results.rows if row.report is not None
              for message, n in list(row.report.error_counts.items())[:5]]
    if errors:
        lines += ["", "Error messages (numbers folded to N), at most five kinds per row:", ""]
        lines += [f"- ({key}) {n:,}: `{message}`" for key, message, n in errors]
    if results.report_files:
        here = results.settings.output.parent
        names = ", ".join(f"[{p.name}]({Path(os.path.relpath(p, here)).as_posix()})"
                          for p in results.report_files)
        lines += ["", f"Reports: {names}. Service logs: `.run/bench/logs/`."]
    return lines


def section(results: Results, argv: list[str]) -> str:
    """The generated section of BENCHMARKS.md for one run."""
    lines = [*_header(results, argv), *_rows(results), *_cpu(results), *_memory(results),
             *_checks(results)]
    return "\n".join(lines) + "\n"


def write_markdown(path: Path, generated: str) -> None:
    """Replaces the text between the markers (appends it when there are none)."""
    block = f"{BEGIN}\n{generated}{END}\n"
    text = path.read_text(encoding="utf-8") if path.is_file() else "# Benchmarks\n"
    start, end = text.find(BEGIN), text.find(END)
    if start >= 0 and end > start:
        rest = text[end + len(END):].lstrip("\n")
        text = text[:start] + block + ("\n" + rest if rest else "")
    else:
        text = text.rstrip("\n") + "\n\n" + block
    path.write_text(text, encoding="utf-8")
