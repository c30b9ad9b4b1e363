"""A private NATS server with JetStream (`nats-server -js`): its store, pid file and log under
one folder, listening on 127.0.0.1 (or a test cluster's bridge), for the order events' relay
(docs/EVENTS.md).

Debian's `nats-server` package provides the binary; as root a missing one is installed
through apt, as the private MariaDB's is. It runs when its port answers NATS's greeting.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from seckill_stack.mariadb import alive, live_pid
from seckill_stack.packages import apt_install

START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 20.0


class NatsError(RuntimeError):
    """The server could not be installed, started or stopped; the message says why."""


def server_binary() -> str | None:
    # /usr/sbin is where Debian puts nats-server, off a non-root user's PATH.
    return shutil.which("nats-server") or shutil.which("nats-server", path="/usr/sbin:/usr/bin")


def install_server() -> str:
    """The nats-server binary: as root, installs Debian's nats-server through apt if missing."""
    found = server_binary()
    if found:
        return found
    apt_install("nats-server", "nats-server", NatsError)
    found = server_binary()
    if not found:
        raise NatsError("apt installed nats-server but no binary was found")
    return found


def answers(port: int, timeout_s: float = 1.0, host: str = "127.0.0.1") -> bool:
    """Whether a NATS server on `host`:`port` greets (its INFO line)."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as conn:
            conn.settimeout(timeout_s)
            return conn.recv(4).startswith(b"INFO")
    except OSError:
        return False


class NatsServer:
    """A nats-server with JetStream under `root` on `host`:`port` (loopback, or the address
    of a cluster's bridge that its app hosts reach)."""

    def __init__(self, root: Path, port: int, host: str = "127.0.0.1") -> None:
        self.root = Path(root).resolve()
        self.port = port
        self.host = host
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    @property
    def pid_file(self) -> Path:
        return self.root / "nats-server.pid"

    @property
    def log_file(self) -> Path:
        return self.root / "nats-server.log"

    def answers(self) -> bool:
        return answers(self.port, host=self.host)

    def start(self) -> None:
        """Starts the server (its JetStream store kept across restarts) and waits until it
        greets; a no-op when it already does."""
        if self.answers():
            return
        binary = install_server()
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "ab") as log:
            self.process = subprocess.Popen(
                [binary, "-js", "-a", self.host, "-p", str(self.port),
                 "-sd", str(self.root / "jetstream"), "-P", str(self.pid_file)],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self.answers():
            if self.process.poll() is not None or time.monotonic() > deadline:
                tail = self.log_file.read_text(errors="replace")[-2000:]
                raise NatsError(f"nats-server did not start on port {self.port}:\n{tail}")
            time.sleep(0.05)  # a child process's port: nothing to await

    def recorded_pid(self) -> int | None:
        return live_pid(self.pid_file)

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> None:
        """Stops the server (SIGKILL: as a crash) and waits until it is gone."""
        pid = self.process.pid if self.process is not None else self.recorded_pid()
        if pid is None:
            return
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while alive(pid) and (self.process is None or self.process.poll() is None):
            if time.monotonic() > deadline:
                raise NatsError(f"nats-server (pid {pid}) did not stop")
            time.sleep(0.05)  # another process's exit: nothing to await
        self.process = None
