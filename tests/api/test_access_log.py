"""The access log writes what docs/OPERATIONS.md says it writes: by default every call with an
unexpected code, every slow call and one in 1,000 of the rest (the first of each method among
them); the metrics count every call whatever the log writes."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import grpc
import pytest
from prometheus_client import REGISTRY
from seckill.v1 import product_pb2, product_pb2_grpc

from product_svc.server import DEFINITION as PRODUCT
from seckill_common.runtime.server import RunningService, start_service
from tests.helpers.stack import ADMIN, settings_for

GET = "/seckill.v1.ProductService/GetProduct"


@asynccontextmanager
async def product_service(db_url: str, **overrides: str
                          ) -> AsyncIterator[tuple[RunningService,
                                                   product_pb2_grpc.ProductServiceAsyncStub]]:
    service = await start_service(PRODUCT, settings_for(db_url, **overrides))
    try:
        async with grpc.aio.insecure_channel(service.address) as channel:
            yield service, product_pb2_grpc.ProductServiceStub(channel)
    finally:
        await service.stop(0)


def lines(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str, str]]:
    """(method name, code, why logged) of each access-log line."""
    return [(r.method.rsplit("/", 1)[1], r.code, r.logged)  # type: ignore[attr-defined]
            for r in caplog.records if r.name == "seckill.rpc" and r.getMessage() == "rpc"]


def counted(code: str) -> Callable[[], float]:
    def value() -> float:
        return REGISTRY.get_sample_value("seckill_rpc_requests_total", {
            "service": "product", "method": GET, "code": code}) or 0.0
    return value


async def calls(products: product_pb2_grpc.ProductServiceAsyncStub, product_id: int, ok: int,
                not_found: int) -> None:
    for _ in range(ok):
        await products.GetProduct(product_pb2.GetProductRequest(id=product_id))
    for _ in range(not_found):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await products.GetProduct(product_pb2.GetProductRequest(id=10**9))
        assert refused.value.code() == grpc.StatusCode.NOT_FOUND


async def test_the_defaults_log_unexpected_codes_and_the_first_of_a_thousand(
        db_url: str, caplog: pytest.LogCaptureFixture) -> None:
    async with product_service(db_url) as (_service, products):
        product = await products.CreateProduct(product_pb2.CreateProductRequest(
            product=product_pb2.Product(name="Logged", stock=1)), metadata=ADMIN)
        ok_before, not_found_before = counted("OK")(), counted("NOT_FOUND")()
        with caplog.at_level(logging.INFO, logger="seckill.rpc"):
            await calls(products, product.id, ok=40, not_found=10)
            # Unexpected codes: a missing admin token, an invalid id.
            with pytest.raises(grpc.aio.AioRpcError) as unauthenticated:
                await products.DeleteProduct(product_pb2.DeleteProductRequest(id=product.id))
            assert unauthenticated.value.code() == grpc.StatusCode.UNAUTHENTICATED
            with pytest.raises(grpc.aio.AioRpcError) as invalid:
                await products.GetProduct(product_pb2.GetProductRequest(id=0))
            assert invalid.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        # The first GetProduct of the process, and no other OK or NOT_FOUND call, is sampled.
        assert lines(caplog) == [("GetProduct", "OK", "sampled"),
                                 ("DeleteProduct", "UNAUTHENTICATED", "error"),
                                 ("GetProduct", "INVALID_ARGUMENT", "error")]
        record = next(r for r in caplog.records if getattr(r, "logged", "") == "sampled")
        assert record.sample_every == 1000  # type: ignore[attr-defined]
        # The metrics count every call.
        assert counted("OK")() - ok_before == 40
        assert counted("NOT_FOUND")() - not_found_before == 10


async def test_each_rule_has_its_setting(db_url: str, caplog: pytest.LogCaptureFixture) -> None:
    # The settings are what is under test here; the shipped defaults are the tests above.
    async with product_service(db_url, SECKILL_ACCESS_LOG_SAMPLE="10") as (_s, products):
        product = await products.CreateProduct(product_pb2.CreateProductRequest(
            product=product_pb2.Product(name="Sampled", stock=1)), metadata=ADMIN)
        with caplog.at_level(logging.INFO, logger="seckill.rpc"):
            await calls(products, product.id, ok=20, not_found=10)
        # The 1st, 11th and 21st GetProduct, whatever their expected code.
        assert lines(caplog) == [("GetProduct", "OK", "sampled"),
                                 ("GetProduct", "OK", "sampled"),
                                 ("GetProduct", "NOT_FOUND", "sampled")]
    caplog.clear()

    # Slower than a microsecond: every call.
    async with product_service(db_url, SECKILL_ACCESS_LOG_SLOW_MS="0.001",
                               SECKILL_ACCESS_LOG_SAMPLE="0") as (_s, products):
        with caplog.at_level(logging.INFO, logger="seckill.rpc"):
            await calls(products, product.id, ok=3, not_found=2)
        assert [why for _m, _c, why in lines(caplog)] == ["slow"] * 5
    caplog.clear()

    async with product_service(db_url, SECKILL_ACCESS_LOG_ALL="true") as (_s, products):
        with caplog.at_level(logging.INFO, logger="seckill.rpc"):
            await calls(products, product.id, ok=3, not_found=2)
        assert lines(caplog) == [("GetProduct", "OK", "all")] * 3 + [
            ("GetProduct", "NOT_FOUND", "all")] * 2
    caplog.clear()

    # Nothing at all: no errors, no sample, nothing slow.
    async with product_service(db_url, SECKILL_ACCESS_LOG_ERRORS="false",
                               SECKILL_ACCESS_LOG_SAMPLE="0",
                               SECKILL_ACCESS_LOG_SLOW_MS="0") as (_s, products):
        with caplog.at_level(logging.INFO, logger="seckill.rpc"):
            await calls(products, product.id, ok=3, not_found=2)
            with pytest.raises(grpc.aio.AioRpcError):
                await products.GetProduct(product_pb2.GetProductRequest(id=0))
        assert lines(caplog) == []
