"""The servers' side of TLS, from SECKILL_TLS_CERT / _KEY, and mutual TLS when SECKILL_TLS_CA
is set too: servers listen with the certificate; with a CA they also require a client
certificate signed by it (every caller, peers included, must present one). How clients dial
is seckill_common/client/tls.py.
"""

from __future__ import annotations

from pathlib import Path

import grpc

from seckill_common.config import Settings


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    if not settings.tls:
        return None
    return grpc.ssl_server_credentials(
        [(Path(settings.tls_key).read_bytes(), Path(settings.tls_cert).read_bytes())],
        root_certificates=Path(settings.tls_ca).read_bytes() if settings.tls_ca else None,
        require_client_auth=bool(settings.tls_ca),
    )
