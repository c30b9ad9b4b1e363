"""Tracing across the services, the Prometheus endpoint, and the access log's fields."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from seckill.v1 import activity_pb2, product_pb2

from seckill_common import tracing as telemetry
from tests.helpers.factories import make_activity, make_product
from tests.helpers.metrics import delta, scrape
from tests.helpers.processes import start_processes
from tests.helpers.stack import ADMIN, Stack, start_stack

ACTIVITY = "/seckill.v1.ActivityService"


@pytest.fixture
async def traced(db_url: str) -> AsyncIterator[tuple[Stack, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    telemetry.use_tracer_provider(provider)
    try:
        # Every call's log line: the tests read the lines of particular calls.
        stack = await start_stack(db_url, SECKILL_ACCESS_LOG_ALL="true")
    finally:
        telemetry.use_tracer_provider(None)  # only this stack is traced
    yield stack, exporter
    await stack.stop()


def trace_of(exporter: InMemorySpanExporter, root_name: str) -> list[ReadableSpan]:
    """Every span in the trace of the (single) server span named `root_name`."""
    roots = [s for s in exporter.get_finished_spans()
             if s.name == root_name and s.kind == SpanKind.SERVER]
    assert len(roots) == 1, [s.name for s in exporter.get_finished_spans()]
    trace_id = roots[0].context.trace_id
    return [s for s in exporter.get_finished_spans() if s.context.trace_id == trace_id]


async def test_get_activity_is_one_trace_across_both_services(
        traced: tuple[Stack, InMemorySpanExporter], caplog: pytest.LogCaptureFixture) -> None:
    stack, exporter = traced
    product = await make_product(stack)
    activity = await make_activity(stack, product.id)
    exporter.clear()

    with caplog.at_level(logging.INFO, logger="seckill.rpc"):
        await stack.activities.GetActivity(activity_pb2.GetActivityRequest(id=activity.id))
    spans = trace_of(exporter, f"{ACTIVITY}/GetActivity")
    by_name = {(s.name, s.kind): s for s in spans}
    server = by_name[(f"{ACTIVITY}/GetActivity", SpanKind.SERVER)]
    client = by_name[("/seckill.v1.ProductService/GetProduct", SpanKind.CLIENT)]
    remote = by_name[("/seckill.v1.ProductService/GetProduct", SpanKind.SERVER)]
    # activity server -> its client call -> the product service's server span.
    assert client.parent is not None and client.parent.span_id == server.context.span_id
    assert remote.parent is not None and remote.parent.span_id == client.context.span_id
    # A span per transaction, on both sides.
    transactions = [s for s in spans if s.name == "db.transaction"]
    assert {t.parent.span_id for t in transactions if t.parent} == {
        server.context.span_id, remote.context.span_id}

    # The access log lines of both hops carry the trace id.
    trace_id = format(server.context.trace_id, "032x")
    logged = [r for r in caplog.records if getattr(r, "trace_id", None) == trace_id]
    assert {r.method for r in logged} == {f"{ACTIVITY}/GetActivity",  # type: ignore[attr-defined]
                                          "/seckill.v1.ProductService/GetProduct"}


async def test_a_coalesced_batch_is_a_span_with_its_size(
        traced: tuple[Stack, InMemorySpanExporter]) -> None:
    stack, exporter = traced
    product = await make_product(stack, stock=100)
    activity = await make_activity(stack, product.id)
    exporter.clear()
    await asyncio.gather(*(stack.activities.Seckill(activity_pb2.SeckillRequest(
        activity_id=activity.id, user_id=f"u{n}")) for n in range(30)))

    batches = [s for s in exporter.get_finished_spans() if s.name == "seckill.batch"]
    assert sum(b.attributes["seckill.batch_size"] for b in batches) == 30  # type: ignore[index, misc]
    assert any(b.attributes["seckill.batch_size"] > 1 for b in batches)  # type: ignore[index, operator]
    seckills = {s.context.span_id: s for s in exporter.get_finished_spans()
                if s.name == f"{ACTIVITY}/Seckill" and s.kind == SpanKind.SERVER}
    for batch in batches:
        # Child of its first caller's call, linked to the others'; its transaction below it.
        assert batch.parent is not None and batch.parent.span_id in seckills
        assert len(batch.links) == batch.attributes["seckill.batch_size"] - 1  # type: ignore[index, operator]
        assert {link.context.span_id for link in batch.links} <= set(seckills)
        below = [s for s in exporter.get_finished_spans()
                 if s.parent is not None and s.parent.span_id == batch.context.span_id]
        assert [s.name for s in below] == ["db.transaction"]


def test_tracing_is_off_without_an_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    assert not telemetry.configure_tracing("activity")
    assert not telemetry.tracing_on()
    assert telemetry.server_interceptors() == []
    assert telemetry.client_interceptors() == []


async def test_metrics_endpoint_counts_rpcs_outcomes_batches_pool_and_stock(
        db_url: str) -> None:
    stack = await start_stack(db_url, SECKILL_METRICS_ADDR="127.0.0.1:0")
    try:
        assert stack.activity.metrics_server is not None
        port = stack.activity.metrics_server.server_port
        product = await make_product(stack, stock=3)
        activity = await make_activity(stack, product.id)
        later = await make_activity(stack, product.id, start_s=3600, end_s=7200)
        before = scrape(port)

        users = ["a", "b", "c", "d", "a"]
        answers = await asyncio.gather(*(stack.activities.Seckill(
            activity_pb2.SeckillRequest(activity_id=activity.id, user_id=u))
            for u in users), return_exceptions=True)
        assert sum(not isinstance(a, BaseException) for a in answers) == 3
        with pytest.raises(grpc.aio.AioRpcError):
            await stack.activities.Seckill(activity_pb2.SeckillRequest(
                activity_id=later.id, user_id="early"))
        after = scrape(port)

        seckill = {"service": "activity", "method": f"{ACTIVITY}/Seckill"}
        assert delta(before, after, "seckill_rpc_requests_total", code="OK", **seckill) == 3
        assert delta(before, after, "seckill_rpc_latency_seconds_count", code="OK",
                     **seckill) == 3
        refused = sum(delta(before, after, "seckill_rpc_requests_total", code=c, **seckill)
                      for c in ("ALREADY_EXISTS", "FAILED_PRECONDITION"))
        assert refused == 3
        assert delta(before, after, "seckill_outcomes_total", outcome="won") == 3
        assert delta(before, after, "seckill_outcomes_total", outcome="not_started") == 1
        assert (delta(before, after, "seckill_outcomes_total", outcome="sold_out")
                + delta(before, after, "seckill_outcomes_total",
                        outcome="already_purchased")) == 2
        # The five buyers are decided by transactions; the early call comes after the sale
        # sold out, so a shared read refuses it without one.
        assert delta(before, after, "seckill_commit_batch_size_sum") == 5
        assert delta(before, after, "seckill_commit_batch_size_count") >= 1
        assert after[("seckill_activity_stock_remaining",
                      (("activity_id", str(activity.id)),))] == 0
        for state in ("in_use", "idle"):
            assert ("seckill_db_pool_connections",
                    (("service", "activity"), ("state", state))) in after
        assert after[("seckill_db_pool_connections",
                      (("service", "activity"), ("state", "in_use")))] == 0
        assert ("seckill_db_pool_waiting", (("service", "activity"),)) in after
        assert after[("seckill_db_pool_max_connections", (("service", "activity"),))] == (
            stack.activity.settings.db_pool_size)
        # The product service's calls are counted under its name (one registry per process).
        await stack.products.GetProduct(product_pb2.GetProductRequest(id=product.id))
        assert delta(after, scrape(port), "seckill_rpc_requests_total", service="product",
                     method="/seckill.v1.ProductService/GetProduct", code="OK") == 1
    finally:
        await stack.stop()


@pytest.mark.slow
async def test_a_service_process_logs_json_lines_and_serves_metrics(
        db_url: str, tmp_path: Path) -> None:
    async with start_processes("product", 1, db_url, tmp_path,
                               SECKILL_METRICS_ADDR="127.0.0.1:0") as extra:
        products, log_path = extra.products[0], extra[0].log_path
        await products.CreateProduct(product_pb2.CreateProductRequest(
            product=product_pb2.Product(name="Logged", stock=1)), metadata=ADMIN)
        with pytest.raises(grpc.aio.AioRpcError):
            await products.GetProduct(product_pb2.GetProductRequest(id=10**9))
    records = [json.loads(line) for line in log_path.read_text().splitlines()]
    assert all(r["service"] == "product" and "time" in r and "level" in r for r in records)
    messages = [r["message"] for r in records]
    assert "listening" in messages and "metrics" in messages and "stopped" in messages
    rpcs = [r for r in records if r["message"] == "rpc"]
    assert [(r["method"].rsplit("/", 1)[1], r["code"]) for r in rpcs] == [
        ("CreateProduct", "OK"), ("GetProduct", "NOT_FOUND")]
    assert all(r["peer"].startswith("ipv4:127.0.0.1:") and r["latency_ms"] > 0 for r in rpcs)


class Collector:
    """A minimal OTLP/gRPC trace receiver: keeps every span it is sent."""

    def __init__(self) -> None:
        self.spans: list[tuple[str, str]] = []  # (service.name, span name)
        self.received = asyncio.Event()

    async def Export(self, request, context):
        from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

        for resource_spans in request.resource_spans:
            names = [a.value.string_value for a in resource_spans.resource.attributes
                     if a.key == "service.name"]
            for scope in resource_spans.scope_spans:
                self.spans += [(names[0] if names else "", s.name) for s in scope.spans]
        self.received.set()
        return trace_service_pb2.ExportTraceServiceResponse()


@pytest.mark.slow
async def test_a_process_exports_its_spans_by_otlp(db_url: str, tmp_path: Path) -> None:
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc

    collector = Collector()
    server = grpc.aio.server()
    handler = trace_service_pb2_grpc.TraceServiceServicer()
    handler.Export = collector.Export  # type: ignore[method-assign]
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(handler, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with start_processes("product", 1, db_url, tmp_path,
                                   OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{port}"
                                   ) as extra:
            await extra.products[0].ListProducts(product_pb2.ListProductsRequest())
            assert await extra.stop(0) == 0  # shutdown flushes the spans
        async with asyncio.timeout(30):
            await collector.received.wait()
    finally:
        await server.stop(0)
    assert ("seckill-product", "/seckill.v1.ProductService/ListProducts") in collector.spans
    assert ("seckill-product", "db.transaction") in collector.spans
