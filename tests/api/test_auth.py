"""Admin RPCs: refused without the admin bearer token, and a refused call changes nothing."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import grpc
import pytest
from google.protobuf import field_mask_pb2
from seckill.v1 import activity_pb2, order_pb2, product_pb2

from tests.helpers.factories import make_activity, make_product, timestamp
from tests.helpers.rpc import rpc_error
from tests.helpers.stack import ADMIN, ADMIN_TOKEN, Stack, query


@dataclass
class World:
    """A product nobody sells, an activity without orders, and an order in another activity."""

    spare_product: int
    sold_product: int
    idle_activity: int
    order: int


@pytest.fixture
async def world(stack: Stack) -> World:
    spare = await make_product(stack)
    sold = await make_product(stack)
    idle = await make_activity(stack, sold.id)
    busy = await make_activity(stack, sold.id)
    response = await stack.activities.Seckill(
        activity_pb2.SeckillRequest(activity_id=busy.id, user_id="alice"))
    return World(spare.id, sold.id, idle.id, response.order.id)


Call = Callable[[Stack, World, tuple], Awaitable[object]]

ADMIN_CALLS: dict[str, Call] = {
    "CreateProduct": lambda s, w, md: s.products.CreateProduct(
        product_pb2.CreateProductRequest(product=product_pb2.Product(name="New", stock=1)),
        metadata=md),
    "UpdateProduct": lambda s, w, md: s.products.UpdateProduct(
        product_pb2.UpdateProductRequest(
            product=product_pb2.Product(id=w.spare_product, stock=0),
            update_mask=field_mask_pb2.FieldMask(paths=["stock"])), metadata=md),
    "DeleteProduct": lambda s, w, md: s.products.DeleteProduct(
        product_pb2.DeleteProductRequest(id=w.spare_product), metadata=md),
    "CreateActivity": lambda s, w, md: s.activities.CreateActivity(
        activity_pb2.CreateActivityRequest(activity=activity_pb2.Activity(
            product_id=w.sold_product, name="New", start_time=timestamp(-1),
            end_time=timestamp(60))), metadata=md),
    "UpdateActivity": lambda s, w, md: s.activities.UpdateActivity(
        activity_pb2.UpdateActivityRequest(
            activity=activity_pb2.Activity(id=w.idle_activity, name="Renamed")), metadata=md),
    "DeleteActivity": lambda s, w, md: s.activities.DeleteActivity(
        activity_pb2.DeleteActivityRequest(id=w.idle_activity), metadata=md),
    "DeleteOrder": lambda s, w, md: s.orders.DeleteOrder(
        order_pb2.DeleteOrderRequest(id=w.order), metadata=md),
}

REFUSALS = {
    "no-metadata": ((), grpc.StatusCode.UNAUTHENTICATED),
    "other-metadata": ((("x-user", "admin"),), grpc.StatusCode.UNAUTHENTICATED),
    "wrong-token": ((("authorization", "Bearer wrong"),), grpc.StatusCode.PERMISSION_DENIED),
    "no-scheme": ((("authorization", ADMIN_TOKEN),), grpc.StatusCode.UNAUTHENTICATED),
    "empty": ((("authorization", ""),), grpc.StatusCode.UNAUTHENTICATED),
}


async def snapshot(stack: Stack) -> dict[str, list[tuple]]:
    return {table: await query(stack.db_url, f"SELECT * FROM {table} ORDER BY id")
            for table in ("products", "activities", "orders")}


@pytest.mark.parametrize("refusal", list(REFUSALS))
@pytest.mark.parametrize("rpc", list(ADMIN_CALLS))
async def test_admin_rpc_without_the_admin_token_is_refused_and_changes_nothing(
        stack: Stack, world: World, rpc: str, refusal: str) -> None:
    metadata, code = REFUSALS[refusal]
    before = await snapshot(stack)
    await rpc_error(ADMIN_CALLS[rpc](stack, world, metadata), code)
    assert await snapshot(stack) == before
    # The same request with the token goes through: the refusal was about the token alone.
    await ADMIN_CALLS[rpc](stack, world, ADMIN)
    assert await snapshot(stack) != before


@pytest.mark.parametrize("rpc", list(ADMIN_CALLS))
async def test_auth_is_checked_before_the_request(stack: Stack, rpc: str) -> None:
    """Without a token even an invalid request is UNAUTHENTICATED, so nothing leaks."""
    nothing = World(0, 0, 0, 0)
    await rpc_error(ADMIN_CALLS[rpc](stack, nothing, ()), grpc.StatusCode.UNAUTHENTICATED)


async def test_read_rpcs_need_no_token(stack: Stack, world: World) -> None:
    wrong = (("authorization", "Bearer wrong"),)
    for metadata in ((), wrong):
        await stack.products.GetProduct(product_pb2.GetProductRequest(id=world.sold_product),
                                        metadata=metadata)
        await stack.products.ListProducts(product_pb2.ListProductsRequest(), metadata=metadata)
        await stack.activities.GetActivity(
            activity_pb2.GetActivityRequest(id=world.idle_activity), metadata=metadata)
        await stack.activities.ListActivities(activity_pb2.ListActivitiesRequest(),
                                              metadata=metadata)
        await stack.orders.GetOrder(order_pb2.GetOrderRequest(id=world.order),
                                    metadata=metadata)
        await stack.orders.ListOrders(order_pb2.ListOrdersRequest(), metadata=metadata)


async def test_bearer_scheme_is_case_insensitive(stack: Stack) -> None:
    metadata = (("authorization", f"bearer {ADMIN_TOKEN}"),)
    created = await stack.products.CreateProduct(product_pb2.CreateProductRequest(
        product=product_pb2.Product(name="Lowercase", stock=1)), metadata=metadata)
    assert created.id > 0


@pytest.mark.parametrize(("value", "says"), [
    (ADMIN_TOKEN, "it does not start with 'Bearer '"),
    (f"Basic {ADMIN_TOKEN}", "it does not start with 'Bearer '"),
    ("", "it does not start with 'Bearer '"),
    ("Bearer", "no token after 'Bearer '"),
])
async def test_a_malformed_authorization_is_unauthenticated_and_says_what_is_wrong(
        stack: Stack, value: str, says: str) -> None:
    """Not a wrong token (PERMISSION_DENIED) but no bearer token at all: the message says so,
    without echoing the credential."""
    error = await rpc_error(stack.products.CreateProduct(
        product_pb2.CreateProductRequest(product=product_pb2.Product(name="Bad", stock=1)),
        metadata=(("authorization", value),)), grpc.StatusCode.UNAUTHENTICATED)
    message = error.details() or ""
    assert message.startswith("admin RPC: ") and says in message, message
    assert ADMIN_TOKEN not in message
