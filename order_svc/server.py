"""Wiring of the order service into the shared server lifecycle: OrderService, the expiry
sweeper, and the order events (OrderEventService, retention, the relay to NATS JetStream)."""

from __future__ import annotations

import grpc
from seckill.v1 import order_events_pb2_grpc, order_pb2, order_pb2_grpc

from order_svc.event_service import SERVICE_NAME as EVENTS_SERVICE_NAME
from order_svc.event_service import OrderEventServicer, Pruner
from order_svc.expiry import Expirer
from order_svc.relay import HEALTH_NAME as RELAY_HEALTH_NAME
from order_svc.relay import Relay
from order_svc.servicer import OrderServicer
from seckill_common.config import Settings
from seckill_common.database.db import Database
from seckill_common.database.order_events import Outbox
from seckill_common.runtime.server import Cleanup, HealthEntry, OnStop, ServiceDefinition

SERVICE_NAME = order_pb2.DESCRIPTOR.services_by_name["OrderService"].full_name


async def add_servicers(server: grpc.aio.Server, database: Database,
                        settings: Settings) -> list[Cleanup | OnStop | HealthEntry]:
    outbox = Outbox(enabled=settings.events.enabled)
    order_pb2_grpc.add_OrderServiceServicer_to_server(OrderServicer(database, outbox), server)
    events = OrderEventServicer(database, settings.events, settings.watch)
    order_events_pb2_grpc.add_OrderEventServiceServicer_to_server(events, server)
    expirer = Expirer(database, settings.expiry_interval_s, settings.expiry_batch, outbox)
    expirer.start()
    steps: list[Cleanup | OnStop | HealthEntry] = [OnStop(events.close), expirer.stop]
    if settings.events.enabled:
        pruner = Pruner(database, settings.events)
        pruner.start()
        steps.append(pruner.stop)
    if settings.events.enabled and settings.events.nats_url:
        health = HealthEntry(RELAY_HEALTH_NAME, serving=False)
        relay = Relay(database, settings, health)
        relay.start()
        steps += [health, relay.stop]
    return steps


DEFINITION = ServiceDefinition(
    name="order",
    service_names=[SERVICE_NAME, EVENTS_SERVICE_NAME],
    admin_methods=frozenset(
        [f"/{SERVICE_NAME}/{method}" for method in ("PayOrder", "CancelOrder", "DeleteOrder")]
        + [f"/{EVENTS_SERVICE_NAME}/{method}"
           for method in ("ListOrderEvents", "WatchOrderEvents")]),
    user_methods=frozenset(f"/{SERVICE_NAME}/{method}" for method in (
        "ListOrders", "GetOrder", "PayOrder", "CancelOrder", "DeleteOrder")),
    add_servicers=add_servicers,
)
