"""Wiring of the order service into the shared server lifecycle."""

from __future__ import annotations

import grpc
from seckill.v1 import order_pb2, order_pb2_grpc

from order_svc.expiry import Expirer
from order_svc.servicer import OrderServicer
from seckill_common.config import Settings
from seckill_common.database.db import Database
from seckill_common.runtime.server import Cleanup, ServiceDefinition

SERVICE_NAME = order_pb2.DESCRIPTOR.services_by_name["OrderService"].full_name


async def add_servicers(server: grpc.aio.Server, database: Database,
                        settings: Settings) -> list[Cleanup]:
    order_pb2_grpc.add_OrderServiceServicer_to_server(OrderServicer(database), server)
    expirer = Expirer(database, settings.expiry_interval_s, settings.expiry_batch)
    expirer.start()
    return [expirer.stop]


DEFINITION = ServiceDefinition(
    name="order",
    service_names=[SERVICE_NAME],
    admin_methods=frozenset(f"/{SERVICE_NAME}/{method}"
                            for method in ("PayOrder", "CancelOrder", "DeleteOrder")),
    user_methods=frozenset(f"/{SERVICE_NAME}/{method}" for method in (
        "ListOrders", "GetOrder", "PayOrder", "CancelOrder", "DeleteOrder")),
    add_servicers=add_servicers,
)
