"""`seckill`: run a flash sale from the shell, against the three services.

    seckill product create --name Tea --price-cents 350 --stock 100
    seckill activity create --product 1 --name "Tea rush" --start now --end +1h
    seckill buy --activity 1 --user alice
    seckill orders --user alice
    seckill status
    seckill sale simulate --users 2000 --stock 200

Tables for people by default, `--json` for scripts. Each failure is one sentence on stderr
saying what went wrong and what to do, and a distinct exit code (see the epilog).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import re
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.protobuf import empty_pb2, field_mask_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from rich.table import Table
from seckill.v1 import activity_pb2, order_pb2, product_pb2

from seckill_cli import render, token
from seckill_cli.client import (
    DEFAULT_ADDRS,
    SERVICES,
    About,
    Auth,
    CliError,
    Exit,
    Session,
    usage_error,
)
from seckill_cli.render import Output
from seckill_cli.sale import simulate
from seckill_common.tls import ClientTLS
from seckill_common.validation import MAX_PAGE_SIZE, to_timestamp

Handler = Callable[[argparse.Namespace, Session, Output], Awaitable[int]]

EPILOG = """\
environment:
  SECKILL_PRODUCT_ADDR, SECKILL_ACTIVITY_ADDR, SECKILL_ORDER_ADDR
                        the services (default 127.0.0.1:50051, :50052, :50053)
  SECKILL_ADMIN_TOKEN   sent as `authorization: Bearer <token>` on admin calls (create, update,
                        delete, pay, cancel, sale simulate) and on user calls when no user token is
                        given; `. .run/stack.env` sets it for the stack of `make up`
  SECKILL_USER_TOKEN    the user token for buy, orders, pay and cancel, when the services run with
                        SECKILL_USER_TOKEN_SECRET (--user-token wins)

times: ISO-8601 (2026-06-01T12:00:00Z; without an offset it is UTC), `now`, or relative to now:
  +10m, -30s, +2h, +1d

exit codes:
  0  done
  1  the service refused the call (not found, invalid argument, already exists, sold out,
     not authorised, ...)
  2  usage error: bad flags or values, or a setting missing
  3  a service could not be reached or did not answer in time (`status`: one is not SERVING)
  4  `sale simulate`: an invariant check FAILED
"""

COMMON_NOTE = ("The options of `seckill --help` (--json, --timeout, --*-addr, --user-token) "
               "work here too.")
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
    flags = given(args, "name", "start", "end", "price_cents", "payment_window")
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
    """--price-cents and --payment-window (seconds), when given."""
    if args.price_cents is not None:
        activity.price_cents = args.price_cents
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
    reply = await session.call(
        "activity", "Seckill",
        activity_pb2.SeckillRequest(activity_id=args.activity, user_id=args.user),
        auth=Auth.USER, about=About(user=args.user, activity_id=args.activity))
    if out.as_json:
        out.message(reply)
    else:
        order = reply.order
        out.say(f"user {order.user_id} bought one unit of product {order.product_id} in "
                f"activity {order.activity_id}: order {order.id}, {order.price_cents} cents; "
                f"pay before {render.when(order.pay_deadline)}: seckill pay {order.id}")
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
        out.say(f"order {order.id} is {render.order_state(order)}: {order.price_cents} cents")
    return Exit.OK


async def cancel(args: argparse.Namespace, session: Session, out: Output) -> int:
    order = await session.call("order", "CancelOrder",
                               order_pb2.CancelOrderRequest(id=args.order), auth=Auth.USER)
    if out.as_json:
        out.message(order)
    else:
        out.say(f"cancelled order {order.id}; its unit is back in stock")
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


# --- the parser ------------------------------------------------------------------------------

def positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, not {text}")
    return value


def add_common(parser: argparse.ArgumentParser, *, top: bool) -> None:
    """The options every command takes, before or after the command's name.

    The commands' copies default to SUPPRESS, so they set a value only when given there and
    otherwise leave the top-level parser's; their help is `seckill --help`'s.
    """
    def default(value: object) -> object:
        return value if top else argparse.SUPPRESS

    def text(words: str) -> str:
        return words if top else argparse.SUPPRESS

    parser.add_argument("--json", action="store_true", default=default(False),
                        help=text("print one JSON document (protobuf JSON) instead of tables"))
    parser.add_argument("--timeout", type=positive_float, default=default(10.0), metavar="S",
                        help=text("deadline of each call in seconds (default 10)"))
    for service in SERVICES:
        env = f"SECKILL_{service.upper()}_ADDR"
        parser.add_argument(f"--{service}-addr", metavar="HOST:PORT",
                            default=default(os.environ.get(env) or DEFAULT_ADDRS[service]),
                            help=text(f"the {service} service (default ${env} or "
                                      f"{DEFAULT_ADDRS[service]})"))
    parser.add_argument("--user-token", metavar="JWT",
                        default=default(os.environ.get("SECKILL_USER_TOKEN", "")),
                        help=text("user token for buy, orders, cancel "
                                  "(default $SECKILL_USER_TOKEN)"))
    parser.add_argument("--cacert", metavar="PEM", default=default(""),
                        help=text("dial with TLS, trusting this CA or certificate (default: "
                                  "the services' own SECKILL_TLS_CA or SECKILL_TLS_CERT when "
                                  "set, else plaintext)"))
    parser.add_argument("--cert", metavar="PEM", default=default(""),
                        help=text("client certificate, for mutual TLS"))
    parser.add_argument("--key", metavar="PEM", default=default(""),
                        help=text("client private key, for mutual TLS"))


def sale_term_options(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("--price-cents", type=int, metavar="N",
                     help="the sale price (default at creation: the product's price)")
    sub.add_argument("--payment-window", type=positive_float, metavar="S",
                     help="seconds a buyer has to pay (default at creation: 900)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="seckill", description="\n\n".join(__doc__.split("\n\n")[:2]),
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common(parser, top=True)
    common = argparse.ArgumentParser(add_help=False)
    add_common(common, top=False)
    commands = parser.add_subparsers(title="commands", required=True, metavar="COMMAND")

    def command(group: Any, name: str, handler: Handler, help_text: str
                ) -> argparse.ArgumentParser:
        sub = group.add_parser(name, parents=[common], help=help_text, description=help_text,
                               epilog=COMMON_NOTE)
        sub.set_defaults(handler=handler)
        return sub

    def resource(name: str, help_text: str) -> Any:
        return commands.add_parser(name, help=help_text).add_subparsers(
            title="commands", required=True, metavar="COMMAND")

    def limit_option(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--limit", type=int, default=0, metavar="N",
                         help="at most N (default: every page)")

    products = resource("product", "create, list, show, change and delete products")
    sub = command(products, "create", product_create, "create a product (admin)")
    sub.add_argument("--name", required=True)
    sub.add_argument("--description", default="")
    sub.add_argument("--price-cents", type=int, default=0, metavar="N")
    sub.add_argument("--stock", type=int, default=0, metavar="N", help="units to sell")
    limit_option(command(products, "list", product_list, "list products"))
    command(products, "get", product_get, "show a product and its stock").add_argument(
        "id", type=int, metavar="ID")
    sub = command(products, "update", product_update,
                  "change the fields given, and only those (admin)")
    sub.add_argument("id", type=int, metavar="ID")
    sub.add_argument("--name")
    sub.add_argument("--description")
    sub.add_argument("--price-cents", type=int, metavar="N")
    sub.add_argument("--stock", type=int, metavar="N")
    command(products, "delete", product_delete, "delete a product (admin)").add_argument(
        "id", type=int, metavar="ID")

    activities = resource("activity", "create, list, show, change and delete sales")
    sub = command(activities, "create", activity_create,
                  "create a sale of one product in a time window (admin)")
    sub.add_argument("--product", type=int, required=True, metavar="ID")
    sub.add_argument("--name", required=True)
    sub.add_argument("--start", type=parse_time, default="now", metavar="TIME",
                     help="when the sale opens (default now)")
    sub.add_argument("--end", type=parse_time, required=True, metavar="TIME",
                     help="when it closes, e.g. +1h")
    sale_term_options(sub)
    limit_option(command(activities, "list", activity_list, "list activities"))
    command(activities, "get", activity_get,
            "show an activity with its product's stock").add_argument("id", type=int, metavar="ID")
    sub = command(activities, "update", activity_update,
                  "change the fields given, and only those (admin)")
    sub.add_argument("id", type=int, metavar="ID")
    sub.add_argument("--name")
    sub.add_argument("--start", type=parse_time, metavar="TIME")
    sub.add_argument("--end", type=parse_time, metavar="TIME")
    sale_term_options(sub)
    command(activities, "delete", activity_delete,
            "delete an activity without orders (admin)").add_argument("id", type=int, metavar="ID")

    sub = command(commands, "buy", buy, "buy one unit in a sale (Seckill)")
    sub.add_argument("--activity", type=int, required=True, metavar="ID")
    sub.add_argument("--user", default="", help="the buyer (with a user token: its user)")
    sub = command(commands, "orders", orders, "list orders, by user, activity and/or state")
    sub.add_argument("--user", default="")
    sub.add_argument("--activity", type=int, default=0, metavar="ID")
    sub.add_argument("--state", action="append", choices=list(STATES),
                     help="only orders in this state (repeatable; default every state)")
    limit_option(sub)
    command(commands, "pay", pay,
            "pay a pending order before its deadline (admin or its owner)"
            ).add_argument("order", type=int, metavar="ORDER")
    command(commands, "cancel", cancel,
            "cancel a pending or paid order; its unit goes back to the stock "
            "(admin or its owner)").add_argument("order", type=int, metavar="ORDER")
    command(commands, "status", status,
            "health of every service (NOT_SERVING: its database is down)")
    sub = command(commands, "token", user_token,
                  "print a user token signed with SECKILL_USER_TOKEN_SECRET")
    sub.add_argument("user_id", metavar="USER")
    sub.add_argument("--ttl", type=positive_float, default=3600.0, metavar="S",
                     help="seconds until it expires (default 3600)")

    sale = commands.add_parser("sale", help="run a simulated flash sale").add_subparsers(
        title="commands", required=True, metavar="COMMAND")
    sub = command(sale, "simulate", simulate,
                  "create a product and an open sale, let N users race for the stock, "
                  "then check the invariants through the API (admin)")
    sub.add_argument("--users", type=int, default=500, metavar="N",
                     help="simulated users (default 500)")
    sub.add_argument("--stock", type=int, default=None, metavar="S",
                     help="units on sale (default users/10)")
    sub.add_argument("--tries", type=int, default=2, metavar="T",
                     help="Seckill calls per user, sent at once: a double click (default 2)")
    sub.add_argument("--concurrency", type=int, default=200, metavar="C",
                     help="calls in flight at most (default 200)")
    sub.add_argument("--pay-share", type=float, default=1.0, metavar="F",
                     help="share of the orders paid, 0 to 1 (default 1)")
    sub.add_argument("--payment-window", type=positive_float, default=None, metavar="S",
                     help="seconds to pay (default the service's 15 minutes); with a short "
                          "one the unpaid orders' expiry is awaited and checked")
    return parser


async def run(argv: list[str] | None = None) -> int:
    """The CLI inside a running event loop (the tests call this)."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # argparse printed the usage error (or the help)
        return exc.code if isinstance(exc.code, int) else Exit.USAGE
    out = Output(args.json)
    try:
        tls = (ClientTLS(cacert=args.cacert, cert=args.cert, key=args.key)
               if args.cacert or args.cert or args.key else ClientTLS.from_env())
    except ValueError as exc:
        out.error(f"seckill: {exc}")
        return Exit.USAGE
    session = Session(
        addrs={s: getattr(args, f"{s}_addr") for s in SERVICES}, timeout_s=args.timeout,
        admin_token=os.environ.get("SECKILL_ADMIN_TOKEN", ""), user_token=args.user_token,
        tls=tls)
    try:
        return await args.handler(args, session, out)
    except CliError as err:
        out.error(err.message)
        if out.as_json:
            out.document({"error": err.document})
        return err.exit_code
    finally:
        await session.close()


def main(argv: list[str] | None = None) -> int:
    return asyncio.run(run(argv))


if __name__ == "__main__":
    sys.exit(main())
