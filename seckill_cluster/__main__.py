"""`python -m seckill_cluster VERB` (scripts/cluster.sh): the cluster and its faults.

A development tool run from the repository (not installed with the services).

    up [--nodes 3] [--single] [--relay-ms MS] [--writers 1]
                                start db1..db3 (Galera) and app1, app2; write .run/cluster.env
    down                        stop everything, remove namespaces, bridge and files
    status                      every host: processes, Galera state, where each proxy writes
    kill HOST...                SIGKILL every process on the hosts
    start HOST...               start them again (a full restart bootstraps from the most
                                advanced node)
    partition HOST / heal HOST  cut a host off the network / reconnect it
    delay MS                    latency between the database hosts (0 removes it)
    bench                       the cluster table of BENCHMARKS.md (seckill_cluster.bench)

Exit codes: 0 done, 1 the cluster could not do it, 2 bad usage.
"""

from __future__ import annotations

import argparse
import sys

from seckill_cluster.cluster import Cluster
from seckill_cluster.hosts import ClusterError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="scripts/cluster.sh",
                                description="A 3-node MariaDB Galera cluster and two app hosts "
                                            "in network namespaces, with faults on demand.")
    verbs = p.add_subparsers(dest="verb", required=True)
    up = verbs.add_parser("up", help="start the cluster")
    up.add_argument("--nodes", type=int, default=3, choices=(1, 2, 3, 4, 5),
                    help="Galera nodes (default 3)")
    up.add_argument("--single", action="store_true",
                    help="one plain MariaDB server instead of Galera (the benchmark's baseline)")
    up.add_argument("--relay-ms", type=float, default=None, metavar="MS",
                    help="replication between the nodes through delaying TCP relays (MS each "
                         "way): latency where the kernel has no netem for `delay`")
    up.add_argument("--writers", type=int, default=1, choices=(1, 2),
                    help="nodes taking writes: 2 makes app1's proxy prefer db1 and app2's db2 "
                         "(Galera's multi-writer case); default 1, both write to db1")
    verbs.add_parser("down", help="stop and remove everything the cluster made")
    verbs.add_parser("status", help="what runs where")
    for verb, what in (("kill", "SIGKILL every process on these hosts"),
                       ("start", "start these hosts' processes again")):
        v = verbs.add_parser(verb, help=what)
        v.add_argument("hosts", nargs="+", metavar="HOST")
    for verb, what in (("partition", "cut a host off the network"),
                       ("heal", "reconnect a partitioned host")):
        v = verbs.add_parser(verb, help=what)
        v.add_argument("host", metavar="HOST")
    delay = verbs.add_parser("delay", help="latency between the database hosts")
    delay.add_argument("ms", type=int, metavar="MS")
    return p


def print_status(cluster: Cluster) -> int:
    report = cluster.status()
    for name, facts in report.items():
        procs = ",".join(facts.pop("processes")) or "(nothing running)"  # type: ignore[arg-type]
        cut = " PARTITIONED" if facts.pop("partitioned") else ""
        rest = " ".join(f"{k}={v}" for k, v in facts.items() if k != "ip")
        print(f"{name:5} {facts['ip']:12} {procs:40} {rest}{cut}")
    if cluster.state.relay_ms is not None:
        print(f"replication through delaying relays: {cluster.state.relay_ms:g} ms each way")
    if cluster.state.delay_ms:
        print(f"delay between database hosts: {cluster.state.delay_ms} ms")
    for name, value in cluster.exports().items():
        if name.endswith("_ADDR"):
            print(f"{name}={value}")
    print(f"databases: mysql://seckill:...@<db ip>:3306/seckill (root: the Unix socket "
          f"{cluster.root}/<db>/mysqld.sock); logs: {cluster.root}/logs")
    print(f"settings (admin token, DB URLs): . {cluster.env_file}")
    return 0


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    if argv[:1] == ["bench"]:
        from seckill_cluster.bench import main as bench_main
        return bench_main(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return run_verb(Cluster(), args)
    except ClusterError as exc:
        print(f"cluster: {exc}", file=sys.stderr)
        return 1


def run_verb(cluster: Cluster, args: argparse.Namespace) -> int:
    """Runs one verb of `seckill_cluster`; the exit code (3: `status` of a cluster not up)."""
    if args.verb == "up":
        cluster.up(db_count=1 if args.single else args.nodes, galera=not args.single,
                   relay_ms=args.relay_ms, writers=args.writers)
        print_status(cluster)
    elif args.verb == "down":
        cluster.down()
        print("cluster: down (namespaces, processes and .run/cluster removed)")
    elif args.verb == "status":
        if not cluster.is_up():
            print("cluster: not up")
            return 3
        return print_status(cluster)
    elif args.verb == "kill":
        for host in args.hosts:
            cluster.kill(host)
    elif args.verb == "start":
        cluster.start(*args.hosts)
    elif args.verb == "partition":
        cluster.partition(args.host)
    elif args.verb == "heal":
        cluster.heal(args.host)
    elif args.verb == "delay":
        cluster.delay(args.ms)
    return 0


if __name__ == "__main__":
    sys.exit(main())
