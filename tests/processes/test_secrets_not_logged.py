"""No secret reaches the logs: not the admin token, the user-token secret, a user token, or
the database password, at the most verbose log level and on every kind of refusal."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from seckill.v1 import order_pb2

from seckill_common.runtime.auth import UserTokens
from tests.helpers.processes import start_processes
from tests.helpers.stack import ADMIN_TOKEN, REPO, query

pytestmark = pytest.mark.slow

SECRET = "user-token-secret-that-must-not-leak-0123456789"
DB_PASSWORD = "db-password-that-must-not-leak"


async def test_no_secret_or_token_is_logged(db_url: str, tmp_path: Path) -> None:
    database = db_url.rsplit("/", 1)[1]
    await query(db_url, f"CREATE USER IF NOT EXISTS 'leaky'@'%%' IDENTIFIED BY '{DB_PASSWORD}'")
    await query(db_url, f"GRANT ALL ON `{database}`.* TO 'leaky'@'%%'")
    host = db_url.split("@", 1)[1].rsplit("/", 1)[0]
    url = f"mysql://leaky:{DB_PASSWORD}@{host}/{database}"
    token = UserTokens(SECRET).issue("alice")
    wrong_token = UserTokens("z" * 40).issue("alice")

    # DEBUG logs the most; user tokens on, so there are secrets to leak.
    async with start_processes("order", 1, url, tmp_path, SECKILL_LOG_LEVEL="DEBUG",
                               SECKILL_USER_TOKEN_SECRET=SECRET) as extra:
        orders, log = extra.orders[0], extra[0].log_path
        for credential in (token, wrong_token, ADMIN_TOKEN, "wrong-admin", token[:-3]):
            metadata = (("authorization", f"Bearer {credential}"),)
            for call in (orders.ListOrders(order_pb2.ListOrdersRequest(), metadata=metadata),
                         orders.DeleteOrder(order_pb2.DeleteOrderRequest(id=1),
                                            metadata=metadata)):
                with contextlib.suppress(grpc.aio.AioRpcError):
                    await call

    # A refused start-up explains itself without echoing the secret either.
    short = "short-secret-xyz"
    refused = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "order_svc"],
        env={**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'gen'}",
             "SECKILL_ADMIN_TOKEN": ADMIN_TOKEN, "SECKILL_USER_TOKEN_SECRET": short,
             "SECKILL_MYSQL_URL": url},
        capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2
    assert "SECKILL_USER_TOKEN_SECRET" in refused.stdout + refused.stderr

    text = log.read_text()
    assert '"rpc"' in text and "DeleteOrder" in text  # the calls were logged...
    for secret in (SECRET, DB_PASSWORD, ADMIN_TOKEN, token, wrong_token, token[:-3],
                   token.split(".")[2], "wrong-admin"):
        assert secret not in text  # ...and none of these
    output = refused.stdout + refused.stderr
    assert short not in output and DB_PASSWORD not in output
