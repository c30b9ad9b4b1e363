"""SQL for WatchActivity: the views of watched activities, read in one statement.

A view is what a storefront shows of an activity: the activity, its product and its stock, and
the database's clock. One non-locking SELECT reads them all, so every view is as it was at one
instant (one snapshot, one reading of UTC_TIMESTAMP): the state computed from it is one the
seckill transaction could have seen. Like `repository.read_facts`, it reads the products table
directly (the stock row is the sale's state); it takes no lock.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import datetime

from activity_svc.repository import ActivityRow
from seckill_common.api.messages import PRODUCT_FIELDS, ProductRow
from seckill_common.database.transaction import Transaction


@dataclass(frozen=True)
class ViewRow:
    activity: ActivityRow
    product: ProductRow | None  # None: the product is gone (the activity cannot sell)
    read_time: datetime  # the database's clock at the read
    waiting: int = 0  # buyers in its waiting room, as the line's mover last counted them


# The columns are the rows' fields, in their order (an activity column added to ActivityRow,
# per_user_limit say, is read here too, with nothing to keep in step by hand).
_ACTIVITY_FIELDS = tuple(f.name for f in fields(ActivityRow))
_SQL = (
    "SELECT " + ", ".join([*(f"a.{name}" for name in _ACTIVITY_FIELDS),
                           *(f"p.{name}" for name in PRODUCT_FIELDS), "UTC_TIMESTAMP(6)",
                           "COALESCE(l.waiting, 0)"])
    + " FROM activities a LEFT JOIN products p ON p.id = a.product_id"
    " LEFT JOIN queue_lines l ON l.activity_id = a.id WHERE a.id IN ({marks})"
)
_ACTIVITY_COLUMNS = len(_ACTIVITY_FIELDS)
_PRODUCT_COLUMNS = len(PRODUCT_FIELDS)


async def read_views(tx: Transaction, activity_ids: list[int]) -> dict[int, ViewRow]:
    """The views of the activities among `activity_ids` that exist, by id."""
    marks = ", ".join(["%s"] * len(activity_ids))
    rows = await tx.select_only(_SQL.format(marks=marks), activity_ids)
    views: dict[int, ViewRow] = {}
    for row in rows:
        # The SELECT lists ActivityRow's and ProductRow's fields in their order, then the clock.
        activity = ActivityRow.from_db(row[:_ACTIVITY_COLUMNS])
        product_cells = row[_ACTIVITY_COLUMNS:_ACTIVITY_COLUMNS + _PRODUCT_COLUMNS]
        product = None if product_cells[0] is None else ProductRow.from_db(product_cells)
        views[activity.id] = ViewRow(activity=activity, product=product,
                                     read_time=row[_ACTIVITY_COLUMNS + _PRODUCT_COLUMNS],
                                     waiting=int(row[_ACTIVITY_COLUMNS + _PRODUCT_COLUMNS + 1]))
    return views
