"""Tracing (OpenTelemetry), off unless configured.

Tracing is on when a process has an SDK tracer provider: `configure_tracing` installs one that
exports by OTLP when OTEL_EXPORTER_OTLP_ENDPOINT is set (the standard OTEL_* variables apply:
OTEL_SERVICE_NAME, OTEL_EXPORTER_OTLP_HEADERS, ...); tests install one with an in-memory
exporter. Off, no interceptor is added and no span object is made: zero cost.

Every part of seckill_common traces (the server's interceptors, the peers' channels, the
database's transactions), so this module sits beside config.py, below them all.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import grpc
from opentelemetry import context as otel_context
from opentelemetry import trace

from seckill_common.config import TracingSettings

TRACER_NAME = "seckill"
# At most this many callers of one batch are linked from its span.
MAX_BATCH_LINKS = 64
# The SDK provider of this process, when tracing is on.
_provider: Any = None


def configure_tracing(service: str, settings: TracingSettings | None = None) -> bool:
    """Installs the OTLP exporter when OTEL_EXPORTER_OTLP_ENDPOINT is set (in `settings`,
    default: the environment's); says whether it did."""
    settings = TracingSettings.from_env() if settings is None else settings
    if not settings.endpoint:
        return False
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    name = settings.service_name or f"seckill-{service}"
    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: name}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=settings.endpoint)))
    trace.set_tracer_provider(provider)
    use_tracer_provider(provider)
    return True


def use_tracer_provider(provider: Any) -> None:
    """Turns tracing on with `provider` (None: off) for services started from now on."""
    global _provider
    _provider = provider


def tracing_on() -> bool:
    return _provider is not None


def flush_traces() -> None:
    if _provider is not None:
        _provider.force_flush()


def server_interceptors() -> list[grpc.aio.ServerInterceptor]:
    if _provider is None:
        return []
    from opentelemetry.instrumentation.grpc import aio_server_interceptor, filters

    # Only our unary methods: the instrumentation breaks streaming handlers that write to the
    # context instead of yielding (health Watch), and probes and reflection are noise anyway.
    ours = filters.service_prefix("seckill.")
    return [aio_server_interceptor(tracer_provider=_provider, filter_=ours)]


def client_interceptors() -> list[grpc.aio.ClientInterceptor]:
    if _provider is None:
        return []
    from opentelemetry.instrumentation.grpc import aio_client_interceptors

    return list(aio_client_interceptors(tracer_provider=_provider))


def tracer() -> trace.Tracer | None:
    """The tracer for spans of our own, or None when tracing is off. Components take it when
    they are made, so a service keeps the tracing it started with."""
    return None if _provider is None else trace.get_tracer(TRACER_NAME,
                                                           tracer_provider=_provider)


def current_trace_id() -> str | None:
    span_context = trace.get_current_span().get_span_context()
    return format(span_context.trace_id, "032x") if span_context.is_valid else None


@contextlib.contextmanager
def batch_span(tracer: trace.Tracer | None, product_id: int,
               callers: Sequence[otel_context.Context | None]) -> Iterator[None]:
    """A span for one coalesced transaction, child of its first caller's span and linked to
    the others' (each caller's trace shows the batch that decided it)."""
    if tracer is None or not callers or callers[0] is None:
        yield
        return
    links = [trace.Link(trace.get_current_span(c).get_span_context())
             for c in callers[1:MAX_BATCH_LINKS + 1] if c is not None]
    with tracer.start_as_current_span(
            "seckill.batch", context=callers[0], links=links, kind=trace.SpanKind.INTERNAL,
            attributes={"seckill.batch_size": len(callers), "seckill.product_id": product_id}):
        yield
