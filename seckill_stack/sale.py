"""Opens a sale on a running stack: what the benchmarks (one machine, or the cluster) load."""

from __future__ import annotations

import datetime as dt

import grpc
from seckill.v1 import activity_pb2, activity_pb2_grpc, product_pb2, product_pb2_grpc

from seckill_common.api.times import to_timestamp


def open_sale(product_target: str, activity_target: str, admin_token: str, name: str,
              stock: int, timeout_s: float = 30.0, per_user_limit: int = 1) -> int:
    """A product with `stock` units and an activity selling it now (since 5 s, for an
    hour), at most `per_user_limit` units per user; the activity's id. The targets are gRPC
    target strings."""
    admin = (("authorization", f"Bearer {admin_token}"),)
    now = dt.datetime.now(dt.UTC)
    with grpc.insecure_channel(product_target) as products, \
            grpc.insecure_channel(activity_target) as activities:
        product = product_pb2_grpc.ProductServiceStub(products).CreateProduct(
            product_pb2.CreateProductRequest(product=product_pb2.Product(
                name=name, price_cents=100, stock=stock)), metadata=admin, timeout=timeout_s)
        activity = activity_pb2_grpc.ActivityServiceStub(activities).CreateActivity(
            activity_pb2.CreateActivityRequest(activity=activity_pb2.Activity(
                product_id=product.id, name=name,
                start_time=to_timestamp(now - dt.timedelta(seconds=5)),
                end_time=to_timestamp(now + dt.timedelta(hours=1)),
                per_user_limit=per_user_limit)),
            metadata=admin, timeout=timeout_s)
    return activity.id
