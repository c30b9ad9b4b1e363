"""`make bench-cluster`: the cluster table of BENCHMARKS.md, from one run.

    python -m seckill_cluster bench [--seconds 10] [-c 64] [--connections 4] [--procs 2]

Rows: one plain MariaDB server, then the 3-node Galera cluster with 0 ms and 2 ms between the
database hosts; columns: all-winner Seckill throughput and latency with the services in
`coalesced` and in `per_request` commit mode, and the ratio. Each cell is `seckill-bench`
(run as a subprocess, as a user would) from the root namespace through both app hosts, for a
fixed time, on an activity of its own whose stock never runs out, so every call commits an
order; the invariants are checked through the API after each. The run brings its own clusters
up and down (under .run/cluster-bench, namespaces `skbench-*`), and rewrites only the part of
BENCHMARKS.md between the cluster-table markers.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from seckill_cluster.cluster import Cluster
from seckill_cluster.hosts import ClusterError, netem_available
from seckill_stack.sale import open_sale
from seckill_stack.services import REPO, python_env

BEGIN, END = "<!-- cluster-table -->", "<!-- /cluster-table -->"
MODES = ("coalesced", "per_request")
STOCK = 10_000_000  # never runs out: every call wins


@dataclass(frozen=True)
class Cell:
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int


@dataclass(frozen=True)
class Row:
    database: str
    delay_ms: int
    cells: dict[str, Cell] | None  # None: not measured
    note: str = ""


def load(cluster: Cluster, args: argparse.Namespace, name: str, seconds: float) -> Cell:
    """seckill-bench against both app hosts: all-winner Seckill calls for `seconds`."""
    activity_id = open_sale(cluster.target("product"), cluster.target("activity"),
                            cluster.state.admin_token, name, STOCK)
    env = python_env({**os.environ, "SECKILL_ORDER_ADDR": cluster.target("order")})
    cmd = [sys.executable, "-m", "seckill_bench", "--call", "seckill.v1.ActivityService/Seckill",
           "-d", json.dumps({"activity_id": activity_id, "user_id": "u-{{.RequestNumber}}"}),
           "-z", f"{seconds}s", "-c", str(args.concurrency), "--connections",
           str(args.connections), "--procs", str(args.procs), "-O", "json", "--no-progress",
           cluster.target("activity")]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise ClusterError(f"seckill-bench failed ({done.returncode}): {done.stderr.strip()}")
    report = json.loads(done.stdout)
    latency = {d["percentage"]: d["latency"] / 1e6 for d in report["latencyDistribution"]}
    errors = sum(n for code, n in report["statusCodeDistribution"].items() if code != "OK")
    return Cell(report["rps"], latency[50], latency[99], errors)


def measure(cluster: Cluster, args: argparse.Namespace, label: str) -> dict[str, Cell]:
    cells = {}
    for mode in MODES:
        cluster.restart_apps({"SECKILL_COMMIT_MODE": mode, "SECKILL_LOG_LEVEL": "WARNING"})
        load(cluster, args, f"warm-up {label} {mode}", args.warmup)
        cells[mode] = load(cluster, args, f"{label} {mode}", args.seconds)
        print(f"bench-cluster: {label} {mode}: {cells[mode]}", file=sys.stderr)
    return cells


def run(args: argparse.Namespace) -> list[Row]:
    cluster = Cluster(REPO / ".run" / "cluster-bench", prefix="skbench", subnet="10.79.0")
    rows = []
    try:
        cluster.down()
        cluster.up(db_count=1, galera=False)
        rows.append(Row("1 MariaDB server", 0, measure(cluster, args, "single")))
        cluster.down()
        cluster.up()
        rows.append(Row("3-node Galera", 0, measure(cluster, args, "galera 0ms")))
        if netem_available(cluster.dbs[0].ns):
            cluster.delay(2)
            rows.append(Row("3-node Galera", 2, measure(cluster, args, "galera 2ms")))
        else:
            # No netem in this kernel: the delay comes from relays in the replication path
            # (seckill_cluster.delay_relay); a 0 ms row through them shows their own cost.
            for ms in (0, 2):
                cluster.down()
                cluster.up(relay_ms=ms)
                rows.append(Row("3-node Galera, relayed", ms,
                                measure(cluster, args, f"galera relayed {ms}ms")))
    finally:
        cluster.down()
    return rows


def render(rows: list[Row], args: argparse.Namespace) -> str:
    def cell(c: Cell) -> str:
        return f"{c.rps:,.0f} | {c.p50_ms:.1f} / {c.p99_ms:.1f}"

    lines = [
        BEGIN,
        f"Measured {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC on {os.cpu_count()} cores "
        f"({platform.machine()}, Linux {platform.release()}) by `make bench-cluster`: "
        f"all-winner `Seckill` for {args.seconds:g} s per cell (after a {args.warmup:g} s "
        f"warm-up), seckill-bench -c {args.concurrency} --connections {args.connections} "
        f"--procs {args.procs} from the root namespace through both app hosts (round_robin); "
        "each app host runs the three services with the default workers behind its HAProxy. "
        "Delay: netem on each database host's packets to the other database hosts (one way; "
        "a round trip between two nodes gains twice that); where the kernel has no netem, "
        "the rows say *relayed*: replication between the nodes goes through a TCP relay "
        "(seckill_cluster/delay_relay.py, Python) that holds each chunk that long each way, "
        "and its 0 ms row shows what the relay itself costs.",
        "",
        "| database | delay between DB hosts | coalesced calls/s | p50 / p99 ms "
        "| per_request calls/s | p50 / p99 ms | coalesced / per_request |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        if row.cells is None:
            lines.append(f"| {row.database} | {row.delay_ms} ms | {row.note} | | | | |")
            continue
        co, pr = row.cells["coalesced"], row.cells["per_request"]
        lines.append(f"| {row.database} | {row.delay_ms} ms | {cell(co)} | {cell(pr)} | "
                     f"{co.rps / pr.rps:.1f}x |")
    failed = {r.database: {m: c.errors for m, c in r.cells.items() if c.errors}
              for r in rows if r.cells}
    if any(failed.values()):
        lines += ["", f"Calls that failed: {failed}."]
    lines.append(END)
    return "\n".join(lines)


def write(table: str, path: Path) -> None:
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    if BEGIN in text and END in text:
        head, _, rest = text.partition(BEGIN)
        _, _, tail = rest.partition(END)
        text = head + table + tail
    else:
        text = (text.rstrip("\n") + "\n\n## The cluster (`make bench-cluster`)\n\n"
                "A 3-node MariaDB Galera cluster and two app hosts in network namespaces "
                "(docs/CLUSTER.md) against one plain MariaDB server in the same layout.\n\n"
                + table + "\n")
    path.write_text(text)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="scripts/cluster.sh bench",
                                description="The cluster table of BENCHMARKS.md.")
    p.add_argument("--seconds", type=float, default=10.0, help="per cell (default 10)")
    p.add_argument("--warmup", type=float, default=2.0, help="per cell (default 2)")
    p.add_argument("-c", "--concurrency", type=int, default=64)
    p.add_argument("--connections", type=int, default=4)
    p.add_argument("--procs", type=int, default=2)
    p.add_argument("--output", type=Path, default=REPO / "BENCHMARKS.md")
    args = p.parse_args(argv)
    started = time.monotonic()
    try:
        rows = run(args)
    except ClusterError as exc:
        print(f"bench-cluster: {exc}", file=sys.stderr)
        return 1
    table = render(rows, args)
    write(table, args.output)
    print(table)
    print(f"bench-cluster: wrote {args.output} in {time.monotonic() - started:.0f} s",
          file=sys.stderr)
    return 0
