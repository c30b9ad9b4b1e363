"""`make bench`: measures the rows of BENCHMARKS.md on a stack of its own, in one run.

    python -m seckill_bench.suite [--workers N] [-c 64] [--connections 4] [--procs 2]
        [--calls 20000] [--flash-users 20000] [--flash-stock 10000] [--soak-seconds 60]
        [--rows b,q]      # --rows a,b,w: Health/Check, the flash sale, all winners (w1, w2)
        [--queue-buyers 50000] [--queue-stock 1000] [--queue-procs 4]   # rows (j1), (j2)

Writes BENCHMARKS.md's generated section, the HTML and JSON reports under benchmarks/, and the
section on stdout. Exit 0 when every row ran and every invariant held, 1 otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from seckill_bench.suite.h2load import run_rows as run_h2load_rows
from seckill_bench.suite.scenarios import Results, Settings, Suite
from seckill_bench.suite.stack import BenchStack, log
from seckill_bench.suite.table import code_version, load_average, section, write_markdown
from seckill_stack.launcher import StackError
from seckill_stack.services import REPO


def parse_args(argv: list[str] | None) -> tuple[Settings, list[str]]:
    cores = os.cpu_count() or 1
    p = argparse.ArgumentParser(prog="python -m seckill_bench.suite",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--workers", type=int, default=cores,
                   help=f"processes per activity service (default: cores, {cores})")
    p.add_argument("-c", "--concurrency", type=int, default=64,
                   help="calls in flight (default 64)")
    p.add_argument("--connections", type=int, default=4, help="channels (default 4)")
    p.add_argument("--procs", type=int, default=2, help="client processes (default 2)")
    p.add_argument("--calls", type=int, default=20_000,
                   help="calls of (a) Health/Check and (d) GetActivity (20,000)")
    p.add_argument("--flash-users", type=int, default=20_000,
                   help="(b), (c): users, each trying twice (20,000)")
    p.add_argument("--flash-stock", type=int, default=10_000, help="(b), (c): stock (10,000)")
    p.add_argument("--soak-seconds", type=float, default=60.0,
                   help="(e) seconds of soak (60; 0 skips it)")
    p.add_argument("--warmup-calls", type=int, default=1_000,
                   help="unreported Seckill calls per activity service first (1,000; 0: none)")
    p.add_argument("--queue-buyers", type=int, default=50_000,
                   help="(j1), (j2): buyers, each a stream or a Seckill caller (50,000)")
    p.add_argument("--queue-stock", type=int, default=1_000, help="(j1), (j2): stock (1,000)")
    p.add_argument("--queue-procs", type=int, default=4,
                   help="(j1), (j2): client processes of the crowd (4)")
    p.add_argument("--rows", default="",
                   help="only these rows, comma-separated (e.g. b,q; a,b,w for the CPU per "
                        "call of the flash sale and all winners; default all). Pass "
                        "--output and --reports elsewhere: a partial table is no BENCHMARKS.md")
    p.add_argument("--output", type=Path, default=REPO / "BENCHMARKS.md",
                   help="the Markdown file whose generated section is replaced")
    p.add_argument("--reports", type=Path, default=REPO / "benchmarks",
                   help="folder of the HTML and JSON reports")
    raw = sys.argv[1:] if argv is None else argv
    args = p.parse_args(raw)
    for name in ("workers", "concurrency", "connections", "procs", "calls", "flash_users",
                 "flash_stock", "queue_buyers", "queue_stock", "queue_procs"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.soak_seconds < 0 or args.warmup_calls < 0:
        p.error("--soak-seconds and --warmup-calls must be at least 0")
    if not args.procs <= args.connections <= args.concurrency:
        p.error("need --procs <= --connections <= --concurrency")
    settings = Settings(args.workers, args.concurrency, args.connections, args.procs,
                        args.calls, args.flash_users, args.flash_stock, args.soak_seconds,
                        args.warmup_calls, args.output.resolve(), args.reports.resolve(),
                        frozenset(filter(None, args.rows.split(","))), args.queue_buyers,
                        args.queue_stock, args.queue_procs)
    return settings, raw


def _interrupt(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@contextlib.contextmanager
def signals_ignored() -> Iterator[None]:
    """While the stack stops: a second Ctrl-C must not leave servers behind."""
    previous = {sig: signal.signal(sig, signal.SIG_IGN)
                for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def main(argv: list[str] | None = None, stdout: IO[str] | None = None) -> int:
    settings, raw = parse_args(argv)
    out = stdout or sys.stdout
    signal.signal(signal.SIGTERM, _interrupt)
    results = Results(settings, time.monotonic(), load_before=load_average(),
                      code=code_version())
    stack = BenchStack(settings.workers)
    try:
        stack.start()
        results.db_version = stack.db_version()
        log(f"stack serving after {time.monotonic() - results.started:.0f} s")
        suite = Suite(settings, stack, results)
        suite.run_all()
        run_h2load_rows(suite)  # the independent client's rows: seckill_bench/suite/h2load.py
        results.load_after = load_average()
    except StackError as exc:
        log(f"error: {exc}")
        return 1
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    finally:
        log("stopping the stack")
        with signals_ignored():
            stack.stop()
    generated = section(results, raw)
    write_markdown(settings.output, generated)
    out.write(generated)
    out.flush()
    log(f"wrote {settings.output} and {len(results.report_files)} files in {settings.reports}")
    failed = [r.key for r in results.rows
              if r.failed or (r.report is not None and not r.report.invariants_ok)]
    if failed:
        log(f"row(s) {', '.join(failed)} failed or broke an invariant")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
