"""User tokens (SECKILL_USER_TOKEN_SECRET): a user acts only as themself and sees only their
own orders; the admin token acts as anyone; the token command prints a valid token."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable

import grpc
import jwt
import pytest
from seckill.v1 import activity_pb2, order_pb2, product_pb2

from seckill_common.runtime.auth import UserTokens
from tests.helpers.factories import make_activity, make_product
from tests.helpers.rpc import error_details, rpc_error
from tests.helpers.stack import ADMIN, REPO, Stack, query, start_stack
from tests.helpers.users import SECRET, TOKENS, as_user


@pytest.fixture
async def secured(db_url: str) -> AsyncIterator[Stack]:
    running = await start_stack(db_url, SECKILL_USER_TOKEN_SECRET=SECRET)
    yield running
    await running.stop()


@pytest.fixture
async def sale(secured: Stack) -> int:
    product = await make_product(secured, stock=10)
    return (await make_activity(secured, product.id)).id


def seckill(activity: int, user: str = "") -> activity_pb2.SeckillRequest:
    return activity_pb2.SeckillRequest(activity_id=activity, user_id=user)


BAD_CREDENTIALS = {
    "none": (),
    "not-bearer": (("authorization", TOKENS.issue("alice")),),
    "garbage": (("authorization", "Bearer not.a.token"),),
    "expired": (("authorization",
                 f"Bearer {TOKENS.issue('alice', ttl_s=60, now=time.time() - 3600)}"),),
    "other-secret": (("authorization",
                      f"Bearer {UserTokens('x' * 40).issue('alice')}"),),
    "alg-none": (("authorization", "Bearer " + jwt.encode(
        {"sub": "alice", "iss": "seckill", "exp": int(time.time()) + 60},
        None,  # type: ignore[arg-type]  # PyJWT takes no key for "none"
        algorithm="none")),),
    "no-expiry": (("authorization", "Bearer " + jwt.encode(
        {"sub": "alice", "iss": "seckill"}, SECRET, algorithm="HS256")),),
    "other-issuer": (("authorization", "Bearer " + jwt.encode(
        {"sub": "alice", "iss": "elsewhere", "exp": int(time.time()) + 60}, SECRET,
        algorithm="HS256")),),
}


@pytest.mark.parametrize("credential", list(BAD_CREDENTIALS))
async def test_user_rpcs_refuse_a_missing_or_invalid_token(
        secured: Stack, sale: int, credential: str) -> None:
    metadata = BAD_CREDENTIALS[credential]
    calls: list[Awaitable[object]] = [
        secured.activities.Seckill(seckill(sale, "alice"), metadata=metadata),
        secured.orders.ListOrders(order_pb2.ListOrdersRequest(), metadata=metadata),
        secured.orders.GetOrder(order_pb2.GetOrderRequest(id=1), metadata=metadata),
        secured.orders.DeleteOrder(order_pb2.DeleteOrderRequest(id=1), metadata=metadata),
    ]
    for call in calls:
        error = await rpc_error(call, grpc.StatusCode.UNAUTHENTICATED)
        assert TOKENS.issue("alice")[:20] not in (error.details() or "")
    assert await query(secured.db_url, "SELECT COUNT(*) FROM orders") == [(0,)]


async def test_a_user_buys_as_themself_and_never_as_someone_else(
        secured: Stack, sale: int) -> None:
    mine = await secured.activities.Seckill(seckill(sale), metadata=as_user("alice"))
    assert mine.order.user_id == "alice"
    # Naming themself is the same user: one order each, as always.
    error = await rpc_error(
        secured.activities.Seckill(seckill(sale, "alice"), metadata=as_user("alice")),
        grpc.StatusCode.ALREADY_EXISTS)
    assert error_details(error)["ErrorInfo"].metadata["order_id"] == str(mine.order.id)


async def test_naming_another_user_is_permission_denied_and_buys_nothing(
        secured: Stack, sale: int) -> None:
    error = await rpc_error(
        secured.activities.Seckill(seckill(sale, "bob"), metadata=as_user("alice")),
        grpc.StatusCode.PERMISSION_DENIED)
    assert "user_id" in (error.details() or "")
    assert await query(secured.db_url, "SELECT COUNT(*) FROM orders") == [(0,)]
    await rpc_error(secured.orders.ListOrders(order_pb2.ListOrdersRequest(user_id="bob"),
                                              metadata=as_user("alice")),
                    grpc.StatusCode.PERMISSION_DENIED)


async def test_users_see_and_cancel_only_their_own_orders(secured: Stack, sale: int) -> None:
    alice = (await secured.activities.Seckill(seckill(sale), metadata=as_user("alice"))).order
    bob = (await secured.activities.Seckill(seckill(sale), metadata=as_user("bob"))).order

    listed = await secured.orders.ListOrders(order_pb2.ListOrdersRequest(),
                                             metadata=as_user("alice"))
    assert [o.id for o in listed.orders] == [alice.id]
    assert (await secured.orders.GetOrder(order_pb2.GetOrderRequest(id=alice.id),
                                          metadata=as_user("alice"))).user_id == "alice"

    # Another user's order is NOT_FOUND, as if it did not exist, and stays.
    for call in (secured.orders.GetOrder(order_pb2.GetOrderRequest(id=bob.id),
                                         metadata=as_user("alice")),
                 secured.orders.DeleteOrder(order_pb2.DeleteOrderRequest(id=bob.id),
                                            metadata=as_user("alice"))):
        error = await rpc_error(call, grpc.StatusCode.NOT_FOUND)
        assert "ResourceInfo" in error_details(error)
    assert await query(secured.db_url, "SELECT CAST(user_id AS CHAR) FROM orders ORDER BY id") == [
        ("alice",), ("bob",)]

    await secured.orders.DeleteOrder(order_pb2.DeleteOrderRequest(id=alice.id),
                                     metadata=as_user("alice"))
    assert await query(secured.db_url, "SELECT CAST(user_id AS CHAR) FROM orders"
                       " WHERE state = %s", (order_pb2.PENDING_PAYMENT,)) == [("bob",)]
    product = await secured.products.GetProduct(product_pb2.GetProductRequest(
        id=alice.product_id))
    assert product.stock == 9  # 10 - 2 bought + 1 cancelled


async def test_the_admin_token_acts_as_any_user(secured: Stack, sale: int) -> None:
    bought = await secured.activities.Seckill(seckill(sale, "carol"), metadata=ADMIN)
    assert bought.order.user_id == "carol"
    listed = await secured.orders.ListOrders(order_pb2.ListOrdersRequest(), metadata=ADMIN)
    assert [o.user_id for o in listed.orders] == ["carol"]
    await secured.orders.DeleteOrder(order_pb2.DeleteOrderRequest(id=bought.order.id),
                                     metadata=ADMIN)


async def test_without_a_secret_user_id_is_trusted_and_cancel_is_admin_only(
        stack: Stack) -> None:
    product = await make_product(stack, stock=2)
    activity = await make_activity(stack, product.id)
    order = (await stack.activities.Seckill(seckill(activity.id, "dave"))).order
    assert order.user_id == "dave"
    await rpc_error(stack.orders.DeleteOrder(order_pb2.DeleteOrderRequest(id=order.id)),
                    grpc.StatusCode.UNAUTHENTICATED)


def test_the_token_command_prints_a_token_the_services_accept() -> None:
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'gen'}",
           "SECKILL_USER_TOKEN_SECRET": SECRET}
    done = subprocess.run([sys.executable, "-m", "seckill_cli.token", "erin", "--ttl", "120"],
                          env=env, capture_output=True, text=True, check=True, timeout=60)
    token = done.stdout.strip()
    assert TOKENS.verify(token.encode()) == "erin"
    claims = jwt.decode(token, SECRET, algorithms=["HS256"], issuer="seckill")
    assert 110 <= claims["exp"] - time.time() <= 130

    env.pop("SECKILL_USER_TOKEN_SECRET")
    refused = subprocess.run([sys.executable, "-m", "seckill_cli.token", "erin"], env=env,
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2
    assert "SECKILL_USER_TOKEN_SECRET" in refused.stderr
