"""The handlers of the `seckill` commands: each turns parsed flags into calls and output.

`cli` builds the parser and hands each command to the handler named here.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import re
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.protobuf import empty_pb2, field_mask_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from rich.table import Table
from seckill.v1 import activity_pb2, order_pb2, product_pb2

from seckill_cli import render, token, wait_in_line
from seckill_cli.client import SERVICES, About, Auth, CliError, Exit, Session, usage_error
from seckill_cli.render import Output
from seckill_common.api.pages import MAX_PAGE_SIZE
from seckill_common.api.times import to_timestamp
from seckill_common.config import ConfigError, Settings
from seckill_common.database import migrations

Handler = Callable[[argparse.Namespace, Session, Output], Awaitable[int]]

RELATIVE = re.compile(r"^([+-])(\d+(?:\.\d+)?)([smhd])$")
UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_time(text: str) -> dt.datetime:
    """`now`, `+10m`-style offsets from now, or ISO-8601 (UTC unless it says otherwise)."""
    now = dt.datetime.now(dt.UTC)
    text = text.strip()
    if text == "now":
        return now
    if match := RELATIVE.match(text):
        sign = 1 if match[1] == "+" else -1
        return now + dt.timedelta(seconds=sign * float(match[2]) * UNIT_S[match[3]])
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a time: use ISO-8601 (2026-06-01T12:00:00Z), now, or +10m/-1h/+2d"
        ) from None
    return when.replace(tzinfo=dt.UTC) if when.tzinfo is None else when


def page_size(limit: int) -> int:
    return min(limit, MAX_PAGE_SIZE) if limit else MAX_PAGE_SIZE


async def every(session: Session, service: str, method: str, request: Any, field: str,
                limit: int, auth: Auth = Auth.NONE) -> list[Any]:
    """Walks the pages of a List call; at most `limit` items (0: all)."""
    items: list[Any] = []
    request.page_size = page_size(limit)
    while True:
        page = await session.call(service, method, request, auth=auth)
        items.extend(getattr(page, field))
        if not page.next_page_token or (limit and len(items) >= limit):
            return items[:limit] if limit else items
        request.page_token = page.next_page_token


def given(args: argparse.Namespace, *names: str) -> list[str]:
    """The fields whose flags were given: the update_mask of an update."""
    paths = [name for name in names if getattr(args, name) is not None]
    if not paths:
        raise usage_error("nothing to update: give at least one of "
                          + ", ".join(f"--{n.replace('_', '-')}" for n in names))
    return paths


# --- products --------------------------------------------------------------------------------

async def product_create(args: argparse.Namespace, session: Session, out: Output) -> int:
    product = await session.call("product", "CreateProduct", product_pb2.CreateProductRequest(
        product=product_pb2.Product(name=args.name, description=args.description,
                                    price_cents=args.price_cents, stock=args.stock)),
        auth=Auth.ADMIN)
    show_product(out, product)
    return Exit.OK


async def product_list(args: argparse.Namespace, session: Session, out: Output) -> int:
    products = await every(session, "product", "ListProducts",
                           product_pb2.ListProductsRequest(), "products", args.limit)
    if out.as_json:
        out.document({"products": [render.to_dict(p) for p in products]})
    else:
        out.table(render.products_table(products))
    return Exit.OK


async def product_get(args: argparse.Namespace, session: Session, out: Output) -> int:
    show_product(out, await session.call(
        "product", "GetProduct", product_pb2.GetProductRequest(id=args.id)))
    return Exit.OK


async def product_update(args: argparse.Namespace, session: Session, out: Output) -> int:
    paths = given(args, "name", "description", "price_cents", "stock")
    product = product_pb2.Product(id=args.id)
    for path in paths:
        setattr(product, path, getattr(args, path))
    show_product(out, await session.call(
        "product", "UpdateProduct", product_pb2.UpdateProductRequest(
            product=product, update_mask=field_mask_pb2.FieldMask(paths=paths)),
        auth=Auth.ADMIN))
    return Exit.OK


async def product_delete(args: argparse.Namespace, session: Session, out: Output) -> int:
    await session.call("product", "DeleteProduct", product_pb2.DeleteProductRequest(id=args.id),
                       auth=Auth.ADMIN)
    deleted(out, f"deleted product {args.id}")
    return Exit.OK


def show_product(out: Output, product: product_pb2.Product) -> None:
    if out.as_json:
        out.message(product)
    else:
        out.table(render.product_card(product))


def deleted(out: Output, text: str) -> None:
    if out.as_json:
        out.message(empty_pb2.Empty())
    out.say(text)


# --- activities ------------------------------------------------------------------------------

async def activity_create(args: argparse.Namespace, session: Session, out: Output) -> int:
    activity = activity_pb2.Activity(product_id=args.product, name=args.name,
                                     start_time=to_timestamp(args.start),
                                     end_time=to_timestamp(args.end))
    sale_terms(activity, args)
    activity = await session.call("activity", "CreateActivity", activity_pb2.CreateActivityRequest(
        activity=activity), auth=Auth.ADMIN)
    show_activity(out, activity)
    return Exit.OK


async def activity_list(args: argparse.Namespace, session: Session, out: Output) -> int:
    activities = await every(session, "activity", "ListActivities",
                             activity_pb2.ListActivitiesRequest(), "activities", args.limit)
    if out.as_json:
        out.document({"activities": [render.to_dict(a) for a in activities]})
    else:
        out.table(render.activities_table(activities, dt.datetime.now(dt.UTC)))
    return Exit.OK


async def activity_get(args: argparse.Namespace, session: Session, out: Output) -> int:
    show_activity(out, await session.call(
        "activity", "GetActivity", activity_pb2.GetActivityRequest(id=args.id)))
    return Exit.OK


async def activity_update(args: argparse.Namespace, session: Session, out: Output) -> int:
    flags = given(args, "name", "start", "end", "price_cents", "payment_window",
                  "per_user_limit")
    activity = activity_pb2.Activity(id=args.id)
    sale_terms(activity, args)
    if args.name is not None:
        activity.name = args.name
    if args.start is not None:
        activity.start_time.CopyFrom(to_timestamp(args.start))
    if args.end is not None:
        activity.end_time.CopyFrom(to_timestamp(args.end))
    paths = [{"start": "start_time", "end": "end_time"}.get(f, f) for f in flags]
    show_activity(out, await session.call(
        "activity", "UpdateActivity", activity_pb2.UpdateActivityRequest(
            activity=activity, update_mask=field_mask_pb2.FieldMask(paths=paths)),
        auth=Auth.ADMIN))
    return Exit.OK


def sale_terms(activity: activity_pb2.Activity, args: argparse.Namespace) -> None:
    """--price-cents, --payment-window (seconds) and --per-user-limit, when given."""
    if args.price_cents is not None:
        activity.price_cents = args.price_cents
    if args.per_user_limit is not None:
        activity.per_user_limit = args.per_user_limit
    if args.payment_window is not None:
        activity.payment_window.FromMilliseconds(round(args.payment_window * 1000))


async def activity_delete(args: argparse.Namespace, session: Session, out: Output) -> int:
    await session.call("activity", "DeleteActivity",
                       activity_pb2.DeleteActivityRequest(id=args.id), auth=Auth.ADMIN,
                       about=About(activity_id=args.id))
    deleted(out, f"deleted activity {args.id}")
    return Exit.OK


def show_activity(out: Output, activity: activity_pb2.Activity) -> None:
    if out.as_json:
        out.message(activity)
    else:
        out.table(render.activity_card(activity, dt.datetime.now(dt.UTC)))


# --- orders ----------------------------------------------------------------------------------

async def buy(args: argparse.Namespace, session: Session, out: Output) -> int:
    if not args.user and not session.user_token:
        raise usage_error("buy needs --user (or a user token, whose user buys)")
    request = activity_pb2.SeckillRequest(activity_id=args.activity, user_id=args.user,
                                          quantity=args.quantity)
    activity = await session.call("activity", "GetActivity",
                                  activity_pb2.GetActivityRequest(id=args.activity),
                                  about=About(activity_id=args.activity))
    if activity.waiting_room.enabled:  # wait in line first (docs/WAITING_ROOM.md)
        request.admission_pass = await wait_in_line.wait_in_line(session, out, args.activity,
                                                          args.user, args.quantity)
    reply = await session.call(
        "activity", "Seckill", request,
        auth=Auth.USER, about=About(user=args.user, activity_id=args.activity))
    if out.as_json:
        out.message(reply)
    else:
        order = reply.order
        units = "one unit" if order.quantity == 1 else f"{order.quantity} units"
        out.say(f"user {order.user_id} bought {units} of product {order.product_id} in "
                f"activity {order.activity_id}: order {order.id}, {order.total_price_cents} "
                f"cents; pay before {render.when(order.pay_deadline)}: seckill pay {order.id}")
    return Exit.OK


async def orders(args: argparse.Namespace, session: Session, out: Output) -> int:
    found = await every(
        session, "order", "ListOrders",
        order_pb2.ListOrdersRequest(user_id=args.user, activity_id=args.activity,
                                    states=[STATES[name] for name in args.state or ()]),
        "orders", args.limit, auth=Auth.USER)
    if out.as_json:
        out.document({"orders": [render.to_dict(o) for o in found]})
    else:
        out.table(render.orders_table(found))
    return Exit.OK


async def pay(args: argparse.Namespace, session: Session, out: Output) -> int:
    order = await session.call("order", "PayOrder", order_pb2.PayOrderRequest(id=args.order),
                               auth=Auth.USER)
    if out.as_json:
        out.message(order)
    else:
        out.say(f"order {order.id} is {render.order_state(order)}: "
                f"{order.total_price_cents} cents")
    return Exit.OK


async def cancel(args: argparse.Namespace, session: Session, out: Output) -> int:
    order = await session.call("order", "CancelOrder",
                               order_pb2.CancelOrderRequest(id=args.order), auth=Auth.USER)
    if out.as_json:
        out.message(order)
    else:
        units = "its unit is" if order.quantity == 1 else f"its {order.quantity} units are"
        out.say(f"cancelled order {order.id}; {units} back in stock")
    return Exit.OK


STATES = {"pending": order_pb2.PENDING_PAYMENT, "paid": order_pb2.PAID,
          "cancelled": order_pb2.CANCELLED, "expired": order_pb2.EXPIRED}


# --- status and tokens -----------------------------------------------------------------------

async def health_of(session: Session, service: str) -> str:
    """SERVING, NOT_SERVING (the service cannot reach its database, or is stopping), or why
    the question went unanswered."""
    stub = health_pb2_grpc.HealthStub(session.channel(service))
    try:
        reply = await stub.Check(health_pb2.HealthCheckRequest(service=""),
                                 timeout=session.timeout_s)
    except grpc.aio.AioRpcError as exc:
        if exc.code() == grpc.StatusCode.UNAVAILABLE:
            return "UNREACHABLE"
        return exc.code().name
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


MEANING = {
    "SERVING": "up, database reachable",
    "NOT_SERVING": "up, but its database is not reachable (or it is shutting down)",
    "UNREACHABLE": "not listening (is it running? `make up`)",
    "DEADLINE_EXCEEDED": "did not answer in time",
}


async def status(args: argparse.Namespace, session: Session, out: Output) -> int:
    states = await asyncio.gather(*(health_of(session, s) for s in SERVICES))
    rows = [{"service": s, "address": session.addrs[s], "status": st}
            for s, st in zip(SERVICES, states, strict=True)]
    if out.as_json:
        out.document({"services": rows})
    else:
        table = Table(title="health (grpc.health.v1)", title_justify="left")
        for column in ("service", "address", "status", "meaning"):
            table.add_column(column)
        for row in rows:
            table.add_row(row["service"], row["address"], row["status"],
                          MEANING.get(row["status"], "unexpected answer"))
        out.table(table)
    return Exit.OK if all(st == "SERVING" for st in states) else Exit.UNREACHABLE


async def user_token(args: argparse.Namespace, session: Session, out: Output) -> int:
    try:
        issued = token.issue(args.user_id, args.ttl)
    except ValueError as exc:
        raise usage_error(str(exc)) from None
    if out.as_json:
        out.document({"user_id": args.user_id, "token": issued})
    else:
        print(issued)
    return Exit.OK


async def migrate(args: argparse.Namespace, session: Session, out: Output) -> int:
    """Applies the database migrations (SECKILL_MYSQL_URL); talks to no service."""
    try:
        settings = Settings.from_env(admin_token_required=False)
    except ConfigError as exc:
        raise usage_error(str(exc)) from None
    try:
        applied, pending = await migrations.run(settings, check_only=args.check)
    except Exception as exc:  # the database refused or is not there: one sentence
        raise CliError(f"migration failed: {exc}", Exit.UNREACHABLE) from None
    if out.as_json:
        out.document({"applied": applied, "pending": pending})
    else:
        out.say(migrations.describe(applied, pending))
    return Exit.REFUSED if pending else Exit.OK

