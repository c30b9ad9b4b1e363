"""ActivityService: protobuf in, domain calls, protobuf out.

Products and orders are reached through their services' stubs; only the repository's seckill
transaction, refusal read and delete touch their tables (docs/DESIGN.md).
"""

from __future__ import annotations

import asyncio

from google.protobuf import empty_pb2
from grpc.aio import ServicerContext
from seckill.v1 import (
    activity_pb2,
    activity_pb2_grpc,
    order_pb2,
    order_pb2_grpc,
    product_pb2,
    product_pb2_grpc,
)

from activity_svc import repository
from activity_svc.catalogue import Catalogue
from activity_svc.fields import (
    DEFAULT_PAYMENT_WINDOW_MS,
    check_payment_window,
    check_waiting_room,
    payment_window_ms,
    waiting_room_columns,
)
from activity_svc.messages import activity_message
from activity_svc.metrics import count_seckill
from activity_svc.queue import QueueHub
from activity_svc.seckill import SeckillEngine
from activity_svc.watch import WatchHub
from seckill_common.api.errors import NotFound, ServiceError
from seckill_common.api.messages import OrderRow, order_message
from seckill_common.api.pages import decode_page_token, page_of, page_size
from seckill_common.api.times import db_time, to_datetime
from seckill_common.api.validation import (
    MAX_NAME_CHARS,
    MAX_PER_USER_LIMIT,
    Violations,
    require_id,
    update_paths,
)
from seckill_common.client.peers import call_peer
from seckill_common.concurrency.loader import HOT_READ_GATHER_S, BatchLoader
from seckill_common.database import idempotency
from seckill_common.database.db import Database
from seckill_common.runtime.auth import acting_user


def _check_fields(violations: Violations, activity: activity_pb2.Activity,
                  paths: list[str]) -> None:
    if "name" in paths:
        violations.text("activity.name", activity.name, max_chars=MAX_NAME_CHARS, required=True)
    for field in ("start_time", "end_time"):
        if field in paths:
            violations.time(f"activity.{field}", getattr(activity, field),
                            present=activity.HasField(field))
    if "price_cents" in paths:
        violations.bounded("activity.price_cents", activity.price_cents)
    if "payment_window" in paths:
        check_payment_window(violations, "activity.payment_window", activity.payment_window)
    if "per_user_limit" in paths:
        violations.bounded("activity.per_user_limit", activity.per_user_limit,
                           1, MAX_PER_USER_LIMIT)
    if "waiting_room" in paths:
        check_waiting_room(violations, "activity.waiting_room", activity.waiting_room)


def _quantity(violations: Violations, quantity: int) -> int:
    """The units a Seckill asks for: the wire's 0 (unset) is 1; beyond what any activity may
    allow is INVALID_ARGUMENT here, whatever the activity (AIP-193: wrong regardless of the
    system's state), and above this activity's limit the engine refuses before any lock."""
    violations.bounded("quantity", quantity, 0, MAX_PER_USER_LIMIT)
    return quantity or 1


class ActivityServicer(activity_pb2_grpc.ActivityServiceServicer):
    """Its collaborators, all built by server.py: the seckill engine, the activities this
    process knows of (`catalogue`, shared with the engine), WatchActivity's streams
    (`watches`, activity_svc.watch), JoinQueue's streams and Seckill's pass check (`queue`,
    activity_svc.queue) and the peers' stubs."""

    def __init__(self, database: Database, engine: SeckillEngine, catalogue: Catalogue,
                 watches: WatchHub, queue: QueueHub,
                 products: product_pb2_grpc.ProductServiceAsyncStub,
                 orders: order_pb2_grpc.OrderServiceAsyncStub, peer_timeout_s: float) -> None:
        self._db = database
        self._engine = engine
        self._catalogue = catalogue
        self.watches = watches
        self.queue = queue
        self._products = products
        self._orders = orders
        self._peer_timeout_s = peer_timeout_s
        # Before a sale opens thousands of clients poll it: the calls that arrive while a
        # read is in flight share the next one (one query, one GetProduct per product).
        self.reads: BatchLoader[int, activity_pb2.Activity] = BatchLoader(
            self._read, gather_s=HOT_READ_GATHER_S)

    async def _read(self, ids: list[int]) -> dict[int, activity_pb2.Activity | BaseException]:
        # An activity's product never changes: products already known are fetched alongside
        # the activities rather than after them (one round trip less on the read's path).
        known = {p for p in map(self._catalogue.known_product_of, ids) if p is not None}
        fetches = {p: asyncio.ensure_future(self._get_product(p)) for p in known}
        try:
            rows = await self._db.run(lambda tx: repository.get_many(tx, ids))
        except BaseException:
            for fetch in fetches.values():
                fetch.cancel()
            await asyncio.gather(*fetches.values(), return_exceptions=True)
            raise
        for read in rows.values():
            self._catalogue.learn(read.id, read.product_id, read.per_user_limit)
            if read.product_id not in fetches:
                fetches[read.product_id] = asyncio.ensure_future(
                    self._get_product(read.product_id))
        products = dict(zip(fetches, await asyncio.gather(*fetches.values(),
                                                          return_exceptions=True), strict=True))
        found: dict[int, activity_pb2.Activity | BaseException] = {}
        for activity_id in ids:
            row = rows.get(activity_id)
            product = None if row is None else products[row.product_id]
            if row is None:
                found[activity_id] = NotFound("Activity", activity_id)
            elif isinstance(product, BaseException):
                found[activity_id] = product
            else:
                found[activity_id] = activity_message(row, product)
        return found

    async def _get_product(self, product_id: int) -> product_pb2.Product:
        return await call_peer(self._products.GetProduct,
                               product_pb2.GetProductRequest(id=product_id),
                               peer="product", timeout_s=self._peer_timeout_s)

    async def CreateActivity(self, request: activity_pb2.CreateActivityRequest,
                             context: ServicerContext) -> activity_pb2.Activity:
        violations = Violations()
        violations.present(request, "activity")
        activity = request.activity
        violations.positive_id("activity.product_id", activity.product_id)
        unset = {"price_cents": not activity.HasField("price_cents"),
                 "payment_window": not activity.HasField("payment_window"),
                 "per_user_limit": activity.per_user_limit == 0,
                 "waiting_room": not activity.HasField("waiting_room")}
        _check_fields(violations, activity,
                      [path for path in repository.UPDATABLE if not unset.get(path)])
        idempotency.check(violations, request.request_id)
        violations.check()
        start, end = to_datetime(activity.start_time), to_datetime(activity.end_time)
        if not end > start:
            violations.add("activity.end_time", "must be after start_time")
        violations.check()
        product = await self._get_product(activity.product_id)  # NOT_FOUND if unknown
        price = activity.price_cents if activity.HasField("price_cents") else product.price_cents
        window_ms = (payment_window_ms(activity.payment_window)
                     if activity.HasField("payment_window") else DEFAULT_PAYMENT_WINDOW_MS)
        limit = activity.per_user_limit or 1
        row = await idempotency.create_once(
            self._db, "CreateActivity", request,
            lambda tx: repository.create(tx, activity.product_id, activity.name,
                                          db_time(start), db_time(end), price, window_ms, limit,
                                          waiting_room_columns(activity.waiting_room)),
            repository.get)
        return activity_message(row)

    async def GetActivity(self, request: activity_pb2.GetActivityRequest,
                          context: ServicerContext) -> activity_pb2.Activity:
        require_id(request.id)
        return await self.reads.get(request.id)

    async def ListActivities(self, request: activity_pb2.ListActivitiesRequest,
                             context: ServicerContext) -> activity_pb2.ListActivitiesResponse:
        limit = page_size(request.page_size)
        after = decode_page_token(request.page_token, {})
        rows = await self._db.run(lambda tx: repository.list_page(tx, after, limit + 1))
        page, token = page_of(rows, limit, {})
        return activity_pb2.ListActivitiesResponse(
            activities=[activity_message(row) for row in page], next_page_token=token)

    async def UpdateActivity(self, request: activity_pb2.UpdateActivityRequest,
                             context: ServicerContext) -> activity_pb2.Activity:
        violations = Violations()
        violations.present(request, "activity")
        activity = request.activity
        violations.positive_id("activity.id", activity.id)
        violations.check()
        paths = update_paths(request.update_mask, activity, updatable=repository.UPDATABLE,
                             immutable=("product_id",), field_prefix="activity")
        _check_fields(violations, activity, paths)
        violations.check()
        changes: dict[str, object] = {}
        for path in paths:
            value = getattr(activity, path)
            changes[path] = (db_time(to_datetime(value)) if path.endswith("_time")
                             else payment_window_ms(value) if path == "payment_window"
                             else waiting_room_columns(value) if path == "waiting_room"
                             else value)
        row = await self._db.run(lambda tx: repository.update(tx, activity.id, changes))
        return activity_message(row)

    async def DeleteActivity(self, request: activity_pb2.DeleteActivityRequest,
                             context: ServicerContext) -> empty_pb2.Empty:
        require_id(request.id)
        await self._db.run(lambda tx: repository.get(tx, request.id))  # NOT_FOUND first
        orders = await call_peer(
            self._orders.ListOrders,
            order_pb2.ListOrdersRequest(activity_id=request.id, page_size=1,
                                        states=[order_pb2.PENDING_PAYMENT, order_pb2.PAID]),
            peer="order", timeout_s=self._peer_timeout_s,
        )
        if orders.orders:
            raise repository.has_orders(request.id)
        # The orders table's foreign key refuses the delete if an order landed meanwhile.
        await self._db.run(lambda tx: repository.delete(tx, request.id))
        return empty_pb2.Empty()

    async def Seckill(self, request: activity_pb2.SeckillRequest,
                      context: ServicerContext) -> activity_pb2.SeckillResponse:
        user_id = acting_user(request.user_id)
        violations = Violations()
        violations.positive_id("activity_id", request.activity_id)
        violations.user_id("user_id", user_id)
        quantity = _quantity(violations, request.quantity)
        violations.check()
        try:
            await self.queue.check_pass(request.activity_id, user_id, request.admission_pass)
            won = await self._engine.buy(request.activity_id, user_id, quantity)
        except ServiceError as exc:
            count_seckill(exc)
            raise
        count_seckill(None, won.quantity)
        return activity_pb2.SeckillResponse(order=order_message(OrderRow(
            id=won.order_id, activity_id=request.activity_id, product_id=won.product_id,
            user_id=user_id, create_time=won.create_time, state=order_pb2.PENDING_PAYMENT,
            price_cents=won.price_cents, pay_deadline=won.pay_deadline,
            update_time=won.create_time, quantity=won.quantity)))

    # grpc.aio serves a coroutine handler of a server stream too: it writes with context.write.
    async def WatchActivity(self, request: activity_pb2.WatchActivityRequest,  # type: ignore[override]
                            context: ServicerContext) -> None:
        await self.watches.serve(request, context)

    async def JoinQueue(self, request: activity_pb2.JoinQueueRequest,  # type: ignore[override]
                        context: ServicerContext) -> None:
        await self.queue.serve(request, context)
