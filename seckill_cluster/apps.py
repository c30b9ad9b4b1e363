"""The app hosts: HAProxy on 127.0.0.1:3306, sending every connection to one Synced+Primary
database node, and the three services behind it, listening on the host's address.

HAProxy's config and admin socket live under <root>/<app>/.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from seckill_cluster.galera import AGENT_PORT, DATABASE, DB_PORT
from seckill_cluster.hosts import ClusterError, Host, alive_pids, spawn
from seckill_common.client.tls import ClientTLS
from seckill_stack.health import run as wait_serving_all
from seckill_stack.launcher import DEFAULT_PORTS
from seckill_stack.services import SERVICES, python_env

SERVICE_PORTS = DEFAULT_PORTS
SERVICE_READY_S = 90.0
# The migration step waits for the database through the proxy (SECKILL_DB_STARTUP_TIMEOUT, 30 s)
# and then applies at most every shipped migration.
MIGRATE_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class AppHosts:
    """The app hosts under `root`, in front of the database hosts `dbs`; `python` runs the
    services, with the app user's `password`, the `admin_token` and `settings` (more SECKILL_*
    settings). `writers`: how many nodes take writes (see `preferred`)."""

    root: Path
    hosts: list[Host]
    dbs: list[Host]
    python: str
    password: str = ""
    admin_token: str = ""
    settings: dict[str, str] = field(default_factory=dict)
    writers: int = 1

    def preferred(self, app: Host) -> list[Host]:
        """The nodes in the order `app`'s proxy takes them: the k-th app host (from 0) starts
        at node k mod `writers`, so with 2 writers app1 writes to db1 and app2 to db2 (Galera
        then certifies the two against each other: the multi-writer case a failover or a
        switchover makes for a while), and with 1 every proxy writes to db1."""
        first = self.hosts.index(app) % self.writers
        return [*self.dbs[first:], *self.dbs[:first]]

    def target(self, service: str) -> str:
        """The gRPC target naming `service` on every app host."""
        port = SERVICE_PORTS[service]
        return "ipv4:" + ",".join(f"{h.ip}:{port}" for h in self.hosts)

    def service_env(self, app: Host) -> dict[str, str]:
        """The services' environment on `app`: ours without SECKILL_*, then `settings`, then
        the database through the local proxy and every service's address."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("SECKILL_")}
        env.update(self.settings)
        env.update({
            "SECKILL_MYSQL_URL": f"mysql://seckill:{self.password}@127.0.0.1:{DB_PORT}/"
                                 f"{DATABASE}",
            "SECKILL_ADMIN_TOKEN": self.admin_token,
            # The schema is a step of its own (see `start`): services only check it.
            "SECKILL_MIGRATE_ON_START": "false",
        })
        for service, port in SERVICE_PORTS.items():
            env[f"SECKILL_{service.upper()}_ADDR"] = self.target(service)
            env[f"SECKILL_{service.upper()}_LISTEN_ADDR"] = f"{app.ip}:{port}"
        return python_env(env)

    def start(self, apps: list[Host]) -> None:
        """HAProxy and the services on each of `apps` where nothing runs; returns once every
        service on `apps` answers SERVING."""
        logs = self.root / "logs"
        starting = [app for app in apps if not alive_pids(app.ns)]
        for app in starting:
            spawn(app, logs, "haproxy", ["/usr/sbin/haproxy", "-db", "-f",
                                         str(self._haproxy_config(app))])
        if starting:
            self._migrate(starting[0])
        for app in starting:
            env = self.service_env(app)
            for service in SERVICES:
                spawn(app, logs, service, [self.python, "-m", f"{service}_svc"], env=env)
        if apps:
            self._wait_serving(apps)

    def _migrate(self, app: Host) -> None:
        """Applies the migrations once, through `app`'s proxy, before any service starts.

        Galera keeps a named lock on one node only, so services migrating at start-up from
        several hosts could run the same DDL at once (a certification conflict, 1213): as in
        a real deployment, the migration is one step, and the services check the schema.
        """
        migration = spawn(app, self.root / "logs", "migrate",
                          [self.python, "-m", "seckill_common.database.migrations"],
                          env=self.service_env(app))
        try:
            code = migration.wait(timeout=MIGRATE_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            migration.kill()
            migration.wait()
            code = None
        if code != 0:
            raise ClusterError(f"the migration step on {app.name} failed ({code}); see "
                               f"{self.root / 'logs' / f'{app.name}-migrate.log'}")

    def _wait_serving(self, apps: list[Host]) -> None:
        addrs = [f"{app.ip}:{port}" for app in apps for port in SERVICE_PORTS.values()]
        # Why not goes to stderr; the caller reports.
        code = asyncio.run(wait_serving_all(addrs, [], "", SERVICE_READY_S,
                                            ClientTLS.from_env(self.settings), announce=False))
        if code != 0:
            # The logs may not outlive a failed run (cluster-down removes them): quote them.
            tails = "".join(
                f"\n--- {log.name}:\n" + "\n".join(log.read_text(errors="replace")
                                                   .splitlines()[-8:])
                for app in apps for service in SERVICES
                if (log := self.root / "logs" / f"{app.name}-{service}.log").exists())
            raise ClusterError(f"services not SERVING after {SERVICE_READY_S:.0f}s; see "
                               f"{self.root / 'logs'}; the last lines:{tails}")

    # --- HAProxy ---------------------------------------------------------------------------

    def _haproxy_config(self, app: Host) -> Path:
        home = self.root / app.name
        home.mkdir(parents=True, exist_ok=True)
        # The first node that its agent calls Synced+Primary gets every connection; the others
        # are backups, taken in order. By default both proxies list the nodes in the same order,
        # so both app hosts write to the same node (Galera certifies concurrent writers against
        # each other; one writer has no conflicts); `writers` > 1 rotates the order per app
        # host (`preferred`). Sessions on a node marked down are cut, so the services reconnect
        # through the proxy to the next one at once.
        servers = "\n".join(
            f"  server {db.name} {db.ip}:{DB_PORT} check port {AGENT_PORT}"
            + (" backup" if i else "") for i, db in enumerate(self.preferred(app)))
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

    def write_nodes(self) -> dict[str, str]:
        """For each running app host, the database host its proxy sends connections to."""
        chosen = {}
        for app in self.hosts:
            servers = [r for r in self._haproxy_stat(app) if r.get("svname", "") in
                       {d.name for d in self.dbs}]
            up = [r for r in servers if r.get("status", "").startswith("UP")]
            # HAProxy's rule: an active server if one is up, else the first backup up.
            used = [r for r in up if r.get("bck") == "0"] or up
            if used:
                chosen[app.name] = used[0]["svname"]
        return chosen

    def wait_routed(self, dbs: list[Host], timeout_s: float = 15.0) -> None:
        """Returns once every running proxy counts `dbs` as up: a node that is back takes
        the connections again (failback) before `start` returns, not in the middle of
        whatever comes next."""
        names = {d.name for d in dbs}
        deadline = time.monotonic() + timeout_s
        while True:
            lagging = {}
            for app in self.hosts:
                if not alive_pids(app.ns):
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
