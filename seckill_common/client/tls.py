"""The client's side of TLS: how a channel dials (plaintext, TLS or mutual TLS).

The servers' side is seckill_common/runtime/tls.py (SECKILL_TLS_CERT / _KEY, and mutual TLS
when SECKILL_TLS_CA is set too).
- Peer channels (activity -> product, order) trust the CA, or the certificate itself when no
  CA is set (a self-signed certificate shared by the services), and present the certificate
  when the CA asks for mutual TLS. The certificate must name the host of each peer address
  (e.g. an IP SAN of 127.0.0.1, or the service names of a compose network).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from seckill_common.config import TLSSettings

# Client-side load balancing: a target naming several hosts (ipv4:a:p,b:p, or a DNS name with
# several addresses) gets a connection to each, and calls take turns over the ready ones, so a
# dead host is skipped. grpc's default (pick_first) would send everything to one host.
LOAD_BALANCING = ("grpc.service_config",
                  json.dumps({"loadBalancingConfig": [{"round_robin": {}}]}))


def _read(path: str) -> bytes:
    return Path(path).read_bytes()


@dataclass(frozen=True)
class ClientTLS:
    """How a client tool (CLI, load tool, health waiter) dials: plaintext, TLS or mutual TLS.

    The flags mirror ghz's and grpcurl's: `cacert` turns TLS on and names the PEM the server's
    certificate must chain to; `cert` and `key` are the client's own, for mutual TLS.
    Picklable, so the load tool's client processes get it whole.
    """

    cacert: str = ""
    cert: str = ""
    key: str = ""

    def __post_init__(self) -> None:
        if bool(self.cert) != bool(self.key):
            raise ValueError("a client certificate needs its key, and a key its certificate")
        if self.cert and not self.cacert:
            raise ValueError("a client certificate (mutual TLS) needs the CA (--cacert)")

    @classmethod
    def of_service(cls, cert: str, key: str, ca: str) -> ClientTLS:
        """How a service (or a tool beside it) dials its peers with its own SECKILL_TLS_*
        files: trust the CA, or the certificate itself, and present the certificate when a
        CA asks for mutual TLS."""
        if not cert:
            return cls()
        return cls(cacert=ca or cert, cert=cert if ca else "", key=key if ca else "")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ClientTLS:
        """As the SECKILL_TLS_* files of `env` (default: os.environ) say; ConfigError (a
        ValueError) when they are incomplete or missing."""
        return cls.of_files(TLSSettings.from_env(env))

    @classmethod
    def of_files(cls, files: TLSSettings) -> ClientTLS:
        """How a tool beside a service dials with the service's TLS files."""
        return cls.of_service(files.cert, files.key, files.ca)

    def channel(self, addr: str, options: Sequence[tuple[str, Any]] = (),
                interceptors: Sequence[grpc.aio.ClientInterceptor] | None = None
                ) -> grpc.aio.Channel:
        """A channel to `addr`, a host:port or any gRPC target string, with round_robin
        over its addresses unless `options` bring a service config of their own."""
        if not any(key == LOAD_BALANCING[0] for key, _ in options):
            options = [*options, LOAD_BALANCING]
        if not self.cacert:
            return grpc.aio.insecure_channel(addr, options=list(options),
                                             interceptors=interceptors)
        credentials = grpc.ssl_channel_credentials(
            root_certificates=_read(self.cacert),
            private_key=_read(self.key) if self.key else None,
            certificate_chain=_read(self.cert) if self.cert else None,
        )
        return grpc.aio.secure_channel(addr, credentials, options=list(options),
                                       interceptors=interceptors)
