"""The database hosts: a MariaDB Galera node on each (or one plain server, the benchmark's
baseline), beside it the check agent HAProxy asks, and with `relay_ms` a delay relay in front
of its group communication port.

Data dir, socket, pid file and logs of node <db> live under <root>/<db>/.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pymysql

from seckill_cluster.hosts import ClusterError, Host, alive_pids, cmdline, processes, run, spawn
from seckill_stack.services import python_env

DB_PORT = 3306
AGENT_PORT = 9200
GCOMM_PORT = 4567  # Galera's group communication
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


@dataclass(frozen=True)
class DatabaseNodes:
    """The database hosts under `root`; `python` runs the agents and relays."""

    root: Path
    hosts: list[Host]
    python: str
    galera: bool = True
    # Replication through seckill_cluster.delay_relay with this delay (ms, each way).
    relay_ms: float | None = None

    def socket(self, db: Host) -> Path:
        return self.root / db.name / "mysqld.sock"

    def running(self, db: Host) -> bool:
        return "mariadbd" in processes(db.ns)

    # --- starting --------------------------------------------------------------------------

    def create(self, password: str) -> None:
        """Initialises every node, bootstraps the first with the app user `seckill`
        (`password`), and has the others join it."""
        if self.relay_ms is not None:
            self._route_relays()
        self._init_datadirs()
        first, *others = self.hosts
        self._start(first, bootstrap=True)
        self._create_app_user(first, password)
        for db in others:  # one state transfer at a time: the donor serves one
            self._start(db)

    def start(self, dbs: list[Host]) -> None:
        """Starts the stopped nodes `dbs`: they join the running cluster. When no node runs,
        the cluster is bootstrapped from the most advanced of them, as Galera documents for a
        full restart: the node with the highest recovered seqno starts a new cluster and the
        others join it."""
        dbs = list(dbs)
        if not any(self.running(d) for d in self.hosts):
            positions = self.recover_positions(dbs)
            first = max(dbs, key=lambda d: positions[d.name])
            print(f"cluster: bootstrapping from {first.name}, the most advanced node "
                  f"(seqnos {positions})", file=sys.stderr)
            self._start(first, bootstrap=True)
            dbs.remove(first)
        for db in dbs:
            self._start(db)

    def _init_datadirs(self) -> None:
        """One initialised data dir, copied to every node: the joiners' is replaced by the
        state transfer anyway, and one mariadb-install-db is quicker than three."""
        template = self.root / "template"
        run("mariadb-install-db", "--no-defaults", f"--datadir={template}", "--user=mysql",
            "--auth-root-authentication-method=normal", "--skip-test-db")
        for db in self.hosts:
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
        if self.galera:
            options = PROVIDER_OPTIONS
            if self.relay_ms is not None:
                # Peers reach this node only through its relay (see delay_relay).
                options += f";gmcast.listen_addr=tcp://{self._relayed(db)}:{GCOMM_PORT}"
            args += ["--wsrep-on=ON", f"--wsrep-provider={GALERA_PROVIDER}",
                     "--wsrep-cluster-name=seckill",
                     "--wsrep-cluster-address=gcomm://" + ",".join(d.ip for d in self.hosts),
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
        for db in self.hosts:
            run("ip", "-n", db.ns, "addr", "add", f"{self._relayed(db)}/32", "dev", "eth0")
            run("ip", "-n", db.ns, "rule", "add", "from", db.ip, "lookup", "100")
            for other in self.hosts:
                if other != db:
                    run("ip", "-n", db.ns, "route", "add", self._relayed(other), "via",
                        other.ip, "table", "100")

    def _grastate(self, db: Host) -> dict[str, str]:
        path = self.root / db.name / "data" / "grastate.dat"
        if not path.exists():
            return {}
        pairs = (line.split(":", 1) for line in path.read_text().splitlines() if ":" in line)
        return {key.strip(): value.strip() for key, value in pairs}

    def _start(self, db: Host, *, bootstrap: bool = False) -> None:
        home = self.root / db.name
        logs = self.root / "logs"
        args = [*self._mariadbd_args(db), f"--log-error={home / 'error.log'}"]
        if bootstrap and self.galera:
            # Galera refuses to bootstrap from a node that may be behind (safe_to_bootstrap:
            # 0 after a crash); the caller chose this node as the most advanced one.
            grastate = home / "data" / "grastate.dat"
            if grastate.exists():
                grastate.write_text(re.sub(r"safe_to_bootstrap: *0", "safe_to_bootstrap: 1",
                                           grastate.read_text()))
            args.append("--wsrep-new-cluster")
        if self.relay_ms is not None and not any(
                "delay_relay" in cmdline(p) for p in alive_pids(db.ns)):
            spawn(db, logs, "relay", [
                self.python, "-m", "seckill_cluster.delay_relay",
                f"--listen={db.ip}:{GCOMM_PORT}", f"--to={self._relayed(db)}:{GCOMM_PORT}",
                f"--ms={self.relay_ms}"], env=python_env(dict(os.environ)))
        mariadbd = spawn(db, logs, "mariadbd", args)
        spawn(db, logs, "agent", [self.python, "-m", "seckill_cluster.check_agent",
                                  f"--socket={self.socket(db)}",
                                  f"--listen={db.ip}:{AGENT_PORT}"],
              env=python_env(dict(os.environ)))
        self.wait_synced(db, mariadbd)

    def _create_app_user(self, db: Host, password: str) -> None:
        with self.admin(db) as conn, conn.cursor() as cur:
            cur.execute(f"CREATE DATABASE IF NOT EXISTS `{DATABASE}` "
                        "CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci")
            cur.execute("CREATE USER IF NOT EXISTS 'seckill'@'%%' IDENTIFIED BY %s",
                        (password,))
            cur.execute(f"GRANT ALL ON `{DATABASE}`.* TO 'seckill'@'%'")

    # --- observing -------------------------------------------------------------------------

    def wait_synced(self, db: Host, process: subprocess.Popen[bytes] | None = None,
                    timeout_s: float = NODE_READY_S) -> None:
        """Returns once node `db` is Synced in the Primary component (or simply answers,
        without Galera)."""
        deadline = time.monotonic() + timeout_s
        while True:
            if process.poll() is not None if process else not self.running(db):
                raise ClusterError(f"mariadbd on {db.name} exited; see "
                                   f"{self.root / db.name / 'error.log'}")
            state = self.status(db)
            if state and (not self.galera or (
                    state.get("wsrep_local_state_comment") == "Synced"
                    and state.get("wsrep_cluster_status") == "Primary")):
                return
            if time.monotonic() > deadline:
                raise ClusterError(f"{db.name} not Synced+Primary after {timeout_s:.0f}s: "
                                   f"{state.get('wsrep_local_state_comment', 'no answer')}")
            time.sleep(0.2)  # a process in another namespace announces nothing

    def status(self, db: Host) -> dict[str, str]:
        """The node's wsrep status variables (and {} when it does not answer)."""
        try:
            with self.admin(db, timeout_s=2) as conn, conn.cursor() as cur:
                cur.execute("SHOW GLOBAL STATUS LIKE 'wsrep%'")
                return {name: value for name, value in cur.fetchall()}
        except (pymysql.MySQLError, OSError):
            return {}

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
