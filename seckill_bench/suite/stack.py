"""The stack under test: a fresh private MariaDB and NATS server (the order events' relay), the
product and order services, one activity service per commit mode and one that writes no order
events, all on one database (launched by seckill_stack.launcher)."""

from __future__ import annotations

import os
import secrets
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from seckill_stack.launcher import (
    Services,
    StackError,
    start_mariadb,
    start_nats,
    stop_mariadb,
    stop_nats,
)
from seckill_stack.mariadb import MariaDB
from seckill_stack.nats import NatsServer
from seckill_stack.services import REPO, free_port

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


def log(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


@dataclass
class BenchStack:
    workers: int  # processes per activity service
    token: str = field(default_factory=lambda: secrets.token_hex(24))
    db: MariaDB | None = None
    nats: NatsServer | None = None
    services: Services = field(default_factory=lambda: Services(RUN_DIR / "logs"))

    @property
    def log_dir(self) -> Path:
        return self.services.log_dir

    def addr(self, label: str) -> str:
        return self.services.address(label)

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
        start_mariadb(self.db)
        self.nats = NatsServer(RUN_DIR / "nats", free_port())
        log(f"starting a private nats-server -js on 127.0.0.1:{self.nats.port}")
        start_nats(self.nats)
        # Only our settings: a shell that sourced .run/stack.env must not leak into the stack.
        base = {k: v for k, v in os.environ.items() if not k.startswith("SECKILL_")}
        base.update({"SECKILL_MYSQL_URL": f"{self.db.url_base}/{DATABASE}",
                     "SECKILL_ADMIN_TOKEN": self.token, "SECKILL_LOG_LEVEL": "WARNING"})
        self.services.add("product", "product_svc", base)
        # The order service relays the events (row (r)).
        self.services.add("order", "order_svc", {**base, "SECKILL_EVENTS_NATS_URL": self.nats.url})
        peers = {"SECKILL_PRODUCT_ADDR": self.addr("product"),
                 "SECKILL_ORDER_ADDR": self.addr("order")}
        for label, settings in ACTIVITY_MODES.items():
            self.services.add(label, "activity_svc", {**base, **peers, **settings},
                              argv=("--workers", str(self.workers)))
        self.services.spawn()
        log("services starting: " + ", ".join(f"{label} {s.address} (pid {s.pid})"
                                              for label, s in self.services.running.items()))
        self.services.wait_serving(SERVING_TIMEOUT_S)

    def check_alive(self) -> None:
        dead = self.services.dead()
        if dead:
            raise StackError(f"service(s) exited during the run: {', '.join(dead)}; see "
                             f"{self.log_dir}")

    def stop(self) -> None:
        """Every service (each drains gracefully), then the database."""
        self.services.stop(lambda label: log(f"{label} stopped"))
        servers: list[tuple[str, Callable[[], object]]] = []
        if self.nats is not None:
            servers.append(("NATS", partial(stop_nats, self.nats)))
        if self.db is not None:
            servers.append(("MariaDB", partial(stop_mariadb, self.db)))
        for name, stop in servers:
            try:
                stop()
                log(f"{name} stopped")
            except StackError as exc:
                log(f"could not stop {name}: {exc}")
