"""`seckill sale simulate`: a flash sale you can watch, then its promises checked.

Creates a product and an activity that is already open, lets N users each send T Seckill calls
at once (an impatient double click), shows the race on a progress bar, then prints what the
service answered and checks through the public API (seckill_stack.invariants, as
`seckill-bench` does after a load run) that every OK answer is a listed order, no user holds
two, and stock left + the units of active orders == stock. With --max-quantity Q the activity
allows Q units per user and user n asks for 1 + n mod Q: all or nothing, so some are told
INSUFFICIENT_STOCK with the units left, which is checked to have been true. Then it pays a
share of the orders (--pay-share); with a short --payment-window it waits for the rest to
expire and checks that they did, that the paid ones stayed, and that their units are back.
This is `make run`'s demo.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from seckill.v1 import activity_pb2, order_pb2, product_pb2

from seckill_cli import render
from seckill_cli.client import Auth, Exit, Session, detail, rich_status, usage_error
from seckill_cli.render import Output
from seckill_common.api.errors import Reason
from seckill_common.api.times import to_timestamp
from seckill_common.api.validation import MAX_PER_USER_LIMIT
from seckill_stack.invariants import Invariant, SeckillCheck, percentile, units

# How long past the payment window the expiry check waits: the services' bound (a few seconds)
# with room to spare.
EXPIRY_SLACK_S = 15.0
POLL_S = 0.25


@dataclass
class Tally:
    """How the Seckill calls were answered, and how long each took."""

    order_ids: list[int] = field(default_factory=list)
    units: int = 0  # won by the OK answers
    sold_out: int = 0
    # INSUFFICIENT_STOCK answers as (units asked, units available named)
    insufficient: list[tuple[int, int]] = field(default_factory=list)
    duplicates: int = 0
    other: Counter[str] = field(default_factory=Counter)
    latencies_s: list[float] = field(default_factory=list)

    def refused(self, exc: grpc.aio.AioRpcError, asked: int) -> None:
        info = detail(rich_status(exc), error_details_pb2.ErrorInfo)
        reason = Reason.of(info.reason) if info else None
        if exc.code() == grpc.StatusCode.ALREADY_EXISTS:
            self.duplicates += 1
        elif exc.code() == grpc.StatusCode.FAILED_PRECONDITION and reason is Reason.SOLD_OUT:
            self.sold_out += 1
        elif reason is Reason.INSUFFICIENT_STOCK and info is not None:
            self.insufficient.append((asked, int(info.metadata["available"])))
        else:
            self.other[f"{exc.code().name} {info.reason if info else ''}".strip()] += 1

    def latency_ms(self, pct: float) -> float:
        return percentile(sorted(self.latencies_s), pct) * 1000


@dataclass
class Sale:
    """One simulated sale: what it created, and the race's settings."""

    session: Session
    product: product_pb2.Product
    activity: activity_pb2.Activity
    users: int
    tries: int
    concurrency: int
    max_quantity: int = 1

    def quantity_of(self, number: int) -> int:
        """User `number`'s units: a fixed mix of 1 to max_quantity."""
        return 1 + number % self.max_quantity

    async def race(self, progress: Progress) -> Tally:
        """Every user sends its tries at once; at most `concurrency` calls are in flight."""
        tally = Tally()
        task = progress.add_task("sale", total=self.users * self.tries, orders=0)
        stub = self.session.stub("activity")
        # With user tokens on, the admin token buys as any user (SECKILL_USER_TOKEN would buy
        # as one user only, which is no race).
        metadata = self.session.metadata(Auth.ADMIN)
        limit = asyncio.Semaphore(self.concurrency)

        async def attempt(number: int) -> None:
            quantity = self.quantity_of(number)
            request = activity_pb2.SeckillRequest(activity_id=self.activity.id,
                                                  user_id=f"user-{number:05d}",
                                                  quantity=quantity)
            async with limit:
                started = time.perf_counter()
                try:
                    reply = await stub.Seckill(request, metadata=metadata,
                                               timeout=self.session.timeout_s)
                except grpc.aio.AioRpcError as exc:
                    tally.refused(exc, quantity)
                else:
                    tally.order_ids.append(reply.order.id)
                    tally.units += reply.order.quantity
                tally.latencies_s.append(time.perf_counter() - started)
            progress.update(task, advance=1, orders=len(tally.order_ids))

        await asyncio.gather(*(attempt(number)
                               for number in range(1, self.users + 1)
                               for _ in range(self.tries)))
        return tally


async def create_sale(session: Session, stock: int, payment_window_s: float | None = None,
                      per_user_limit: int = 1
                      ) -> tuple[product_pb2.Product, activity_pb2.Activity]:
    now = dt.datetime.now(dt.UTC)
    product = await session.call("product", "CreateProduct", product_pb2.CreateProductRequest(
        product=product_pb2.Product(
            name=f"Simulated phone {now:%H:%M:%S}", description="created by seckill sale simulate",
            price_cents=99_900, stock=stock)), auth=Auth.ADMIN)
    activity = await session.call("activity", "CreateActivity", activity_pb2.CreateActivityRequest(
        activity=activity_pb2.Activity(
            product_id=product.id, name=f"Flash sale of product {product.id}",
            # Opened a second ago, so the sale is on by the database's clock too.
            start_time=to_timestamp(now - dt.timedelta(seconds=1)),
            end_time=to_timestamp(now + dt.timedelta(hours=1)), per_user_limit=per_user_limit,
            payment_window=None if payment_window_s is None else _duration(payment_window_s))),
        auth=Auth.ADMIN)
    return product, activity


def _duration(seconds: float) -> duration_pb2.Duration:
    duration = duration_pb2.Duration()
    duration.FromMilliseconds(round(seconds * 1000))
    return duration


async def pay_share(session: Session, order_ids: list[int], share: float, concurrency: int
                    ) -> tuple[list[int], list[int]]:
    """Pays the first `share` of the orders (by id); returns (paid, unpaid) ids."""
    ordered = sorted(order_ids)
    count = round(len(ordered) * share)
    stub, metadata = session.stub("order"), session.metadata(Auth.ADMIN)
    limit = asyncio.Semaphore(concurrency)

    async def pay(order_id: int) -> None:
        async with limit:
            await stub.PayOrder(order_pb2.PayOrderRequest(id=order_id), metadata=metadata,
                                timeout=session.timeout_s)

    await asyncio.gather(*map(pay, ordered[:count]))
    return ordered[:count], ordered[count:]


async def await_expiry(session: Session, activity: activity_pb2.Activity, paid: list[int],
                       unpaid: list[int], stock: int, timeout_s: float) -> list[Invariant]:
    """Waits (polling the API) until no order of the sale is pending, then checks the end."""
    stub, metadata = session.stub("order"), session.metadata(Auth.ADMIN)

    async def listed(*states: order_pb2.OrderState.ValueType) -> list[order_pb2.Order]:
        reply = await stub.ListOrders(order_pb2.ListOrdersRequest(
            activity_id=activity.id, states=states, page_size=1000), metadata=metadata,
            timeout=session.timeout_s)
        return list(reply.orders)  # a simulated sale's orders fit one page

    for _ in range(int(timeout_s / POLL_S)):  # the services expire them: nothing to await
        if not await listed(order_pb2.PENDING_PAYMENT):
            break
        await asyncio.sleep(POLL_S)
    expired = {o.id for o in await listed(order_pb2.EXPIRED)}
    paid_orders = await listed(order_pb2.PAID)
    still_paid = {o.id for o in paid_orders}
    paid_units = units(paid_orders)
    left = (await session.call("product", "GetProduct",
                               product_pb2.GetProductRequest(id=activity.product_id))).stock
    return [
        Invariant("unpaid orders expired", expired == set(unpaid),
                  f"{len(expired)} expired of {len(unpaid)} unpaid"),
        Invariant("paid orders stayed paid", still_paid == set(paid),
                  f"{len(still_paid)} paid of {len(paid)}"),
        Invariant("stock left + units of paid orders == stock", left + paid_units == stock,
                  f"{left} + {paid_units} vs {stock}"),
    ]


async def simulate(args: argparse.Namespace, session: Session, out: Output) -> int:
    stock = max(args.users // 10, 1) if args.stock is None else args.stock
    if args.users < 1 or args.tries < 1 or args.concurrency < 1 or stock < 0:
        raise usage_error("--users, --tries and --concurrency must be >= 1, --stock >= 0")
    if not 1 <= args.max_quantity <= MAX_PER_USER_LIMIT:
        raise usage_error(f"--max-quantity must be within 1..{MAX_PER_USER_LIMIT}")
    if not 0 <= args.pay_share <= 1:
        raise usage_error("--pay-share must be within 0..1")
    product, activity = await create_sale(session, stock, args.payment_window,
                                          per_user_limit=args.max_quantity)
    sale = Sale(session, product, activity, args.users, args.tries, args.concurrency,
                args.max_quantity)
    out.say(f"product {product.id} with stock {stock}; activity {activity.id}; "
            f"{args.users} users x {args.tries} Seckill calls at once "
            f"(at most {args.concurrency} in flight)")

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("calls, {task.fields[orders]} orders"), TimeElapsedColumn(),
                  console=out.err if out.as_json else out.out) as progress:
        started = time.perf_counter()
        tally = await sale.race(progress)
        elapsed_s = time.perf_counter() - started

    check = SeckillCheck(session.addrs["activity"], session.addrs["order"], activity.id,
                         product_addr=session.addrs["product"], initial_stock=stock,
                         metadata=session.metadata(Auth.ADMIN))
    invariants = await check.verify(len(tally.order_ids), tally.order_ids, ok_units=tally.units)
    left = (await session.call("product", "GetProduct",
                               product_pb2.GetProductRequest(id=product.id))).stock
    # SOLD_OUT is only answered once the stock is gone, and nothing gives any back here.
    invariants.append(Invariant("SOLD_OUT only once the stock was gone",
                                tally.sold_out == 0 or left == 0,
                                f"{tally.sold_out} SOLD_OUT answers, stock left {left}"))
    # Nothing gives units back during the race, so the stock only fell: each count named was
    # at least what is left now, at least 1 (else SOLD_OUT), and below what was asked.
    untrue = [(asked, available) for asked, available in tally.insufficient
              if not max(left, 1) <= available < asked]
    invariants.append(Invariant("every INSUFFICIENT_STOCK named a count that was true",
                                not untrue, f"{len(tally.insufficient)} INSUFFICIENT_STOCK "
                                f"answers" + (f"; untrue: {untrue[:5]}" if untrue else "")))
    paid, unpaid = await pay_share(session, tally.order_ids, args.pay_share, args.concurrency)
    if args.payment_window is not None and unpaid:
        out.say(f"paid {len(paid)} orders; waiting for the {len(unpaid)} unpaid to expire")
        invariants += await await_expiry(session, activity, paid, unpaid, stock,
                                         args.payment_window + EXPIRY_SLACK_S)
    calls = args.users * args.tries
    summary: dict[str, Any] = {
        "product": render.to_dict(product), "activity": render.to_dict(activity),
        "users": args.users, "tries": args.tries, "calls": calls,
        "elapsed_s": round(elapsed_s, 3), "calls_per_s": round(calls / elapsed_s, 1),
        "orders": len(tally.order_ids), "units": tally.units, "paid": len(paid),
        "sold_out": tally.sold_out, "insufficient_stock": len(tally.insufficient),
        "duplicates": tally.duplicates, "other_errors": dict(tally.other),
        "latency_ms": {"p50": round(tally.latency_ms(50), 2),
                       "p99": round(tally.latency_ms(99), 2)},
        "stock": stock, "stock_left": left,
        "invariants": [i.to_json() for i in invariants],
    }
    failed = [i.name for i in invariants if not i.ok]
    if out.as_json:
        out.document(summary)
    else:
        print_summary(out, summary, invariants)
        print_next_steps(out, session, product.id, activity.id, sold_out=left == 0)
    if failed:
        out.error(f"{len(failed)} invariant(s) FAILED: {'; '.join(failed)}")
        return Exit.INVARIANT_FAILED
    return Exit.OK


def print_summary(out: Output, summary: dict[str, Any], invariants: list[Invariant]) -> None:
    table = Table(title="the sale", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column(justify="right")
    for label, value in [
        ("Seckill calls", f"{summary['calls']} in {summary['elapsed_s']:.2f}s "
                          f"({summary['calls_per_s']:.0f}/s)"),
        ("orders placed (OK)", summary["orders"]),
        ("units sold", summary["units"]),
        ("orders paid", summary["paid"]),
        ("sold-out refusals (SOLD_OUT)", summary["sold_out"]),
        ("fewer left than asked (INSUFFICIENT_STOCK)", summary["insufficient_stock"]),
        ("duplicates refused (ALREADY_EXISTS)", summary["duplicates"]),
        ("other errors", sum(summary["other_errors"].values())),
        *((f"  {what}", n) for what, n in Counter(summary["other_errors"]).most_common()),
        ("latency p50 / p99", f"{summary['latency_ms']['p50']:.1f} / "
                              f"{summary['latency_ms']['p99']:.1f} ms"),
        ("stock left", f"{summary['stock_left']} of {summary['stock']}"),
    ]:
        table.add_row(label, str(value))
    out.table(table)

    checks = Table(title="invariants, checked through the API", title_justify="left")
    for column in ("result", "invariant", "detail"):
        checks.add_column(column)
    for invariant in invariants:
        checks.add_row("ok" if invariant.ok else "FAILED", invariant.name, invariant.detail,
                       style=None if invariant.ok else "bold red")
    out.table(checks)


def print_next_steps(out: Output, session: Session, product_id: int, activity_id: int,
                     *, sold_out: bool) -> None:
    addrs = session.addrs
    restock = json.dumps({"product": {"id": product_id, "stock": 10},
                          "update_mask": {"paths": ["stock"]}})
    refusal = "  # sold out: see the refusal" if sold_out else ""
    out.say(f"""
next steps (seckill and grpcurl are in .venv/bin; after `make up`, `. .run/stack.env` sets the
addresses and $SECKILL_ADMIN_TOKEN these commands use):
  seckill activity get {activity_id}
  seckill orders --activity {activity_id} --limit 10
  seckill buy --activity {activity_id} --user alice{refusal}
  seckill product update {product_id} --stock 10    # admin: put 10 units back on sale
  seckill status
  grpcurl -plaintext {addrs['activity']} list
  grpcurl -plaintext -d '{{"id": {activity_id}}}' \\
      {addrs['activity']} seckill.v1.ActivityService/GetActivity
  grpcurl -plaintext -d '{{"activity_id": {activity_id}, "page_size": 5}}' \\
      {addrs['order']} seckill.v1.OrderService/ListOrders
  grpcurl -plaintext -H "authorization: Bearer $SECKILL_ADMIN_TOKEN" \\
      -d '{restock}' \\
      {addrs['product']} seckill.v1.ProductService/UpdateProduct
  make down    # stop the stack (the data stays for the next `make up`)""")
