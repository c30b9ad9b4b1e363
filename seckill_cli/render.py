"""What the CLI prints: tables for people, one JSON document per command for scripts.

JSON is protobuf's JSON mapping of the messages (google.protobuf.json_format) with the proto's
field names, zero values included (a stock of 0 is an answer, not a missing field), and int64
ids as numbers, so `jq .id` gives a number.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Sequence
from typing import Any

from google.protobuf import json_format, timestamp_pb2
from google.protobuf.message import Message
from rich.console import Console
from rich.table import Table
from seckill.v1 import activity_pb2, order_pb2, product_pb2


def to_dict(message: Message) -> dict[str, Any]:
    return json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True,
        unquote_int64_if_possible=True)


def when(ts: timestamp_pb2.Timestamp) -> str:
    """A timestamp as ISO-8601 UTC to the second, the form the flags accept; "" when unset."""
    if not ts.seconds and not ts.nanos:
        return ""
    return ts.ToDatetime(tzinfo=dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def window(activity: activity_pb2.Activity, now: dt.datetime) -> str:
    """Whether the sale is open, by this machine's clock (the services go by the database's)."""
    if now < activity.start_time.ToDatetime(tzinfo=dt.UTC):
        return "upcoming"
    return "open" if now < activity.end_time.ToDatetime(tzinfo=dt.UTC) else "ended"


class Output:
    """Where a command's results go: stdout (tables or one JSON document); messages to stderr."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json
        # markup off: "[ok]" and user data are text, not rich markup. No file given: rich
        # writes to whatever sys.stdout is at print time (tests capture it).
        self.out = Console(highlight=False, markup=False, emoji=False)
        self.err = Console(stderr=True, highlight=False, markup=False, emoji=False)

    def document(self, document: Any) -> None:
        print(json.dumps(document, indent=2, ensure_ascii=False))

    def message(self, message: Message) -> None:
        self.document(to_dict(message))

    def say(self, text: str) -> None:
        """A line for people; in --json mode stdout holds only the document, so stderr.
        Never re-wrapped: commands in it must stay whole for copy and paste."""
        (self.err if self.as_json else self.out).print(text, soft_wrap=True)

    def error(self, text: str) -> None:
        self.err.print(f"seckill: {text}", soft_wrap=True)

    def table(self, table: Table) -> None:
        self.out.print(table)


def counted(items: Sequence[object], noun: str, plural: str = "") -> str:
    return f"1 {noun}" if len(items) == 1 else f"{len(items)} {plural or noun + 's'}"


def time_column(table: Table, name: str) -> None:
    # Whole or not at all: a clipped time reads as a different time.
    table.add_column(name, no_wrap=True, min_width=20)


def card(title: str, rows: Iterable[tuple[str, object]]) -> Table:
    """One resource as a two-column table of its fields."""
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    for name, value in rows:
        table.add_row(name, str(value))
    return table


def product_card(product: product_pb2.Product) -> Table:
    return card(f"product {product.id}", [
        ("name", product.name), ("description", product.description),
        ("price_cents", product.price_cents), ("stock", product.stock),
        ("created", when(product.create_time)), ("updated", when(product.update_time)),
    ])


def products_table(products: Sequence[product_pb2.Product]) -> Table:
    table = Table(title=counted(products, "product"), title_justify="left")
    for column in ("id", "name", "price_cents", "stock"):
        table.add_column(column, justify="left" if column == "name" else "right")
    time_column(table, "updated")
    for p in products:
        table.add_row(str(p.id), p.name, str(p.price_cents), str(p.stock), when(p.update_time))
    return table


def activity_card(activity: activity_pb2.Activity, now: dt.datetime) -> Table:
    rows: list[tuple[str, object]] = [
        ("name", activity.name), ("product_id", activity.product_id),
        ("start", when(activity.start_time)), ("end", when(activity.end_time)),
        ("state", window(activity, now)), ("created", when(activity.create_time)),
        ("price_cents", activity.price_cents),
        ("payment window", f"{activity.payment_window.ToMilliseconds() / 1000:g}s"),
        ("per user", f"at most {activity.per_user_limit or 1}"),
    ]
    if activity.HasField("product"):  # GetActivity fills it: the stock left is the news
        rows[2:2] = [("product", activity.product.name), ("stock left", activity.product.stock)]
    return card(f"activity {activity.id}", rows)


def activities_table(activities: Sequence[activity_pb2.Activity], now: dt.datetime) -> Table:
    table = Table(title=counted(activities, "activity", "activities"), title_justify="left")
    table.add_column("id", justify="right")
    table.add_column("name")
    table.add_column("product", justify="right")
    time_column(table, "start")
    time_column(table, "end")
    table.add_column("state")
    for a in activities:
        table.add_row(str(a.id), a.name, str(a.product_id), when(a.start_time), when(a.end_time),
                      window(a, now))
    return table


def orders_table(orders: Sequence[order_pb2.Order]) -> Table:
    table = Table(title=counted(orders, "order"), title_justify="left")
    for column in ("id", "activity", "product"):
        table.add_column(column, justify="right")
    table.add_column("user")
    table.add_column("state")
    table.add_column("units", justify="right")
    table.add_column("total", justify="right")
    time_column(table, "created")
    time_column(table, "pay by")
    for o in orders:
        table.add_row(str(o.id), str(o.activity_id), str(o.product_id), o.user_id,
                      order_state(o), str(o.quantity or 1), str(o.total_price_cents),
                      when(o.create_time),
                      when(o.pay_deadline) if o.state == order_pb2.PENDING_PAYMENT else "")
    return table


def order_state(order: order_pb2.Order) -> str:
    """PENDING_PAYMENT as `pending`, and so on."""
    return order_pb2.OrderState.Name(order.state).removesuffix("_PAYMENT").lower()
