"""The stack under test: a fresh private MariaDB and NATS server (the order events' relay), the
product and order services, one activity service per commit mode and one that writes no order
events, all on one database (launched by seckill_stack)."""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

from seckill_stack.mariadb import MariaDB, MariaDBError
from seckill_stack.nats import NatsError, NatsServer
from seckill_stack.services import (
    REPO,
    ServiceProcess,
    ServiceStartError,
    free_port,
    wait_until_serving,
)

RUN_DIR = REPO / ".run" / "bench"
DATABASE = "seckill_bench"
SERVING_TIMEOUT_S = 60.0
# The activity services of one run, by label: the settings that set them apart.
ACTIVITY_MODES = {
    "activity-coalesced": {"SECKILL_COMMIT_MODE": "coalesced"},
    "activity-per_request": {"SECKILL_COMMIT_MODE": "per_request"},
    # Row (n): the sale of (b) without order events, for what the outbox costs.
    "activity-no-events": {"SECKILL_COMMIT_MODE": "coalesced", "SECKILL_EVENTS_ENABLED": "false"},
}


class StackError(RuntimeError):
    """The stack could not be started, or a service died during the run."""


def log(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


@dataclass
class BenchStack:
    workers: int  # processes per activity service
    token: str = field(default_factory=lambda: secrets.token_hex(24))
    db: MariaDB | None = None
    nats: NatsServer | None = None
    services: dict[str, ServiceProcess] = field(default_factory=dict)

    @property
    def log_dir(self) -> Path:
        return RUN_DIR / "logs"

    def addr(self, label: str) -> str:
        return self.services[label].address

    def db_version(self) -> str:
        return self.db.version() if self.db else "?"

    def start(self) -> None:
        # A server of an earlier run that was killed before it could stop its database.
        leftover = MariaDB(RUN_DIR / "mariadb", 0)
        if leftover.recorded_pid() is not None:
            leftover.stop()
        shutil.rmtree(RUN_DIR, ignore_errors=True)
        self.db = MariaDB(RUN_DIR / "mariadb", free_port())
        log(f"starting a private MariaDB on 127.0.0.1:{self.db.port} ({self.db.root})")
        try:
            # Detached: a Ctrl-C reaches only us, and we stop it in order.
            self.db.start(detach=True)
        except MariaDBError as exc:
            raise StackError(str(exc)) from None
        self.nats = NatsServer(RUN_DIR / "nats", free_port())
        log(f"starting a private nats-server -js on 127.0.0.1:{self.nats.port}")
        try:
            self.nats.start()
        except NatsError as exc:
            raise StackError(str(exc)) from None
        # Only our settings: a shell that sourced .run/stack.env must not leak into the stack.
        base = {k: v for k, v in os.environ.items() if not k.startswith("SECKILL_")}
        base.update({"SECKILL_MYSQL_URL": f"{self.db.url_base}/{DATABASE}",
                     "SECKILL_ADMIN_TOKEN": self.token, "SECKILL_LOG_LEVEL": "WARNING"})
        for label in ("product", "order"):
            # The order service relays the events (row (r)).
            relay = {"SECKILL_EVENTS_NATS_URL": self.nats.url} if label == "order" else {}
            self.services[label] = ServiceProcess(f"{label}_svc", {**base, **relay},
                                                  self.log_dir / f"{label}.log")
        peers = {"SECKILL_PRODUCT_ADDR": self.addr("product"),
                 "SECKILL_ORDER_ADDR": self.addr("order")}
        for label, settings in ACTIVITY_MODES.items():
            self.services[label] = ServiceProcess(
                "activity_svc", {**base, **peers, **settings}, self.log_dir / f"{label}.log",
                argv=("--workers", str(self.workers)))
        for service in self.services.values():
            service.spawn(detach=True)
        log("services starting: " + ", ".join(f"{label} {s.address} (pid {s.pid})"
                                              for label, s in self.services.items()))
        try:
            asyncio.run(wait_until_serving(list(self.services.values()), SERVING_TIMEOUT_S))
        except ServiceStartError as exc:
            raise StackError(str(exc)) from None

    def check_alive(self) -> None:
        dead = [label for label, s in self.services.items() if not s.alive()]
        if dead:
            raise StackError(f"service(s) exited during the run: {', '.join(dead)}; see "
                             f"{self.log_dir}")

    def stop(self) -> None:
        """Every service (each drains gracefully), then the database."""
        for label, service in self.services.items():
            if service.alive():
                service.terminate()
                log(f"{label} stopped")
        if self.nats is not None:
            try:
                self.nats.stop()
                log("NATS stopped")
            except NatsError as exc:
                log(f"could not stop NATS: {exc}")
        if self.db is not None:
            try:
                self.db.stop()
                log("MariaDB stopped")
            except MariaDBError as exc:
                log(f"could not stop MariaDB: {exc}")
