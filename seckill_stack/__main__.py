"""`make up` / `make down` / `make status`: the stack on this machine, in the background.

    python -m seckill_stack {up|down|status} [--run-dir .run]

A private MariaDB (unless SECKILL_MYSQL_URL names another server), a private NATS server with
JetStream for the order events' relay (unless SECKILL_EVENTS_NATS_URL names another), then the
product, order and activity services. Settings come from the environment: SECKILL_MYSQL_URL,
SECKILL_ADMIN_TOKEN, SECKILL_{PRODUCT,ACTIVITY,ORDER}_ADDR, SECKILL_EVENTS_NATS_URL and every
other SECKILL_* setting (docs/CONFIGURATION.md), MARIADB_DIR (<run dir>/mariadb), MARIADB_PORT
(3307), NATS_DIR (<run dir>/nats), NATS_PORT (4223: not a system server's 4222), WAIT_TIMEOUT
(60 s). State lives in the
run dir: stack.env (the settings of the running stack; the demo sources it, `down` removes it),
admin_token, logs/<service>.log, pids/<service>.pid.

Whether something runs is decided by asking it (a query, a gRPC health check), so `up` after a
crash starts what is gone and keeps what answers.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import shlex
import signal
import sys
import time
from pathlib import Path

from seckill_common.config import DEFAULT_ADDRS
from seckill_stack.health import probe
from seckill_stack.launcher import (
    DEFAULT_MARIADB_PORT,
    DEFAULT_NATS_PORT,
    Services,
    StackError,
    port_number,
    start_mariadb,
    start_nats,
    stop_mariadb,
    stop_nats,
)
from seckill_stack.mariadb import MariaDB, alive
from seckill_stack.nats import NatsServer
from seckill_stack.services import (
    REPO,
    SERVICES,
    STOP_TIMEOUT_S,
    ServiceProcess,
    address_setting,
    listening,
)

SAVED = ("SECKILL_MYSQL_URL", "SECKILL_ADMIN_TOKEN", "SECKILL_PRODUCT_ADDR",
         "SECKILL_ACTIVITY_ADDR", "SECKILL_ORDER_ADDR", "STACK_PRIVATE_DB", "MARIADB_DIR",
         "MARIADB_PORT", "SECKILL_EVENTS_NATS_URL", "STACK_PRIVATE_NATS", "NATS_DIR", "NATS_PORT")


def say(message: str) -> None:
    print(f"stack: {message}", flush=True)


class DevStack:
    def __init__(self, run_dir: Path, env: dict[str, str]) -> None:
        self.run = run_dir
        self.env = env
        self.env_file = run_dir / "stack.env"

    def saved(self) -> dict[str, str]:
        """The settings the running stack was started with (empty when none was)."""
        values: dict[str, str] = {}
        if self.env_file.is_file():
            for line in self.env_file.read_text().splitlines():
                words = shlex.split(line, comments=True)
                if len(words) == 2 and words[0] == "export" and "=" in words[1]:
                    name, value = words[1].split("=", 1)
                    values[name] = value
        return values

    def choose(self) -> dict[str, str]:
        """Settings for a new stack: the environment's, with defaults, saved to stack.env."""
        env = self.env
        settings = {address_setting(f"{s}_svc"): env.get(address_setting(f"{s}_svc"))
                    or DEFAULT_ADDRS[s] for s in SERVICES}
        db_dir = env.get("MARIADB_DIR") or str(self.run / "mariadb")
        db_port = env.get("MARIADB_PORT") or str(DEFAULT_MARIADB_PORT)
        private_url = f"{self.database(db_dir, db_port).url_base}/seckill"
        # Our own URL counts as unset: a shell that sourced stack.env still gets its DB started.
        private = env.get("SECKILL_MYSQL_URL", "") in ("", private_url)
        token_file = self.run / "admin_token"
        if not env.get("SECKILL_ADMIN_TOKEN") and not token_file.is_file():
            # Generated once and kept, so scripts and shells that saved it keep working.
            token_file.touch(mode=0o600)
            token_file.write_text(secrets.token_hex(24))
        nats_dir = env.get("NATS_DIR") or str(self.run / "nats")
        nats_port = env.get("NATS_PORT") or str(DEFAULT_NATS_PORT)
        private_nats = self.nats(nats_dir, nats_port).url
        own_nats = env.get("SECKILL_EVENTS_NATS_URL", "") in ("", private_nats)
        settings.update({
            "SECKILL_EVENTS_NATS_URL": private_nats if own_nats
            else env["SECKILL_EVENTS_NATS_URL"],
            "STACK_PRIVATE_NATS": "1" if own_nats else "0",
            "NATS_DIR": nats_dir, "NATS_PORT": nats_port,
            "SECKILL_MYSQL_URL": private_url if private else env["SECKILL_MYSQL_URL"],
            "SECKILL_ADMIN_TOKEN": env.get("SECKILL_ADMIN_TOKEN") or token_file.read_text(),
            "STACK_PRIVATE_DB": "1" if private else "0",
            "MARIADB_DIR": db_dir, "MARIADB_PORT": db_port,
        })
        self.env_file.unlink(missing_ok=True)
        self.env_file.touch(mode=0o600)  # it holds the admin token
        self.env_file.write_text(
            "# Settings of the stack started by `make up`; removed by `make down`.\n"
            + "".join(f"export {name}={shlex.quote(settings[name])}\n" for name in SAVED))
        return settings

    @staticmethod
    def database(db_dir: str, port: str) -> MariaDB:
        return MariaDB(Path(db_dir), port_number("MARIADB_PORT", port))

    @staticmethod
    def nats(nats_dir: str, port: str) -> NatsServer:
        return NatsServer(Path(nats_dir), port_number("NATS_PORT", port))

    def services(self, settings: dict[str, str]) -> Services:
        env = {**self.env, **{k: v for k, v in settings.items() if k.startswith("SECKILL_")}}
        services = Services(self.run / "logs")
        for name in SERVICES:
            services.add(name, f"{name}_svc", env)
        return services

    def pid_file(self, name: str) -> Path:
        return self.run / "pids" / f"{name}.pid"

    def service_pid(self, name: str) -> int | None:
        """The pid recorded for service `name` if that process is alive and still ours."""
        try:
            pid = int(self.pid_file(name).read_text())
            command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            return None
        return pid if alive(pid) and f"{name}_svc".encode() in command else None

    def up(self, wait_s: float) -> None:
        (self.run / "pids").mkdir(parents=True, exist_ok=True)
        saved = self.saved()
        running = bool(saved) and any(asyncio.run(probe(saved[address_setting(f"{s}_svc")]))
                                for s in SERVICES)
        # Keep what the running services were given, whatever this shell has.
        settings = saved if running else self.choose()
        if settings["STACK_PRIVATE_DB"] == "1":
            db = self.database(settings["MARIADB_DIR"], settings["MARIADB_PORT"])
            started = start_mariadb(db)
            say(f"MariaDB {'started' if started else 'already running'} on 127.0.0.1:"
                f"{db.port}, data in {db.datadir}")
        if settings.get("STACK_PRIVATE_NATS") == "1":
            nats = self.nats(settings["NATS_DIR"], settings["NATS_PORT"])
            answered = nats.answers()
            start_nats(nats)
            say(f"NATS {'answers' if answered else 'started'} on 127.0.0.1:{nats.port}"
                f" (JetStream), store in {nats.root}")
        services = self.services(settings)
        to_start = []
        for name in SERVICES:
            service = services[name]
            answer = asyncio.run(probe(service.address))
            if answer is not None:
                say(f"{name} already running on {service.address} ({answer})")
                continue
            # Otherwise the wait below could be answered by a server that is not ours.
            if listening(service.address):
                raise StackError(f"{service.address} ({name}) is in use by another process; "
                                 f"stop it or set {address_setting(service.module)}")
            to_start.append(name)
        services.spawn(to_start, started=self.started)
        try:
            services.wait_serving(wait_s)
        except StackError as exc:
            raise StackError(f"the stack is not serving ({exc}); see the logs in "
                             f"{self.run / 'logs'}, then run 'make down'") from None
        say("serving: " + ", ".join(f"{n} {services.address(n)}" for n in SERVICES))

    def started(self, name: str, service: ServiceProcess) -> None:
        self.pid_file(name).write_text(str(service.pid))
        say(f"started {name} (pid {service.pid}) on {service.address}, log {service.log_path}")

    def down(self) -> None:
        settings = self.saved()
        pids = []
        for name in SERVICES:
            pid = self.service_pid(name)
            if pid is not None:
                os.kill(pid, signal.SIGTERM)  # graceful: NOT_SERVING, calls finish, pool closed
                pids.append(pid)
            self.pid_file(name).unlink(missing_ok=True)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for pid in pids:
            while alive(pid):
                if time.monotonic() > deadline:
                    # Safe for a service: every unit of work is one DB transaction.
                    say(f"pid {pid} ignored SIGTERM for {STOP_TIMEOUT_S:g} s; killing it")
                    os.kill(pid, signal.SIGKILL)
                    break
                time.sleep(0.1)  # not our child: nothing to wait on
        say("services stopped")
        if settings.get("STACK_PRIVATE_NATS") == "1":
            nats = self.nats(settings["NATS_DIR"], settings["NATS_PORT"])
            running = nats.recorded_pid() is not None
            stop_nats(nats)
            say("NATS stopped" if running else "NATS was not running")
        if settings.get("STACK_PRIVATE_DB") == "1":
            db = self.database(settings["MARIADB_DIR"], settings["MARIADB_PORT"])
            say("MariaDB stopped" if stop_mariadb(db) else "MariaDB was not running")
        self.env_file.unlink(missing_ok=True)

    def status(self) -> int:
        """3 (as LSB init scripts do) unless every part answers and serves."""
        settings = self.saved()
        if not settings:
            say("not started (no stack.env)")
            return 3
        code = 0
        for name in SERVICES:
            address = settings[address_setting(f"{name}_svc")]
            answer = asyncio.run(probe(address)) or "not answering"
            say(f"{name} on {address}: {answer}")
            code = code if answer == "SERVING" else 3
        if settings.get("STACK_PRIVATE_DB") == "1":
            db = self.database(settings["MARIADB_DIR"], settings["MARIADB_PORT"])
            up = db.answers()
            say(f"MariaDB on 127.0.0.1:{db.port}: {'answering' if up else 'not answering'}")
            code = code if up else 3
        if settings.get("STACK_PRIVATE_NATS") == "1":
            nats = self.nats(settings["NATS_DIR"], settings["NATS_PORT"])
            up = nats.answers()
            say(f"NATS on 127.0.0.1:{nats.port}: {'answering' if up else 'not answering'}")
            code = code if up else 3
        return code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m seckill_stack",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=("up", "down", "status"))
    parser.add_argument("--run-dir", type=Path, default=REPO / ".run",
                        help="where the stack keeps its state (default .run)")
    args = parser.parse_args(argv)
    stack = DevStack(args.run_dir.resolve(), dict(os.environ))
    try:
        if args.command == "up":
            stack.up(float(os.environ.get("WAIT_TIMEOUT") or 60))
        elif args.command == "down":
            stack.down()
        else:
            return stack.status()
    except StackError as exc:
        print(f"stack: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
