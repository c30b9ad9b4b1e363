"""TLS from SECKILL_TLS_CERT / _KEY, and mutual TLS when SECKILL_TLS_CA is set too.

- Servers listen with the certificate; with a CA they also require a client certificate
  signed by it (every caller, peers included, must present one).
- Peer channels (activity -> product, order) trust the CA, or the certificate itself when no
  CA is set (a self-signed certificate shared by the services), and present the certificate
  when the CA asks for mutual TLS. The certificate must name the host of each peer address
  (e.g. an IP SAN of 127.0.0.1, or the service names of a compose network).
"""

from __future__ import annotations

from pathlib import Path

import grpc

from seckill_common.config import Settings


def _read(path: str) -> bytes:
    return Path(path).read_bytes()


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    if not settings.tls:
        return None
    return grpc.ssl_server_credentials(
        [(_read(settings.tls_key), _read(settings.tls_cert))],
        root_certificates=_read(settings.tls_ca) if settings.tls_ca else None,
        require_client_auth=bool(settings.tls_ca),
    )


def channel_credentials(settings: Settings) -> grpc.ChannelCredentials | None:
    if not settings.tls:
        return None
    mutual = bool(settings.tls_ca)
    return grpc.ssl_channel_credentials(
        root_certificates=_read(settings.tls_ca or settings.tls_cert),
        private_key=_read(settings.tls_key) if mutual else None,
        certificate_chain=_read(settings.tls_cert) if mutual else None,
    )
