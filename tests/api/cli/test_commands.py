"""The `seckill` CLI against the in-process stack: every command and its JSON, `status`, user
tokens, the CLI as a process, the events feed (the CLI runs in this process, see conftest.py)."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest
from seckill.v1 import product_pb2

from seckill_cli import commands
from seckill_cli.client import Exit
from seckill_common.runtime.auth import UserTokens
from tests.helpers.cli import Result, Seckill
from tests.helpers.factories import make_activity, make_product
from tests.helpers.stack import (
    ADMIN,
    ADMIN_TOKEN,
    REPO,
    Stack,
    free_port,
    start_stack,
    until_serving,
)

USER_SECRET = "a-user-token-secret-of-32-bytes!"


async def test_product_commands(seckill: Seckill) -> None:
    created = await seckill("--json", "product", "create", "--name", "Tea", "--description",
                            "green", "--price-cents", "350", "--stock", "5")
    assert created.code == Exit.OK, created.err
    product = created.json()
    assert product["name"] == "Tea" and product["stock"] == 5 and isinstance(product["id"], int)
    pid = str(product["id"])

    shown = await seckill("product", "get", pid)
    assert shown.code == Exit.OK
    assert f"product {pid}" in shown.out and "Tea" in shown.out and "green" in shown.out

    listed = await seckill("product", "list", "--json")  # --json after the command works too
    assert [p["id"] for p in listed.json()["products"]] == [product["id"]]
    assert "Tea" in (await seckill("product", "list")).out

    # Only the fields given change: stock to 0 (a zero value, so the mask matters), not the name.
    updated = (await seckill("--json", "product", "update", pid, "--stock", "0")).json()
    assert updated["stock"] == 0 and updated["name"] == "Tea" and updated["price_cents"] == 350

    gone = await seckill("product", "delete", pid)
    assert gone.code == Exit.OK and f"deleted product {pid}" in gone.out
    missing = await seckill("product", "get", pid)
    assert missing.code == Exit.REFUSED
    assert missing.out == "" and f"product {pid} not found" in missing.err


async def create_activity(seckill: Seckill, product_id: int, *flags: str) -> dict[str, Any]:
    """`seckill activity create` of an hour from now, with `flags`: the activity, as JSON."""
    created = await seckill("--json", "activity", "create", "--product", str(product_id),
                            "--end", "+1h", *flags)
    assert created.code == Exit.OK, created.err
    activity: dict[str, Any] = created.json()
    return activity


async def test_activity_commands(seckill: Seckill, stack: Stack) -> None:
    product = await make_product(stack, stock=7)
    activity = await create_activity(seckill, product.id, "--name", "Tea rush", "--start", "now")
    aid = str(activity["id"])
    start = dt.datetime.fromisoformat(activity["start_time"])
    end = dt.datetime.fromisoformat(activity["end_time"])
    assert abs((end - start) - dt.timedelta(hours=1)) < dt.timedelta(seconds=5)

    shown = await seckill("activity", "get", aid)
    assert shown.code == Exit.OK
    assert "Tea rush" in shown.out and "stock left" in shown.out and "open" in shown.out
    assert (await seckill("--json", "activity", "get", aid)).json()["product"]["stock"] == 7
    listed = await seckill("--json", "activity", "list")
    assert [a["id"] for a in listed.json()["activities"]] == [activity["id"]]
    assert "Tea rush" in (await seckill("activity", "list")).out

    updated = (await seckill("--json", "activity", "update", aid, "--name", "Later rush",
                             "--end", "2030-01-01T00:00:00Z")).json()
    assert updated["name"] == "Later rush" and updated["end_time"] == "2030-01-01T00:00:00Z"
    assert updated["start_time"] == activity["start_time"]  # not in the mask: unchanged

    gone = await seckill("activity", "delete", aid)
    assert gone.code == Exit.OK and f"deleted activity {aid}" in gone.out
    missing = await seckill("activity", "get", aid)
    assert missing.code == Exit.REFUSED and f"activity {aid} not found" in missing.err


async def test_buy_orders_and_cancel(seckill: Seckill, stack: Stack,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    product = await make_product(stack, stock=10)
    aid = str((await make_activity(stack, product.id)).id)
    bought = await seckill("buy", "--activity", aid, "--user", "alice")
    assert bought.code == Exit.OK, bought.err
    assert "user alice bought" in bought.out
    order = (await seckill("--json", "buy", "--activity", aid, "--user", "bob")).json()["order"]
    for user in ("carol", "dave", "erin"):
        assert (await seckill("buy", "--activity", aid, "--user", user)).code == Exit.OK

    mine = (await seckill("--json", "orders", "--user", "bob")).json()["orders"]
    assert [o["id"] for o in mine] == [order["id"]]
    assert "bob" in (await seckill("orders", "--user", "bob", "--activity", aid)).out
    # Pages of 2: the CLI walks all three.
    monkeypatch.setattr(commands, "MAX_PAGE_SIZE", 2)
    every = (await seckill("--json", "orders", "--activity", aid)).json()["orders"]
    assert [o["user_id"] for o in every] == ["alice", "bob", "carol", "dave", "erin"]
    assert len((await seckill("--json", "orders", "--activity", aid, "--limit", "3")
                ).json()["orders"]) == 3

    cancelled = await seckill("cancel", str(order["id"]))
    assert cancelled.code == Exit.OK and f"cancelled order {order['id']}" in cancelled.out
    stock = (await seckill("--json", "product", "get", str(product.id))).json()["stock"]
    assert stock == 10 - 5 + 1
    # The cancelled order is kept, in its state; --state filters.
    [kept] = (await seckill("--json", "orders", "--user", "bob")).json()["orders"]
    assert (kept["id"], kept["state"]) == (order["id"], "CANCELLED")
    assert (await seckill("--json", "orders", "--user", "bob", "--state", "pending")
            ).json() == {"orders": []}
    assert "cancelled" in (await seckill("orders", "--user", "bob")).out


async def test_buy_a_quantity_within_the_activitys_limit(seckill: Seckill, stack: Stack) -> None:
    product = await make_product(stack, stock=4)
    activity = await create_activity(seckill, product.id, "--name", "Pairs",
                                     "--per-user-limit", "2")
    assert activity["per_user_limit"] == 2
    aid = str(activity["id"])
    assert "at most 2" in (await seckill("activity", "get", aid)).out
    bought = await seckill("buy", "--activity", aid, "--user", "alice", "--quantity", "2")
    assert bought.code == Exit.OK, bought.err
    assert "user alice bought 2 units" in bought.out and "19800 cents" in bought.out
    over = await seckill("buy", "--activity", aid, "--user", "bob", "--quantity", "3")
    assert over.code == Exit.REFUSED and "QUANTITY_OVER_LIMIT" in over.err
    raised = await seckill("--json", "activity", "update", aid, "--per-user-limit", "3")
    assert raised.json()["per_user_limit"] == 3
    short = await seckill("buy", "--activity", aid, "--user", "bob", "--quantity", "3")
    assert short.code == Exit.REFUSED and "INSUFFICIENT_STOCK" in short.err
    [order] = (await seckill("--json", "orders", "--user", "alice")).json()["orders"]
    assert (order["quantity"], order["total_price_cents"]) == (2, 19800)
    assert "19800" in (await seckill("orders", "--user", "alice")).out


async def test_pay_and_the_pay_deadline(seckill: Seckill, stack: Stack) -> None:
    product = await make_product(stack, stock=10)
    aid = str((await make_activity(stack, product.id)).id)
    bought = await seckill("buy", "--activity", aid, "--user", "alice")
    assert "pay before" in bought.out and "seckill pay" in bought.out
    order = (await seckill("--json", "orders", "--user", "alice")).json()["orders"][0]
    assert order["state"] == "PENDING_PAYMENT" and order["price_cents"] == 9900
    paid = await seckill("pay", str(order["id"]))
    assert paid.code == Exit.OK and f"order {order['id']} is paid: 9900 cents" in paid.out
    assert (await seckill("--json", "orders", "--state", "paid")).json()["orders"][0][
        "id"] == order["id"]
    cancelled = await seckill("--json", "cancel", str(order["id"]))
    assert cancelled.json()["state"] == "CANCELLED"
    again = await seckill("pay", str(order["id"]))
    assert again.code == Exit.REFUSED and again.err


async def test_activity_sale_terms(seckill: Seckill, stack: Stack) -> None:
    product = await make_product(stack, stock=1)
    made = (await seckill("--json", "activity", "create", "--product", str(product.id),
                          "--name", "s", "--end", "+1h", "--price-cents", "500",
                          "--payment-window", "60")).json()
    assert (made["price_cents"], made["payment_window"]) == (500, "60s")
    updated = (await seckill("--json", "activity", "update", str(made["id"]),
                             "--payment-window", "1.5")).json()
    assert (updated["price_cents"], updated["payment_window"]) == (500, "1.500s")


async def test_status(seckill: Seckill, stack: Stack) -> None:
    # A service starts NOT_SERVING and turns SERVING once its database answers a ping.
    for service in (stack.product, stack.activity, stack.order):
        await until_serving(service.address)
    up = await seckill("status")
    assert up.code == Exit.OK and up.out.count("SERVING") == 3
    rows = (await seckill("--json", "status")).json()["services"]
    assert {r["service"]: r["status"] for r in rows} == {
        "product": "SERVING", "activity": "SERVING", "order": "SERVING"}

    await stack.order.stop(0)
    one_down = await seckill("--json", "status")
    assert one_down.code == Exit.UNREACHABLE
    states = {r["service"]: r["status"] for r in one_down.json()["services"]}
    assert states == {"product": "SERVING", "activity": "SERVING", "order": "UNREACHABLE"}
    assert "not listening" in (await seckill("status")).out


async def test_user_tokens(db_url: str, capsys: pytest.CaptureFixture[str],
                           monkeypatch: pytest.MonkeyPatch) -> None:
    """With SECKILL_USER_TOKEN_SECRET on the services, buy needs a token: `seckill token`."""
    monkeypatch.delenv("SECKILL_ADMIN_TOKEN", raising=False)
    monkeypatch.delenv("SECKILL_USER_TOKEN", raising=False)
    monkeypatch.delenv("SECKILL_USER_TOKEN_SECRET", raising=False)
    stack = await start_stack(db_url, SECKILL_USER_TOKEN_SECRET=USER_SECRET)
    try:
        seckill = Seckill(stack, capsys)
        aid = str((await make_activity(stack, (await make_product(stack)).id)).id)
        no_token = await seckill("buy", "--activity", aid, "--user", "alice")
        assert no_token.code == Exit.REFUSED and "--user-token" in no_token.err
        assert (await seckill("token", "alice")).code == Exit.USAGE  # no secret here

        monkeypatch.setenv("SECKILL_USER_TOKEN_SECRET", USER_SECRET)
        issued = await seckill("token", "alice", "--ttl", "60")
        token = issued.out.strip()
        assert UserTokens(USER_SECRET).verify(token.encode()) == "alice"
        bought = await seckill("--user-token", token, "buy", "--activity", aid)
        assert bought.code == Exit.OK and "user alice bought" in bought.out
        monkeypatch.setenv("SECKILL_USER_TOKEN", token)
        assert len((await seckill("--json", "orders")).json()["orders"]) == 1
    finally:
        await stack.stop()


async def run_process(*argv: str, env: dict[str, str]) -> Result:
    """The CLI as its own process; asyncio's, so this loop keeps serving the stack."""
    process = await asyncio.create_subprocess_exec(
        *argv, env=env, cwd=REPO, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return Result(process.returncode, out.decode(), err.decode())


async def test_as_a_process(stack: Stack) -> None:
    """`seckill` (the installed script) and `python -m seckill_cli`, configured by env vars."""
    env = {**os.environ, "SECKILL_ADMIN_TOKEN": ADMIN_TOKEN,
           "SECKILL_PRODUCT_ADDR": stack.product.address,
           "SECKILL_ACTIVITY_ADDR": stack.activity.address,
           "SECKILL_ORDER_ADDR": stack.order.address}
    await stack.products.CreateProduct(product_pb2.CreateProductRequest(
        product=product_pb2.Product(name="Kettle", stock=3)), metadata=ADMIN)
    for service in (stack.product, stack.activity, stack.order):
        await until_serving(service.address)
    script = Path(sys.executable).parent / "seckill"
    listed = await run_process(str(script), "product", "list", "--json", env=env)
    assert listed.code == 0, listed.err
    assert [p["name"] for p in listed.json()["products"]] == ["Kettle"]
    status = await run_process(sys.executable, "-m", "seckill_cli", "status", env=env)
    assert status.code == 0 and status.out.count("SERVING") == 3
    closed = {**env, "SECKILL_ORDER_ADDR": f"127.0.0.1:{free_port()}"}
    assert (await run_process(sys.executable, "-m", "seckill_cli", "status", env=closed)
            ).code == Exit.UNREACHABLE


async def test_events_lists_then_follows(seckill: Seckill, stack: Stack) -> None:
    product = await make_product(stack, stock=5)
    activity = await make_activity(stack, product.id)
    bought = await seckill("--json", "buy", "--activity", str(activity.id), "--user", "ev1")
    assert bought.code == Exit.OK, bought.err
    listed = await seckill("--json", "events")
    assert listed.code == Exit.OK, listed.err
    [created] = [json.loads(line) for line in listed.out.splitlines()]
    assert created["type"] == "CREATED" and created["order"]["user_id"] == "ev1"
    shown = await seckill("events", "--after", str(created["revision"]))
    assert shown.code == Exit.OK and shown.out == ""

    # --follow as a process: the listed event, then one that commits while it watches.
    env = {**os.environ, "SECKILL_ADMIN_TOKEN": ADMIN_TOKEN,
           "SECKILL_ORDER_ADDR": stack.order.address}
    follow = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "seckill_cli", "events", "--follow", env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    assert follow.stdout is not None
    try:
        first = (await asyncio.wait_for(follow.stdout.readline(), 30)).decode()
        assert first.startswith(f"{created['revision']} ") and "CREATED" in first
        await seckill("buy", "--activity", str(activity.id), "--user", "ev2")
        second = (await asyncio.wait_for(follow.stdout.readline(), 30)).decode()
        assert "CREATED" in second and "'ev2'" in second
    finally:
        follow.kill()
        await follow.wait()
