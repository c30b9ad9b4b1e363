"""Debian packages the stack's parts need (mariadb-server, nats-server, h2load, the cluster's
galera-4 and haproxy), installed through apt when we run as root; otherwise the error says
which package to install."""

from __future__ import annotations

import os
import subprocess

APT_TIMEOUT_S = 600.0


def apt_install(packages: str | list[str], binary: str, error: type[Exception]) -> None:
    """Installs Debian's `packages` through apt, as root; otherwise `error` says to. `binary`
    names what was missing, for the messages."""
    names = [packages] if isinstance(packages, str) else packages
    if os.geteuid() != 0:
        raise error(f"{binary} not found; install the {' '.join(names)} package"
                    f"{'s' if len(names) > 1 else ''} (needs root)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    print(f"{binary}: installing {' '.join(names)}", flush=True)
    for argv in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", *names]):
        done = subprocess.run(argv, env=env, capture_output=True, text=True,
                              timeout=APT_TIMEOUT_S, check=False)
        if done.returncode != 0:
            raise error(f"{' '.join(argv)} failed:\n{done.stderr.strip()[-2000:]}")
