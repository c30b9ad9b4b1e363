"""A private MariaDB server: its own data dir, socket, pid file and log under one folder,
listening on 127.0.0.1 only, so it never touches a system server on 3306.

It runs when it answers a query, not when its pid file names a live process: a server that was
SIGKILLed leaves a zombie or an exiting process behind that still passes `kill -0`.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pymysql

from seckill_stack.packages import apt_install

START_TIMEOUT_S = 60.0  # first start includes InnoDB's crash recovery after a SIGKILL
STOP_TIMEOUT_S = 60.0  # a clean InnoDB shutdown
# A pid that is gone or a zombie ('Z'), or exiting ('X'), holds no port and no InnoDB lock.
DEAD_STATES = ("Z", "X")


class MariaDBError(RuntimeError):
    """The server could not be installed, started or stopped; the message says why."""


def _which(name: str) -> str | None:
    # /usr/sbin is not on a non-root user's PATH, but that is where Debian puts mariadbd.
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin")


def install_server() -> None:
    """Makes sure mariadbd exists: as root, installs Debian's mariadb-server through apt."""
    if _which("mariadbd") and _which("mariadb-install-db"):
        return
    # A system server that apt may start alongside does not matter: ours has its own port.
    apt_install("mariadb-server", "mariadbd", MariaDBError)


def process_state(pid: int) -> str | None:
    """The state letter of `pid` (R, S, D, Z, ...), or None when there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[0]


def alive(pid: int) -> bool:
    return process_state(pid) not in (None, *DEAD_STATES)


def live_pid(pid_file: Path) -> int | None:
    """The pid in `pid_file` if that process is still alive (not a zombie) and is the server
    that wrote it: its command line names `pid_file`. A file left by a killed server may hold
    a pid the system has since given to another process (another stack's database): that one
    must never be stopped in its place."""
    try:
        pid = int(pid_file.read_text().strip())
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError):
        return None
    named = os.fsencode(pid_file)
    if not any(named in arg for arg in argv):
        return None
    return pid if alive(pid) else None


class MariaDB:
    """A mariadbd under `root` on 127.0.0.1:`port`, started, asked and stopped from here."""

    def __init__(self, root: Path, port: int, max_connections: int = 1000,
                 extra_args: tuple[str, ...] = ()) -> None:
        self.root = Path(root).resolve()  # mariadbd resolves relative paths to its datadir
        self.datadir = self.root / "data"
        self.port = port
        self.max_connections = max_connections
        self.extra_args = extra_args  # e.g. a test's wsrep_* options
        self.process: subprocess.Popen[bytes] | None = None
        socket = self.root / "mariadbd.sock"
        # A Unix socket path must fit in 108 bytes; a deep folder falls back to /tmp.
        self.socket = socket if len(str(socket)) <= 100 else Path(
            f"/tmp/seckill-mariadb-{port}.sock")

    @property
    def url_base(self) -> str:
        """The server's URL without a database: append `/name`."""
        return f"mysql://root@127.0.0.1:{self.port}"

    @property
    def pid_file(self) -> Path:
        return self.root / "mariadbd.pid"

    @property
    def error_log(self) -> Path:
        return self.root / "error.log"

    def ask(self, sql: str, timeout_s: float = 2.0) -> str | None:
        """The first column of the first row `sql` returns, or None when nobody answers."""
        try:
            connection = pymysql.connect(host="127.0.0.1", port=self.port, user="root",
                                         password="", connect_timeout=timeout_s,
                                         read_timeout=timeout_s)
        except pymysql.MySQLError:
            return None
        try:
            with connection.cursor() as cursor:
                cursor.execute(sql)
                row = cursor.fetchone()
        except pymysql.MySQLError:
            return None
        finally:
            connection.close()
        return None if row is None else str(row[0])

    def answers(self) -> bool:
        """Whether our server runs: it answers a query and serves our data dir."""
        datadir = self.ask("SELECT @@datadir")
        return datadir is not None and Path(datadir).resolve() == self.datadir.resolve()

    def version(self) -> str:
        return self.ask("SELECT VERSION()") or "?"

    def recorded_pid(self) -> int | None:
        return live_pid(self.pid_file)

    def install(self) -> None:
        """mariadbd installed (see install_server) and the data dir initialised."""
        install_server()
        if (self.datadir / "mysql").is_dir():
            return
        self.root.mkdir(parents=True, exist_ok=True)
        # Initialised beside its final place and renamed, so a failed run is simply retried.
        scratch = self.datadir.with_name("data.tmp")
        shutil.rmtree(scratch, ignore_errors=True)
        binary = _which("mariadb-install-db")
        assert binary is not None  # install_server made sure
        # 'normal' gives root a password (empty) that works over TCP, not only via the socket.
        done = subprocess.run(
            [binary, "--no-defaults", f"--datadir={scratch}", *self._as_root(),
             "--auth-root-authentication-method=normal", "--skip-test-db"],
            capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise MariaDBError(f"mariadb-install-db failed:\n{done.stdout[-1000:]}"
                               f"{done.stderr[-1000:]}")
        scratch.rename(self.datadir)

    @staticmethod
    def _as_root() -> list[str]:
        # mariadbd refuses to run as root unless told to; anyone else runs as themselves.
        return ["--user=root"] if os.geteuid() == 0 else []

    def start(self, timeout_s: float = START_TIMEOUT_S, detach: bool = False) -> bool:
        """Starts the server unless it answers already; returns whether it started one.

        `detach`: its own session with output to a file, so it outlives this process (make up).
        """
        if self.answers():
            return False
        if self.ask("SELECT 1") is not None:
            raise MariaDBError(f"127.0.0.1:{self.port} is served by another MariaDB/MySQL "
                               "server; choose another port")
        self.install()
        self._wait_gone(self.recorded_pid(), timeout_s)
        mariadbd = _which("mariadbd")
        assert mariadbd is not None
        # skip-name-resolve: no reverse DNS per connection (root@127.0.0.1 exists for TCP).
        argv = [mariadbd, "--no-defaults", f"--datadir={self.datadir}",
                f"--socket={self.socket}", f"--port={self.port}", "--bind-address=127.0.0.1",
                "--skip-name-resolve", f"--max-connections={self.max_connections}",
                f"--pid-file={self.pid_file}", f"--log-error={self.error_log}",
                *self._as_root(), *self.extra_args]
        with (self.root / "mariadbd.out").open("ab") as out:
            self.process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                            stderr=subprocess.STDOUT, start_new_session=detach)
        deadline = time.monotonic() + timeout_s
        while not self.answers():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.process.kill()
                self.process.wait()
                raise MariaDBError(f"mariadbd on port {self.port} did not come up; last lines "
                                   f"of {self.error_log}:\n{self._log_tail()}")
            time.sleep(0.1)  # a server starting up has nothing to await
        return True

    def _log_tail(self) -> str:
        try:
            return "\n".join(self.error_log.read_text(errors="replace").splitlines()[-20:])
        except OSError:
            return "(no log)"

    def _wait_gone(self, pid: int | None, timeout_s: float) -> None:
        """Waits for a server that no longer answers to exit; kills it if it does not."""
        if pid is None:
            return
        deadline = time.monotonic() + timeout_s
        while alive(pid):
            if time.monotonic() > deadline:
                # It does not answer, so it serves nobody: nothing is lost by killing it.
                os.kill(pid, signal.SIGKILL)
                deadline = time.monotonic() + timeout_s
            time.sleep(0.1)

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = STOP_TIMEOUT_S) -> bool:
        """Stops the server (SIGTERM: InnoDB's clean shutdown); returns whether one ran."""
        pid = self.process.pid if self.process and self.process.poll() is None else None
        pid = pid or self.recorded_pid()
        if pid is None:
            return False
        os.kill(pid, sig)
        deadline = time.monotonic() + timeout_s
        if self.process is not None and self.process.pid == pid:
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                raise MariaDBError(f"mariadbd (pid {pid}) still running after {timeout_s:g} s; "
                                   f"see {self.error_log}") from None
        else:
            while alive(pid):
                # No SIGKILL: a forced stop risks a crash recovery, better to let a person look.
                if time.monotonic() > deadline:
                    raise MariaDBError(f"mariadbd (pid {pid}) still running after "
                                       f"{timeout_s:g} s; see {self.error_log}")
                time.sleep(0.1)
        self.process = None
        return True

    def kill(self) -> None:
        """SIGKILL, as a crash: InnoDB recovers on the next start."""
        self.stop(signal.SIGKILL)
