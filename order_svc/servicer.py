"""OrderService: protobuf in, repository calls, protobuf out."""

from __future__ import annotations

from google.protobuf import empty_pb2
from grpc.aio import ServicerContext
from seckill.v1 import order_pb2, order_pb2_grpc

from order_svc import repository
from order_svc.outcomes import settle
from seckill_common.api.messages import OrderRow, order_message
from seckill_common.api.pages import decode_page_token, page_of, page_size
from seckill_common.api.validation import MAX_USER_ID_CHARS, Violations, require_id
from seckill_common.database.db import Database
from seckill_common.database.order_events import Outbox
from seckill_common.runtime.auth import acting_user, confined_to, may_see

STATES = frozenset(order_pb2.OrderState.values()) - {order_pb2.ORDER_STATE_UNSPECIFIED}


class OrderServicer(order_pb2_grpc.OrderServiceServicer):
    def __init__(self, database: Database, outbox: Outbox) -> None:
        self._db = database
        self._outbox = outbox

    async def GetOrder(self, request: order_pb2.GetOrderRequest,
                       context: ServicerContext) -> order_pb2.Order:
        require_id(request.id)
        row = await self._db.run(lambda cur: repository.get(cur, request.id))
        may_see(row.user_id, "Order", row.id)
        return order_message(row)

    async def ListOrders(self, request: order_pb2.ListOrdersRequest,
                         context: ServicerContext) -> order_pb2.ListOrdersResponse:
        violations = Violations()
        if request.activity_id < 0:
            violations.add("activity_id", "must be 0 (any) or a positive id")
        if len(request.user_id) > MAX_USER_ID_CHARS:
            violations.add("user_id", f"must be at most {MAX_USER_ID_CHARS} characters")
        if not set(request.states) <= STATES:
            violations.add("states", "must name known states, not ORDER_STATE_UNSPECIFIED")
        violations.check()
        user_id = acting_user(request.user_id)
        limit = page_size(request.page_size)
        states = sorted(set(request.states))
        filters: dict[str, object] = {"user_id": user_id, "activity_id": request.activity_id}
        if states:  # tokens issued before the filter existed stay valid without it
            filters["states"] = states
        after = decode_page_token(request.page_token, filters)
        rows = await self._db.run(lambda cur: repository.list_page(
            cur,
            user_id=user_id or None,
            activity_id=request.activity_id or None,
            states=states,
            after_id=after,
            limit=limit + 1,
        ))
        page, token = page_of(rows, limit, filters)
        return order_pb2.ListOrdersResponse(
            orders=[order_message(row) for row in page], next_page_token=token)

    async def PayOrder(self, request: order_pb2.PayOrderRequest,
                       context: ServicerContext) -> order_pb2.Order:
        require_id(request.id)
        owner = confined_to()
        payment = await self._db.run(
            lambda cur: repository.pay(cur, request.id, owner, self._outbox))
        return order_message(settle(payment))

    async def CancelOrder(self, request: order_pb2.CancelOrderRequest,
                          context: ServicerContext) -> order_pb2.Order:
        return order_message(await self._cancel(request.id))

    async def DeleteOrder(self, request: order_pb2.DeleteOrderRequest,
                          context: ServicerContext) -> empty_pb2.Empty:
        await self._cancel(request.id)
        return empty_pb2.Empty()

    async def _cancel(self, order_id: int) -> OrderRow:
        require_id(order_id)
        owner = confined_to()
        cancellation = await self._db.run(
            lambda cur: repository.cancel(cur, order_id, owner, self._outbox))
        return settle(cancellation)
