"""The cluster: hosts as network namespaces on a private bridge, what runs on each, and faults.

    root namespace ── bridge seckill-br0 (10.77.0.1/24)
      ├─ seckill-db1  10.77.0.11  mariadbd (Galera node db1) + check agent :9200
      ├─ seckill-db2  10.77.0.12  ...
      ├─ seckill-db3  10.77.0.13  ...
      ├─ seckill-app1 10.77.0.21  HAProxy 127.0.0.1:3306 -> one Synced+Primary node;
      │                           product :50051, activity :50052, order :50053
      └─ seckill-app2 10.77.0.22  the same

Every host is a namespace with one veth into the bridge, so each has its own address and
ports, and a fault is what it would be on a machine: SIGKILL to every process in the namespace
(`kill`), the link down (`partition`), latency on the database hosts' links (`delay`). State
(data dirs, configs, logs, state.json) lives under `.run/cluster/`; `down` removes all of it.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path

import grpc
import pymysql
from grpc_health.v1 import health_pb2, health_pb2_grpc

REPO = Path(__file__).resolve().parent.parent
# Namespaces are named <prefix>-<host>, the bridge <prefix>-br0; the hosts' /24 is <subnet>.0.
PREFIX = "seckill"
SUBNET = "10.77.0"
DB_PORT = 3306
AGENT_PORT = 9200
GCOMM_PORT = 4567  # Galera's group communication
SERVICE_PORTS = {"product": 50051, "activity": 50052, "order": 50053}
# Start order on an app host: activity calls product and order.
SERVICES = ("product", "order", "activity")
DATABASE = "seckill"
GALERA_PROVIDER = "/usr/lib/galera/libgalera_smm.so"
# Failure detection in a few seconds instead of Galera's defaults (suspect 5 s, inactive 15 s):
# the survivors of a killed write node form a new Primary component, and take writes, within
# about suspect_timeout. Fine on one LAN; across data centres the defaults are safer.
PROVIDER_OPTIONS = ";".join([
    "evs.keepalive_period=PT0.5S", "evs.suspect_timeout=PT2S", "evs.inactive_timeout=PT4S",
    "evs.inactive_check_period=PT0.5S", "evs.install_timeout=PT4S", "gcache.size=128M",
])
NODE_READY_S = 120.0  # a joiner may need a full state transfer (rsync)
SERVICE_READY_S = 90.0
STOP_GRACE_S = 5.0


class ClusterError(RuntimeError):
    """The cluster cannot do what was asked; the message says why."""


@dataclass(frozen=True)
class Host:
    name: str
    ip: str
    prefix: str = PREFIX

    @property
    def ns(self) -> str:
        return f"{self.prefix}-{self.name}"

    @property
    def veth(self) -> str:
        # The root side of the host's link (interface names have at most 15 characters).
        return f"{self.prefix[:8]}-{self.name}"


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
    partitioned: list[str] = field(default_factory=list)
    # SECKILL_* settings the services were started with beyond the cluster's own.
    service_env: dict[str, str] = field(default_factory=dict)


def run(*cmd: str, check: bool = True, quiet: bool = False) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if check and result.returncode != 0:
        raise ClusterError(f"{shlex.join(cmd)} failed: {result.stderr.strip()}")
    if not quiet and result.returncode != 0:
        print(f"cluster: {shlex.join(cmd)}: {result.stderr.strip()}", file=sys.stderr)
    return result


def ensure_packages() -> None:
    """galera-4, mariadb-server, haproxy and rsync (the state transfer), via apt when root."""
    missing = [pkg for pkg, path in (("mariadb-server", "/usr/sbin/mariadbd"),
                                     ("galera-4", GALERA_PROVIDER),
                                     ("haproxy", "/usr/sbin/haproxy"),
                                     ("rsync", "/usr/bin/rsync")) if not Path(path).exists()]
    if not missing:
        return
    if os.geteuid() != 0:
        raise ClusterError(f"missing packages {' '.join(missing)}: install them (needs root)")
    print(f"cluster: installing {' '.join(missing)}", file=sys.stderr)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True, env=env,
                   stdout=subprocess.DEVNULL)


def namespaces_available() -> str:
    """'' when this process can build the cluster here, else why not (one line)."""
    if sys.platform != "linux":
        return "network namespaces need Linux"
    if os.geteuid() != 0:
        return "the cluster needs root (network namespaces, mariadbd --user=mysql)"
    if shutil.which("ip") is None:
        return "the ip command (iproute2) is missing"
    # What `up` does, in miniature: a namespace, a bridge and a veth pair between them
    # (a container without CAP_SYS_ADMIN, or a kernel without bridges, fails here).
    name = f"skprobe{os.getpid() % 100000}"
    steps = [("netns", "add", name), ("link", "add", name, "type", "bridge"),
             ("link", "add", f"{name}v", "type", "veth", "peer", "name", "eth0", "netns", name)]
    try:
        for step in steps:
            probe = subprocess.run(["ip", *step], capture_output=True, text=True)
            if probe.returncode != 0:
                return f"`ip {' '.join(step)}` fails here: {probe.stderr.strip()}"
    finally:
        for undo in (("link", "del", f"{name}v"), ("link", "del", name), ("netns", "del", name)):
            subprocess.run(["ip", *undo], capture_output=True)
    return ""


def netem_available(ns: str) -> bool:
    """Whether `tc` can add netem (and prio) qdiscs in namespace `ns`: some kernels (e.g.
    minimal VM kernels) are built without them."""
    tc = ("ip", "netns", "exec", ns, "tc")
    probe = ("qdisc", "add", "dev", "lo", "root", "handle", "1:")
    ok = all(run(*tc, *probe, *kind, check=False, quiet=True).returncode == 0
             and run(*tc, "qdisc", "del", "dev", "lo", "root", check=False, quiet=True)
             .returncode == 0
             for kind in (("prio", "bands", "4"), ("netem", "delay", "1ms")))
    return ok


def _alive_pids(ns: str) -> list[int]:
    """Every live (not zombie) process in namespace `ns`."""
    result = run("ip", "netns", "pids", ns, check=False, quiet=True)
    pids = []
    for word in result.stdout.split():
        try:
            stat = Path(f"/proc/{word}/stat").read_text()
        except OSError:
            continue
        if stat.rpartition(")")[2].split()[0] != "Z":
            pids.append(int(word))
    return pids


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


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
    def bridge(self) -> str:
        return f"{self.state.prefix[:11]}-br0"

    @property
    def dbs(self) -> list[Host]:
        return [Host(f"db{i}", f"{self.state.subnet}.{10 + i}", self.state.prefix)
                for i in range(1, self.state.db_count + 1)]

    @property
    def apps(self) -> list[Host]:
        return [Host(f"app{i}", f"{self.state.subnet}.{20 + i}", self.state.prefix)
                for i in range(1, self.state.app_count + 1)]

    def host(self, name: str) -> Host:
        for host in (*self.dbs, *self.apps):
            if host.name == name:
                return host
        names = ", ".join(h.name for h in (*self.dbs, *self.apps))
        raise ClusterError(f"no host {name!r} in this cluster (hosts: {names})")

    def target(self, service: str) -> str:
        """The gRPC target naming `service` on every app host."""
        port = SERVICE_PORTS[service]
        return "ipv4:" + ",".join(f"{h.ip}:{port}" for h in self.apps)

    def socket(self, db: Host) -> Path:
        return self.root / db.name / "mysqld.sock"

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

    # --- whole cluster -------------------------------------------------------------------

    def up(self, *, db_count: int = 3, galera: bool = True, app_count: int = 2,
           service_env: dict[str, str] | None = None, relay_ms: float | None = None) -> None:
        """Builds the network and starts every host: the database first, then the apps."""
        if self.is_up():
            raise ClusterError("the cluster is already up: run 'make cluster-down' first")
        if not galera and (db_count != 1 or relay_ms is not None):
            raise ClusterError("without Galera there is one database host, and no relay")
        why = namespaces_available()
        if why:
            raise ClusterError(why)
        ensure_packages()
        if self.root.exists():  # the leftovers of a failed up
            shutil.rmtree(self.root)
        self.state = State(prefix=self.state.prefix, subnet=self.state.subnet,
                           db_count=db_count, app_count=app_count, galera=galera,
                           password=secrets.token_hex(12), admin_token=secrets.token_hex(24),
                           service_env=dict(service_env or {}), relay_ms=relay_ms)
        self._save_state()
        try:
            self._network_up()
            if relay_ms is not None:
                self._route_relays()
            self._init_datadirs()
            first, *others = self.dbs
            self._start_db(first, bootstrap=True)
            self._create_app_user(first)
            for db in others:  # one state transfer at a time: the donor serves one
                self._start_db(db)
            for app in self.apps:
                self._start_app_processes(app)
            self._wait_apps(self.apps)
            self._write_env()
        except BaseException:
            print(f"cluster: start-up failed; logs in {self.root / 'logs'}", file=sys.stderr)
            raise

    def is_up(self) -> bool:
        links = run("ip", "-o", "link", "show", "type", "bridge", quiet=True).stdout
        return f" {self.bridge}:" in links

    def down(self) -> None:
        """Stops every process of the cluster, removes the namespaces, the bridge and files."""
        namespaces = [ns for ns in run("ip", "netns", "list", check=False).stdout.split()
                      if ns.startswith(f"{self.state.prefix}-")]
        for ns in namespaces:
            self._signal_all(ns, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        while any(_alive_pids(ns) for ns in namespaces) and time.monotonic() < deadline:
            time.sleep(0.1)  # processes in another namespace: nothing to await
        for ns in namespaces:
            self._signal_all(ns, signal.SIGKILL)
            run("ip", "netns", "del", ns, check=False)
        if self.is_up():
            run("ip", "link", "del", self.bridge, check=False)
        shutil.rmtree(self.root, ignore_errors=True)
        self.env_file.unlink(missing_ok=True)

    # --- faults --------------------------------------------------------------------------

    def kill(self, name: str) -> None:
        """SIGKILL every process on host `name`, as a power cut would."""
        self._signal_all(self.host(name).ns, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while _alive_pids(self.host(name).ns):
            if time.monotonic() > deadline:
                raise ClusterError(f"processes on {name} survive SIGKILL")
            time.sleep(0.05)  # SIGKILL is delivered asynchronously

    def start(self, *names: str) -> None:
        """Starts what belongs on each named host (that is not running already).

        A database host joins the running cluster; when no node runs, the cluster is
        bootstrapped from the most advanced of the named nodes, as Galera documents for a
        full restart: the node with the highest recovered seqno starts a new cluster and the
        others join it.
        """
        hosts = [self.host(n) for n in names]
        dbs = [h for h in hosts if h in self.dbs and not self.db_running(h)]
        apps = [h for h in hosts if h in self.apps]
        started = list(dbs)
        if dbs:
            if not any(self.db_running(d) for d in self.dbs):
                positions = self.recover_positions(dbs)
                first = max(dbs, key=lambda d: positions[d.name])
                print(f"cluster: bootstrapping from {first.name}, the most advanced node "
                      f"(seqnos {positions})", file=sys.stderr)
                self._start_db(first, bootstrap=True)
                dbs.remove(first)
            for db in dbs:
                self._start_db(db)
            self.wait_routed(started)
        for app in apps:
            if not _alive_pids(app.ns):
                self._start_app_processes(app)
        self._wait_apps(apps)

    def wait_routed(self, dbs: list[Host], timeout_s: float = 15.0) -> None:
        """Returns once every running proxy counts `dbs` as up: a node that is back takes
        the connections again (failback) before `start` returns, not in the middle of
        whatever comes next."""
        names = {d.name for d in dbs}
        deadline = time.monotonic() + timeout_s
        while True:
            lagging = {}
            for app in self.apps:
                if not _alive_pids(app.ns):
                    continue
                up = {r["svname"] for r in self._haproxy_stat(app)
                      if r.get("status") == "UP" and r.get("svname") in names}
                if up != names:
                    lagging[app.name] = sorted(names - up)
            if not lagging:
                return
            if time.monotonic() > deadline:
                raise ClusterError(f"proxies still see nodes down after {timeout_s:.0f}s: "
                                   f"{lagging}")
            time.sleep(0.1)  # HAProxy's checks run on their own clock

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
        host = self.host(name)
        run("ip", "link", "set", host.veth, "down")
        if name not in self.state.partitioned:
            self.state.partitioned.append(name)
            self._save_state()

    def heal(self, name: str) -> None:
        host = self.host(name)
        run("ip", "link", "set", host.veth, "up")
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
        for db in self.dbs:
            tc = ("ip", "netns", "exec", db.ns, "tc")
            run(*tc, "qdisc", "del", "dev", "eth0", "root", check=False, quiet=True)
            if ms == 0:
                continue
            # A fourth band behind the usual three gets only what the filters send it.
            run(*tc, "qdisc", "add", "dev", "eth0", "root", "handle", "1:", "prio", "bands", "4")
            run(*tc, "qdisc", "add", "dev", "eth0", "parent", "1:4", "handle", "40:",
                "netem", "delay", f"{ms}ms")
            for other in self.dbs:
                if other != db:
                    run(*tc, "filter", "add", "dev", "eth0", "parent", "1:", "protocol", "ip",
                        "u32", "match", "ip", "dst", f"{other.ip}/32", "flowid", "1:4")
        self.state.delay_ms = ms
        self._save_state()

    # --- observing -----------------------------------------------------------------------

    def db_running(self, db: Host) -> bool:
        return any(_comm(p) == "mariadbd" for p in _alive_pids(db.ns))

    def node_status(self, db: Host) -> dict[str, str]:
        """The node's wsrep status variables (and {} when it does not answer)."""
        try:
            with self.admin(db, timeout_s=2) as conn, conn.cursor() as cur:
                cur.execute("SHOW GLOBAL STATUS LIKE 'wsrep%'")
                return {name: value for name, value in cur.fetchall()}
        except (pymysql.MySQLError, OSError):
            return {}

    def write_nodes(self) -> dict[str, str]:
        """For each running app host, the database host its proxy sends connections to."""
        chosen = {}
        for app in self.apps:
            servers = [r for r in self._haproxy_stat(app) if r.get("svname", "") in
                       {d.name for d in self.dbs}]
            up = [r for r in servers if r.get("status", "").startswith("UP")]
            # HAProxy's rule: an active server if one is up, else the first backup up.
            used = [r for r in up if r.get("bck") == "0"] or up
            if used:
                chosen[app.name] = used[0]["svname"]
        return chosen

    def status(self) -> dict[str, dict[str, object]]:
        report: dict[str, dict[str, object]] = {}
        for db in self.dbs:
            wsrep = self.node_status(db)
            report[db.name] = {
                "ip": db.ip, "processes": sorted({_comm(p) for p in _alive_pids(db.ns)}),
                "partitioned": db.name in self.state.partitioned,
                "state": wsrep.get("wsrep_local_state_comment", "-"),
                "component": wsrep.get("wsrep_cluster_status", "-"),
                "cluster_size": wsrep.get("wsrep_cluster_size", "-"),
                "seqno": wsrep.get("wsrep_last_committed", "-"),
            }
        writes = self.write_nodes()
        for app in self.apps:
            report[app.name] = {
                "ip": app.ip, "processes": sorted({_comm(p) for p in _alive_pids(app.ns)}),
                "partitioned": app.name in self.state.partitioned,
                "writes_to": writes.get(app.name, "-"),
            }
        return report

    def recover_positions(self, dbs: Iterable[Host]) -> dict[str, int]:
        """The last committed seqno of each stopped node: from grastate.dat after a clean
        stop, else by InnoDB recovery (`mariadbd --wsrep-recover`), as after a crash."""
        positions: dict[str, int] = {}
        recovering: dict[str, subprocess.Popen[bytes]] = {}
        for db in dbs:
            seqno = self._grastate(db).get("seqno", "-1")
            if int(seqno) >= 0:
                positions[db.name] = int(seqno)
                continue
            log = self.root / db.name / "recover.log"
            log.unlink(missing_ok=True)
            recovering[db.name] = subprocess.Popen(
                [*self._mariadbd_args(db), "--wsrep-recover", f"--log-error={log}"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for name, process in recovering.items():
            process.wait()
            text = (self.root / name / "recover.log").read_text(errors="replace")
            found = re.findall(r"Recovered position: [0-9a-f-]+:(-?\d+)", text)
            positions[name] = int(found[-1]) if found else -1
        return positions

    @contextmanager
    def admin(self, db: Host, timeout_s: float = 5, database: str | None = None
              ) -> Iterator[pymysql.Connection]:
        """root on node `db` through its Unix socket (works whatever its network state)."""
        conn = pymysql.connect(unix_socket=str(self.socket(db)), user="root", database=database,
                               connect_timeout=timeout_s, read_timeout=timeout_s,
                               write_timeout=timeout_s, autocommit=True)
        try:
            yield conn
        finally:
            conn.close()

    # --- network -------------------------------------------------------------------------

    def _network_up(self) -> None:
        run("ip", "link", "add", self.bridge, "type", "bridge")
        run("ip", "addr", "add", f"{self.state.subnet}.1/24", "dev", self.bridge)
        run("ip", "link", "set", self.bridge, "up")
        for host in (*self.dbs, *self.apps):
            run("ip", "netns", "add", host.ns)
            run("ip", "link", "add", host.veth, "type", "veth", "peer", "name", "eth0",
                "netns", host.ns)
            run("ip", "link", "set", host.veth, "master", self.bridge, "up")
            run("ip", "-n", host.ns, "addr", "add", f"{host.ip}/24", "dev", "eth0")
            run("ip", "-n", host.ns, "link", "set", "eth0", "up")
            run("ip", "-n", host.ns, "link", "set", "lo", "up")

    def _spawn(self, host: Host, label: str, cmd: list[str],
               env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        logs = self.root / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        with open(logs / f"{host.name}-{label}.log", "ab") as log:
            # A session of its own: a Ctrl-C in the shell that ran `up` does not reach it.
            return subprocess.Popen(["ip", "netns", "exec", host.ns, *cmd],
                                    stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT, env=env, start_new_session=True)

    @staticmethod
    def _signal_all(ns: str, sig: int) -> None:
        for pid in _alive_pids(ns):
            with suppress(ProcessLookupError):
                os.kill(pid, sig)

    # --- database hosts ------------------------------------------------------------------

    def _init_datadirs(self) -> None:
        """One initialised data dir, copied to every node: the joiners' is replaced by the
        state transfer anyway, and one mariadb-install-db is quicker than three."""
        template = self.root / "template"
        run("mariadb-install-db", "--no-defaults", f"--datadir={template}", "--user=mysql",
            "--auth-root-authentication-method=normal", "--skip-test-db")
        for db in self.dbs:
            shutil.copytree(template, self.root / db.name / "data", symlinks=True)
            shutil.chown(self.root / db.name, "mysql", "mysql")
            run("chown", "-R", "mysql:mysql", str(self.root / db.name))
        shutil.rmtree(template)

    def _mariadbd_args(self, db: Host) -> list[str]:
        home = self.root / db.name
        args = ["/usr/sbin/mariadbd", "--no-defaults", "--user=mysql",
                f"--datadir={home / 'data'}", f"--socket={home / 'mysqld.sock'}",
                f"--pid-file={home / 'mysqld.pid'}", f"--port={DB_PORT}",
                f"--bind-address={db.ip}", "--skip-name-resolve", "--max-connections=1000",
                "--innodb-buffer-pool-size=128M"]
        if self.state.galera:
            options = PROVIDER_OPTIONS
            if self.state.relay_ms is not None:
                # Peers reach this node only through its relay (see delay_relay).
                options += f";gmcast.listen_addr=tcp://{self._relayed(db)}:{GCOMM_PORT}"
            args += ["--wsrep-on=ON", f"--wsrep-provider={GALERA_PROVIDER}",
                     "--wsrep-cluster-name=seckill",
                     "--wsrep-cluster-address=gcomm://" + ",".join(d.ip for d in self.dbs),
                     f"--wsrep-node-address={db.ip}", f"--wsrep-node-name={db.name}",
                     "--wsrep-sst-method=rsync", f"--wsrep-provider-options={options}",
                     # What Galera requires of the server it replicates.
                     "--binlog-format=ROW", "--default-storage-engine=InnoDB",
                     "--innodb-autoinc-lock-mode=2"]
        return args

    @staticmethod
    def _relayed(db: Host) -> str:
        """The address the node listens for its peers on, behind its relay: on its own link,
        but in a subnet the other nodes have no route to (see _route_relays)."""
        a, b, _c = db.ip.split(".", 2)
        return f"{a}.{b}.250.{db.ip.rsplit('.', 1)[1]}"

    def _route_relays(self) -> None:
        """Each relay answers its peers' relayed addresses (policy routing: only packets
        from a host's main address, i.e. its relay, may reach the others' relayed
        addresses); a node's own connections come from its relayed address, which has no
        such route, so a node cannot bypass the others' relays."""
        for db in self.dbs:
            run("ip", "-n", db.ns, "addr", "add", f"{self._relayed(db)}/32", "dev", "eth0")
            run("ip", "-n", db.ns, "rule", "add", "from", db.ip, "lookup", "100")
            for other in self.dbs:
                if other != db:
                    run("ip", "-n", db.ns, "route", "add", self._relayed(other), "via",
                        other.ip, "table", "100")

    def _grastate(self, db: Host) -> dict[str, str]:
        path = self.root / db.name / "data" / "grastate.dat"
        if not path.exists():
            return {}
        pairs = (line.split(":", 1) for line in path.read_text().splitlines() if ":" in line)
        return {key.strip(): value.strip() for key, value in pairs}

    def _start_db(self, db: Host, *, bootstrap: bool = False) -> None:
        home = self.root / db.name
        args = [*self._mariadbd_args(db), f"--log-error={home / 'error.log'}"]
        if bootstrap and self.state.galera:
            # Galera refuses to bootstrap from a node that may be behind (safe_to_bootstrap:
            # 0 after a crash); the caller chose this node as the most advanced one.
            grastate = home / "data" / "grastate.dat"
            if grastate.exists():
                grastate.write_text(re.sub(r"safe_to_bootstrap: *0", "safe_to_bootstrap: 1",
                                           grastate.read_text()))
            args.append("--wsrep-new-cluster")
        if self.state.relay_ms is not None and not any(
                "delay_relay" in _cmdline(p) for p in _alive_pids(db.ns)):
            self._spawn(db, "relay", [
                self.python, "-m", "seckill_cluster.delay_relay",
                f"--listen={db.ip}:{GCOMM_PORT}", f"--to={self._relayed(db)}:{GCOMM_PORT}",
                f"--ms={self.state.relay_ms}"], env={**os.environ, "PYTHONPATH": str(REPO)})
        mariadbd = self._spawn(db, "mariadbd", args)
        self._spawn(db, "agent", [self.python, "-m", "seckill_cluster.check_agent",
                                  f"--socket={self.socket(db)}",
                                  f"--listen={db.ip}:{AGENT_PORT}"],
                    env={**os.environ, "PYTHONPATH": str(REPO)})
        self.wait_synced(db, mariadbd)

    def wait_synced(self, db: Host, process: subprocess.Popen[bytes] | None = None,
                    timeout_s: float = NODE_READY_S) -> None:
        """Returns once node `db` is Synced in the Primary component (or simply answers,
        without Galera)."""
        deadline = time.monotonic() + timeout_s
        while True:
            if process.poll() is not None if process else not self.db_running(db):
                raise ClusterError(f"mariadbd on {db.name} exited; see "
                                   f"{self.root / db.name / 'error.log'}")
            state = self.node_status(db)
            if state and (not self.state.galera or (
                    state.get("wsrep_local_state_comment") == "Synced"
                    and state.get("wsrep_cluster_status") == "Primary")):
                return
            if time.monotonic() > deadline:
                raise ClusterError(f"{db.name} not Synced+Primary after {timeout_s:.0f}s: "
                                   f"{state.get('wsrep_local_state_comment', 'no answer')}")
            time.sleep(0.2)  # a process in another namespace announces nothing

    def _create_app_user(self, db: Host) -> None:
        with self.admin(db) as conn, conn.cursor() as cur:
            cur.execute(f"CREATE DATABASE IF NOT EXISTS `{DATABASE}` "
                        "CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci")
            cur.execute("CREATE USER IF NOT EXISTS 'seckill'@'%%' IDENTIFIED BY %s",
                        (self.state.password,))
            cur.execute(f"GRANT ALL ON `{DATABASE}`.* TO 'seckill'@'%'")

    # --- app hosts -----------------------------------------------------------------------

    def _haproxy_config(self, app: Host) -> Path:
        home = self.root / app.name
        home.mkdir(parents=True, exist_ok=True)
        # The first node that its agent calls Synced+Primary gets every connection; the others
        # are backups, taken in order. Both proxies list the nodes in the same order, so both
        # app hosts write to the same node (Galera certifies concurrent writers against each
        # other; one writer has no conflicts). Sessions on a node marked down are cut, so the
        # services reconnect through the proxy to the next one at once.
        servers = "\n".join(
            f"  server {db.name} {db.ip}:{DB_PORT} check port {AGENT_PORT}"
            + (" backup" if i else "") for i, db in enumerate(self.dbs))
        config = home / "haproxy.cfg"
        config.write_text(f"""\
global
  maxconn 4000
  stats socket {home / 'haproxy.sock'} mode 600 level admin

defaults
  mode tcp
  timeout connect 1s
  timeout client 1h
  timeout server 1h
  timeout check 1s

listen mysql
  bind 127.0.0.1:{DB_PORT}
  option httpchk GET /
  http-check expect status 200
  default-server inter 500ms fastinter 250ms downinter 1s rise 2 fall 2 on-marked-down shutdown-sessions on-marked-up shutdown-backup-sessions
{servers}
""")  # noqa: E501
        return config

    def _haproxy_stat(self, app: Host) -> list[dict[str, str]]:
        path = self.root / app.name / "haproxy.sock"
        try:
            with socket.socket(socket.AF_UNIX) as sock:
                sock.settimeout(2)
                sock.connect(str(path))
                sock.sendall(b"show stat\n")
                data = b""
                while chunk := sock.recv(65536):
                    data += chunk
        except OSError:
            return []
        lines = data.decode().splitlines()
        if not lines:
            return []
        header = lines[0].lstrip("# ").split(",")
        return [dict(zip(header, line.split(","), strict=False)) for line in lines[1:] if line]

    def service_env(self, app: Host) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SECKILL_")}
        env.update(self.state.service_env)
        env.update({
            "PYTHONPATH": f"{REPO}:{REPO / 'gen'}",
            "SECKILL_MYSQL_URL": f"mysql://seckill:{self.state.password}@127.0.0.1:{DB_PORT}/"
                                 f"{DATABASE}",
            "SECKILL_ADMIN_TOKEN": self.state.admin_token,
        })
        for service, port in SERVICE_PORTS.items():
            env[f"SECKILL_{service.upper()}_ADDR"] = self.target(service)
            env[f"SECKILL_{service.upper()}_LISTEN_ADDR"] = f"{app.ip}:{port}"
        return env

    def _start_app_processes(self, app: Host) -> None:
        self._spawn(app, "haproxy", ["/usr/sbin/haproxy", "-db", "-f",
                                     str(self._haproxy_config(app))])
        env = self.service_env(app)
        for service in SERVICES:
            self._spawn(app, service, [self.python, "-m", f"{service}_svc"], env=env)

    def _wait_apps(self, apps: list[Host]) -> None:
        deadline = time.monotonic() + SERVICE_READY_S
        for app in apps:
            for service, port in SERVICE_PORTS.items():
                addr = f"{app.ip}:{port}"
                with grpc.insecure_channel(addr) as channel:
                    stub = health_pb2_grpc.HealthStub(channel)
                    while True:
                        left = deadline - time.monotonic()
                        if left <= 0:
                            raise ClusterError(
                                f"{service} on {app.name} ({addr}) not SERVING after "
                                f"{SERVICE_READY_S:.0f}s; see {self.root / 'logs'}")
                        try:
                            reply = stub.Check(health_pb2.HealthCheckRequest(),
                                               timeout=min(left, 5), wait_for_ready=True)
                            if reply.status == health_pb2.HealthCheckResponse.SERVING:
                                break
                        except grpc.RpcError:
                            pass
                        time.sleep(0.2)  # NOT_SERVING until its DB answers: ask again

    def _write_env(self) -> None:
        lines = ["# The cluster started by `make cluster-up`; removed by `make cluster-down`."]
        lines += [f"export {k}={shlex.quote(v)}" for k, v in self.exports().items()]
        self.env_file.parent.mkdir(parents=True, exist_ok=True)
        self.env_file.write_text("\n".join(lines) + "\n")
        self.env_file.chmod(0o600)  # it holds the admin token and DB password
