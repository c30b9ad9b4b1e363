"""The cluster: hosts as network namespaces on a private bridge, what runs on each, and faults.

    root namespace ── bridge seckill-br0 (10.77.0.1/24)
      ├─ seckill-db1  10.77.0.11  mariadbd (Galera node db1) + check agent :9200
      ├─ seckill-db2  10.77.0.12  ...
      ├─ seckill-db3  10.77.0.13  ...
      ├─ seckill-app1 10.77.0.21  HAProxy 127.0.0.1:3306 -> one Synced+Primary node
      │                           (db1 first; with `writers` 2, app2's proxy tries db2 first);
      │                           product :50051, activity :50052, order :50053
      └─ seckill-app2 10.77.0.22  the same

`hosts` owns the namespaces and the faults, `galera` the database hosts, `apps` the app hosts;
`Cluster` puts them together and keeps what `up` chose in state.json. Everything (data dirs,
configs, logs, state.json) lives under `.run/cluster/`; `down` removes all of it.
"""

from __future__ import annotations

import json
import secrets
import shlex
import shutil
import sys
from collections.abc import Iterable
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pymysql

from seckill_cluster import hosts
from seckill_cluster.apps import SERVICE_PORTS, AppHosts
from seckill_cluster.galera import DATABASE, DB_PORT, GALERA_PROVIDER, NODE_READY_S, DatabaseNodes
from seckill_cluster.hosts import (
    PREFIX,
    SUBNET,
    ClusterError,
    Host,
    Network,
    namespaces_available,
    netem_available,
    processes,
)
from seckill_stack.packages import apt_install
from seckill_stack.services import REPO


@dataclass
class State:
    """What `up` chose, kept in state.json so that later commands (and tests) agree on it."""

    prefix: str = PREFIX
    subnet: str = SUBNET
    db_count: int = 3
    app_count: int = 2
    galera: bool = True
    password: str = ""
    admin_token: str = ""
    delay_ms: int = 0
    # Replication through seckill_cluster.delay_relay with this delay (ms, each way): the
    # benchmark's latency where the kernel has no netem. None: nodes talk directly.
    relay_ms: float | None = None
    # How many nodes take writes: app host k's proxy prefers node k mod writers (AppHosts.
    # preferred). 1: every app host writes to db1, the documented deployment.
    writers: int = 1
    partitioned: list[str] = field(default_factory=list)
    # SECKILL_* settings the services were started with beyond the cluster's own.
    service_env: dict[str, str] = field(default_factory=dict)


def ensure_packages() -> None:
    """galera-4, mariadb-server, haproxy and rsync (the state transfer), via apt when root."""
    missing = [pkg for pkg, path in (("mariadb-server", "/usr/sbin/mariadbd"),
                                     ("galera-4", GALERA_PROVIDER),
                                     ("haproxy", "/usr/sbin/haproxy"),
                                     ("rsync", "/usr/bin/rsync")) if not Path(path).exists()]
    if not missing:
        return
    apt_install(missing, "the cluster", ClusterError)


class Cluster:
    """The cluster under `root` (default .run/cluster). Every method is synchronous."""

    def __init__(self, root: Path | None = None, python: str | None = None, *,
                 prefix: str = PREFIX, subnet: str = SUBNET) -> None:
        """`root` must be a directory the mysql user can reach (not a 0700 temp dir)."""
        self.root = (root or REPO / ".run" / "cluster").resolve()
        self.env_file = self.root.parent / f"{self.root.name}.env"
        self.python = python or sys.executable
        self.state = self._load_state()
        if not (self.root / "state.json").exists():
            self.state.prefix, self.state.subnet = prefix, subnet

    # --- layout --------------------------------------------------------------------------

    @property
    def network(self) -> Network:
        return Network(self.state.prefix, self.state.subnet)

    @property
    def dbs(self) -> list[Host]:
        return [Host(f"db{i}", f"{self.state.subnet}.{10 + i}", self.state.prefix)
                for i in range(1, self.state.db_count + 1)]

    @property
    def apps(self) -> list[Host]:
        return [Host(f"app{i}", f"{self.state.subnet}.{20 + i}", self.state.prefix)
                for i in range(1, self.state.app_count + 1)]

    @property
    def nodes(self) -> DatabaseNodes:
        return DatabaseNodes(self.root, self.dbs, self.python, self.state.galera,
                             self.state.relay_ms)

    @property
    def app_hosts(self) -> AppHosts:
        return AppHosts(self.root, self.apps, self.dbs, self.python, self.state.password,
                        self.state.admin_token, self.state.service_env, self.state.writers)

    def host(self, name: str) -> Host:
        for host in (*self.dbs, *self.apps):
            if host.name == name:
                return host
        names = ", ".join(h.name for h in (*self.dbs, *self.apps))
        raise ClusterError(f"no host {name!r} in this cluster (hosts: {names})")

    def target(self, service: str) -> str:
        """The gRPC target naming `service` on every app host."""
        return self.app_hosts.target(service)

    def db_url(self, db: Host) -> str:
        return f"mysql://seckill:{self.state.password}@{db.ip}:{DB_PORT}/{DATABASE}"

    def exports(self) -> dict[str, str]:
        """The settings a client in the root namespace needs (written to cluster.env)."""
        return {
            **{f"SECKILL_{s.upper()}_ADDR": self.target(s) for s in SERVICE_PORTS},
            "SECKILL_ADMIN_TOKEN": self.state.admin_token,
            "SECKILL_CLUSTER_DB_URLS": " ".join(self.db_url(d) for d in self.dbs),
        }

    def _load_state(self) -> State:
        path = self.root / "state.json"
        if path.exists():
            return State(**json.loads(path.read_text()))
        return State()

    def _save_state(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / "state.json"
        path.write_text(json.dumps(asdict(self.state), indent=2))
        path.chmod(0o600)  # it holds the DB password and the admin token

    def _write_env(self) -> None:
        lines = ["# The cluster started by `make cluster-up`; removed by `make cluster-down`."]
        lines += [f"export {k}={shlex.quote(v)}" for k, v in self.exports().items()]
        self.env_file.parent.mkdir(parents=True, exist_ok=True)
        self.env_file.write_text("\n".join(lines) + "\n")
        self.env_file.chmod(0o600)  # it holds the admin token and DB password

    # --- whole cluster -------------------------------------------------------------------

    def up(self, *, db_count: int = 3, galera: bool = True, app_count: int = 2,
           service_env: dict[str, str] | None = None, relay_ms: float | None = None,
           writers: int = 1) -> None:
        """Builds the network and starts every host: the database first, then the apps.
        `writers` > 1: the app hosts' proxies prefer different nodes (AppHosts.preferred)."""
        if self.is_up():
            raise ClusterError("the cluster is already up: run 'make cluster-down' first")
        if not galera and (db_count != 1 or relay_ms is not None):
            raise ClusterError("without Galera there is one database host, and no relay")
        if not 1 <= writers <= min(db_count, app_count):
            raise ClusterError(f"writers must be within 1..{min(db_count, app_count)} (one per "
                               f"app host at most, each a node of its own), got {writers}")
        why = namespaces_available()
        if why:
            raise ClusterError(why)
        ensure_packages()
        if self.root.exists():  # the leftovers of a failed up
            shutil.rmtree(self.root)
        self.state = State(prefix=self.state.prefix, subnet=self.state.subnet,
                           db_count=db_count, app_count=app_count, galera=galera,
                           password=secrets.token_hex(12), admin_token=secrets.token_hex(24),
                           service_env=dict(service_env or {}), relay_ms=relay_ms,
                           writers=writers)
        self._save_state()
        try:
            self.network.create([*self.dbs, *self.apps])
            self.nodes.create(self.state.password)
            self.app_hosts.start(self.apps)
            self._write_env()
        except BaseException:
            print(f"cluster: start-up failed; logs in {self.root / 'logs'}", file=sys.stderr)
            raise

    def is_up(self) -> bool:
        return self.network.exists()

    def down(self) -> None:
        """Stops every process of the cluster, removes the namespaces, the bridge and files."""
        self.network.remove()
        shutil.rmtree(self.root, ignore_errors=True)
        self.env_file.unlink(missing_ok=True)

    # --- faults --------------------------------------------------------------------------

    def kill(self, name: str) -> None:
        """SIGKILL every process on host `name`, as a power cut would."""
        hosts.kill(self.host(name))

    def start(self, *names: str) -> None:
        """Starts what belongs on each named host (that is not running already): a database
        host joins the running cluster, or bootstraps it (DatabaseNodes.start)."""
        named = [self.host(n) for n in names]
        dbs = [h for h in named if h in self.dbs and not self.nodes.running(h)]
        if dbs:
            self.nodes.start(dbs)
            self.wait_routed(dbs)
        self.app_hosts.start([h for h in named if h in self.apps])

    def restart_apps(self, service_env: dict[str, str]) -> None:
        """Restarts every app host's processes with these SECKILL_* settings (e.g. another
        SECKILL_COMMIT_MODE), kept for later `start`s too."""
        for app in self.apps:
            self.kill(app.name)
        self.state.service_env = dict(service_env)
        self._save_state()
        self.start(*(app.name for app in self.apps))

    def partition(self, name: str) -> None:
        """Cuts host `name` off the network (its link goes down; it keeps running)."""
        hosts.set_link(self.host(name), up=False)
        if name not in self.state.partitioned:
            self.state.partitioned.append(name)
            self._save_state()

    def heal(self, name: str) -> None:
        hosts.set_link(self.host(name), up=True)
        if name in self.state.partitioned:
            self.state.partitioned.remove(name)
            self._save_state()

    def delay(self, ms: int) -> None:
        """`ms` of latency on every packet from one database host to another (each way,
        so a round trip between two nodes takes 2 x ms more); 0 removes it. Traffic between
        the app hosts and the database is not delayed."""
        if not 0 <= ms <= 10_000:
            raise ClusterError(f"delay must be within 0..10000 ms, got {ms}")
        if ms and not netem_available(self.dbs[0].ns):
            raise ClusterError("this kernel has no netem or prio qdisc (sch_netem, sch_prio): "
                               "use `up --relay-ms MS` for latency between the nodes instead")
        hosts.delay(self.dbs, ms)
        self.state.delay_ms = ms
        self._save_state()

    # --- observing -----------------------------------------------------------------------

    def status(self) -> dict[str, dict[str, object]]:
        report: dict[str, dict[str, object]] = {}
        for db in self.dbs:
            wsrep = self.node_status(db)
            report[db.name] = {
                "ip": db.ip, "processes": processes(db.ns),
                "partitioned": db.name in self.state.partitioned,
                "state": wsrep.get("wsrep_local_state_comment", "-"),
                "component": wsrep.get("wsrep_cluster_status", "-"),
                "cluster_size": wsrep.get("wsrep_cluster_size", "-"),
                "seqno": wsrep.get("wsrep_last_committed", "-"),
            }
        writes = self.write_nodes()
        for app in self.apps:
            report[app.name] = {
                "ip": app.ip, "processes": processes(app.ns),
                "partitioned": app.name in self.state.partitioned,
                "writes_to": writes.get(app.name, "-"),
            }
        return report

    def node_status(self, db: Host) -> dict[str, str]:
        return self.nodes.status(db)

    def wait_synced(self, db: Host, timeout_s: float = NODE_READY_S) -> None:
        self.nodes.wait_synced(db, timeout_s=timeout_s)

    def recover_positions(self, dbs: Iterable[Host]) -> dict[str, int]:
        return self.nodes.recover_positions(dbs)

    def admin(self, db: Host, timeout_s: float = 5, database: str | None = None
              ) -> AbstractContextManager[pymysql.Connection]:
        return self.nodes.admin(db, timeout_s, database)

    def write_nodes(self) -> dict[str, str]:
        return self.app_hosts.write_nodes()

    def wait_routed(self, dbs: list[Host], timeout_s: float = 15.0) -> None:
        self.app_hosts.wait_routed(dbs, timeout_s)
