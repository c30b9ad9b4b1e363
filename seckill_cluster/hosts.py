"""The hosts: each a network namespace with one veth into a private bridge.

A host so has its own address and ports, and a fault is what it would be on a machine: SIGKILL
to every process in the namespace (`kill`), its link down (`partition`), latency on its link
(`delay`, netem).
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

# Namespaces are named <prefix>-<host>, the bridge <prefix>-br0; the hosts' /24 is <subnet>.0.
PREFIX = "seckill"
SUBNET = "10.77.0"
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


def run(*cmd: str, check: bool = True, quiet: bool = False) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if check and result.returncode != 0:
        raise ClusterError(f"{shlex.join(cmd)} failed: {result.stderr.strip()}")
    if not quiet and result.returncode != 0:
        print(f"cluster: {shlex.join(cmd)}: {result.stderr.strip()}", file=sys.stderr)
    return result


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


# --- processes in a namespace ----------------------------------------------------------------

def alive_pids(ns: str) -> list[int]:
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


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def processes(ns: str) -> list[str]:
    """The names of the programs running in namespace `ns`."""
    return sorted({_comm(pid) for pid in alive_pids(ns)})


def signal_all(ns: str, sig: int) -> None:
    for pid in alive_pids(ns):
        with suppress(ProcessLookupError):
            os.kill(pid, sig)


def spawn(host: Host, logs: Path, label: str, cmd: list[str],
          env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """`cmd` on `host`, its output appended to `logs`/<host>-<label>.log."""
    logs.mkdir(parents=True, exist_ok=True)
    with open(logs / f"{host.name}-{label}.log", "ab") as log:
        # A session of its own: a Ctrl-C in the shell that ran `up` does not reach it.
        return subprocess.Popen(["ip", "netns", "exec", host.ns, *cmd],
                                stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, env=env, start_new_session=True)


def kill(host: Host) -> None:
    """SIGKILL every process on `host`, as a power cut would."""
    signal_all(host.ns, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while alive_pids(host.ns):
        if time.monotonic() > deadline:
            raise ClusterError(f"processes on {host.name} survive SIGKILL")
        time.sleep(0.05)  # SIGKILL is delivered asynchronously


# --- the network -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Network:
    """The bridge <prefix>-br0 at <subnet>.1 and the namespaces <prefix>-*."""

    prefix: str
    subnet: str

    @property
    def bridge(self) -> str:
        return f"{self.prefix[:11]}-br0"

    def exists(self) -> bool:
        links = run("ip", "-o", "link", "show", "type", "bridge", quiet=True).stdout
        return f" {self.bridge}:" in links

    def create(self, hosts: list[Host]) -> None:
        run("ip", "link", "add", self.bridge, "type", "bridge")
        run("ip", "addr", "add", f"{self.subnet}.1/24", "dev", self.bridge)
        run("ip", "link", "set", self.bridge, "up")
        for host in hosts:
            run("ip", "netns", "add", host.ns)
            run("ip", "link", "add", host.veth, "type", "veth", "peer", "name", "eth0",
                "netns", host.ns)
            run("ip", "link", "set", host.veth, "master", self.bridge, "up")
            run("ip", "-n", host.ns, "addr", "add", f"{host.ip}/24", "dev", "eth0")
            run("ip", "-n", host.ns, "link", "set", "eth0", "up")
            run("ip", "-n", host.ns, "link", "set", "lo", "up")

    def remove(self) -> None:
        """Stops every process in the namespaces (SIGTERM, then SIGKILL after a grace),
        removes them and the bridge."""
        namespaces = [ns for ns in run("ip", "netns", "list", check=False).stdout.split()
                      if ns.startswith(f"{self.prefix}-")]
        for ns in namespaces:
            signal_all(ns, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        while any(alive_pids(ns) for ns in namespaces) and time.monotonic() < deadline:
            time.sleep(0.1)  # processes in another namespace: nothing to await
        for ns in namespaces:
            signal_all(ns, signal.SIGKILL)
            run("ip", "netns", "del", ns, check=False)
        if self.exists():
            run("ip", "link", "del", self.bridge, check=False)


def set_link(host: Host, up: bool) -> None:
    """The host's link up, or down: cut off the network, its processes keep running."""
    run("ip", "link", "set", host.veth, "up" if up else "down")


def delay(hosts: list[Host], ms: int) -> None:
    """`ms` on every packet from one of `hosts` to another (0: none); other traffic is not
    delayed."""
    for host in hosts:
        tc = ("ip", "netns", "exec", host.ns, "tc")
        run(*tc, "qdisc", "del", "dev", "eth0", "root", check=False, quiet=True)
        if ms == 0:
            continue
        # A fourth band behind the usual three gets only what the filters send it.
        run(*tc, "qdisc", "add", "dev", "eth0", "root", "handle", "1:", "prio", "bands", "4")
        run(*tc, "qdisc", "add", "dev", "eth0", "parent", "1:4", "handle", "40:",
            "netem", "delay", f"{ms}ms")
        for other in hosts:
            if other != host:
                run(*tc, "filter", "add", "dev", "eth0", "parent", "1:", "protocol", "ip",
                    "u32", "match", "ip", "dst", f"{other.ip}/32", "flowid", "1:4")
