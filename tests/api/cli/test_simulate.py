"""`seckill sale simulate`, the demo of `make run`: a sale of many users, with a mix of
quantities, paying a share and letting the rest expire, and for people."""

from __future__ import annotations

from seckill.v1 import activity_pb2, order_pb2, product_pb2

from seckill_cli.client import Exit
from tests.helpers.cli import Seckill
from tests.helpers.stack import (
    Stack,
)


async def test_sale_simulate(seckill: Seckill, stack: Stack) -> None:
    sale = await seckill("--json", "sale", "simulate", "--users", "200", "--stock", "20",
                         "--concurrency", "100")
    assert sale.code == Exit.OK, sale.err
    summary = sale.json()
    assert summary["calls"] == 400
    assert summary["orders"] == 20 and summary["stock_left"] == 0
    # Each user's second try is a duplicate (winners) or sold out; nothing else.
    assert summary["sold_out"] + summary["duplicates"] == 380
    assert summary["other_errors"] == {}
    assert summary["latency_ms"]["p99"] >= summary["latency_ms"]["p50"] > 0
    assert [i["ok"] for i in summary["invariants"]] == [True] * len(summary["invariants"])
    listed = await stack.orders.ListOrders(
        order_pb2.ListOrdersRequest(
            activity_id=summary["activity"]["id"], page_size=1000))
    assert len({o.user_id for o in listed.orders}) == 20
    product = await stack.products.GetProduct(
        product_pb2.GetProductRequest(id=summary["product"]["id"]))
    assert product.stock == 0


async def test_sale_simulate_with_a_mix_of_quantities(seckill: Seckill, stack: Stack) -> None:
    sale = await seckill("--json", "sale", "simulate", "--users", "200", "--stock", "100",
                         "--concurrency", "100", "--max-quantity", "3")
    assert sale.code == Exit.OK, sale.err
    summary = sale.json()
    assert summary["activity"]["per_user_limit"] == 3
    assert summary["units"] == 100 - summary["stock_left"] and summary["stock_left"] < 3
    assert summary["other_errors"] == {}
    names = {i["name"]: i["ok"] for i in summary["invariants"]}
    assert names["every INSUFFICIENT_STOCK named a count that was true"]
    assert names["units of active orders == initial stock - remaining stock"]
    assert all(names.values()), summary["invariants"]
    listed = await stack.orders.ListOrders(order_pb2.ListOrdersRequest(
        activity_id=summary["activity"]["id"], page_size=1000))
    assert sum(o.quantity for o in listed.orders) == summary["units"]
    assert {o.quantity for o in listed.orders} == {1, 2, 3}


async def test_sale_simulate_pays_a_share_and_lets_the_rest_expire(seckill: Seckill,
                                                                   stack: Stack) -> None:
    sale = await seckill("--json", "sale", "simulate", "--users", "20", "--stock", "6",
                         "--tries", "1", "--pay-share", "0.5", "--payment-window", "1")
    assert sale.code == Exit.OK, sale.err
    summary = sale.json()
    assert (summary["orders"], summary["paid"]) == (6, 3)
    names = {i["name"]: i["ok"] for i in summary["invariants"]}
    assert names["unpaid orders expired"] and names["paid orders stayed paid"]
    assert all(names.values()), summary["invariants"]
    product = await stack.products.GetProduct(
        product_pb2.GetProductRequest(id=summary["product"]["id"]))
    assert product.stock == 3  # the expired orders' units are back


async def test_sale_simulate_for_people(seckill: Seckill, stack: Stack) -> None:
    sale = await seckill("sale", "simulate", "--users", "30", "--stock", "5", "--tries", "3")
    assert sale.code == Exit.OK, sale.err
    for text in ("orders placed (OK)", "sold-out refusals", "duplicates refused",
                 "other errors", "latency p50 / p99", "stock left", "0 of 5", "invariants"):
        assert text in sale.out, f"{text!r} missing from:\n{sale.out}"
    assert "FAILED" not in sale.out and sale.out.count(" ok ") >= 6
    products = await stack.products.ListProducts(product_pb2.ListProductsRequest())
    pid = products.products[-1].id
    activity_id = (await stack.activities.ListActivities(
        activity_pb2.ListActivitiesRequest())
    ).activities[-1].id
    assert f"seckill activity get {activity_id}" in sale.out
    assert f"seckill product update {pid} --stock 10" in sale.out
    assert "grpcurl -plaintext" in sale.out and "make down" in sale.out
