"""What Kubernetes' probes see. SECKILL_DRAIN_DELAY: on SIGTERM a service turns NOT_SERVING at
once and keeps answering calls for the delay (while probes and DNS take it out of rotation),
then stops gracefully. The liveness entry stays SERVING while the database is away, so that an
outage takes pods out of rotation without restarting them."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from seckill.v1 import product_pb2

from product_svc.server import DEFINITION as PRODUCT
from seckill_common.runtime.server import LIVENESS_HEALTH_NAME, start_service
from tests.helpers.processes import start_processes
from tests.helpers.stack import (
    PrivateMariaDB,
    create_database,
    settings_for,
)

DRAIN_S = 3.0


async def test_sigterm_drains_then_stops(db_url: str, tmp_path: Path) -> None:
    # The setting under test; the default (0) stops at once as before.
    async with start_processes("product", 1, db_url, tmp_path,
                               SECKILL_DRAIN_DELAY=str(DRAIN_S)) as extra:
        service = extra[0]
        assert service.process is not None
        health = health_pb2_grpc.HealthStub(extra.channels[0])
        products = extra.products[0]
        watch = health.Watch(health_pb2.HealthCheckRequest(service=""), timeout=30)
        first = await watch.read()
        assert first.status == health_pb2.HealthCheckResponse.SERVING

        signalled = time.monotonic()
        service.process.send_signal(signal.SIGTERM)
        reply = await watch.read()
        assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING
        watch.cancel()
        # Draining: calls routed here before the endpoint left the rotation are answered.
        await products.ListProducts(product_pb2.ListProductsRequest(), timeout=5)
        assert time.monotonic() - signalled < DRAIN_S
        await asyncio.wait_for(service.process.wait(), 30)
        assert time.monotonic() - signalled >= DRAIN_S
        assert await service.stop() == 0  # already exited: collects the code and the log
    assert "draining: NOT_SERVING for 3.0 s" in service.log_path.read_text()


async def test_liveness_stays_serving_while_the_database_is_away(tmp_path: Path) -> None:
    server = PrivateMariaDB(tmp_path / "mariadb")
    server.install()
    server.start()
    try:
        product = await start_service(PRODUCT, settings_for(
            await create_database(server.url_base)))
        try:
            async with grpc.aio.insecure_channel(product.address) as channel:
                health = health_pb2_grpc.HealthStub(channel)
                watch = health.Watch(health_pb2.HealthCheckRequest(service=""), timeout=30)
                # SERVING follows start-up once the monitor has seen the database.
                while (await watch.read()).status != health_pb2.HealthCheckResponse.SERVING:
                    pass
                server.kill()
                assert (await watch.read()).status == \
                    health_pb2.HealthCheckResponse.NOT_SERVING
                watch.cancel()
                alive = await health.Check(
                    health_pb2.HealthCheckRequest(service=LIVENESS_HEALTH_NAME))
                assert alive.status == health_pb2.HealthCheckResponse.SERVING
        finally:
            await product.stop(0)
    finally:
        server.stop()
