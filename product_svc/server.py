"""Wiring of the product service into the shared server lifecycle."""

from __future__ import annotations

import grpc
from seckill.v1 import product_pb2, product_pb2_grpc

from product_svc.servicer import ProductServicer
from seckill_common.config import Settings
from seckill_common.database.db import Database
from seckill_common.runtime.server import Cleanup, ServiceDefinition

SERVICE_NAME = product_pb2.DESCRIPTOR.services_by_name["ProductService"].full_name


async def add_servicers(server: grpc.aio.Server, database: Database,
                        settings: Settings) -> list[Cleanup]:
    product_pb2_grpc.add_ProductServiceServicer_to_server(ProductServicer(database), server)
    return []


DEFINITION = ServiceDefinition(
    name="product",
    service_names=[SERVICE_NAME],
    admin_methods=frozenset(
        f"/{SERVICE_NAME}/{method}"
        for method in ("CreateProduct", "UpdateProduct", "DeleteProduct")
    ),
    user_methods=frozenset(),
    add_servicers=add_servicers,
)
