"""Shared by the bad-input tests: a caller that checks every answer against the protos'
documented errors, a property runner and its tally, and hostile-value strategies.

Every call goes through `Prober.call`, which asserts:
- the code is OK or one the proto comment of that RPC (or of its service) documents, and never
  UNKNOWN or INTERNAL;
- a refusal carries its google.rpc detail (INVALID_ARGUMENT: BadRequest, NOT_FOUND:
  ResourceInfo, FAILED_PRECONDITION / ALREADY_EXISTS: ErrorInfo) and no traceback;
- a refused call, and any read, left the tables as they were (CHECKSUM TABLE after the call
  against the one taken after the previous call: the prober's database has no other writer).
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import aiomysql
import grpc
from google.protobuf import message_factory
from google.protobuf.message import DecodeError, Message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from seckill.v1 import activity_pb2, order_pb2, product_pb2

from tests.helpers.rpc import error_details
from tests.helpers.stack import ADMIN, REPO, Stack, create_database, start_stack

CALL_TIMEOUT_S = 30.0
SERVICES = [
    product_pb2.DESCRIPTOR.services_by_name["ProductService"],
    activity_pb2.DESCRIPTOR.services_by_name["ActivityService"],
    order_pb2.DESCRIPTOR.services_by_name["OrderService"],
]
SHORT = {"ProductService": "product", "ActivityService": "activity", "OrderService": "order"}
# Calls that never write: the tables must be unchanged whatever they answer.
READS = frozenset({"GetProduct", "ListProducts", "GetActivity", "ListActivities", "GetOrder",
                   "ListOrders"})
# Documented for every RPC of a service, but impossible in this setup: we send the admin token,
# the database and peers are up, rate limits are off, requests stay under the size cap (the
# oversize tests expect RESOURCE_EXHAUSTED on their own), and nothing else holds a lock.
# Seeing one is a failure.
NOT_IN_THIS_SETUP = frozenset({"UNAUTHENTICATED", "PERMISSION_DENIED", "UNAVAILABLE",
                               "RESOURCE_EXHAUSTED", "ABORTED"})
NEVER = frozenset({"UNKNOWN", "INTERNAL"})
DETAIL_OF = {
    "INVALID_ARGUMENT": "BadRequest",
    "NOT_FOUND": "ResourceInfo",
    "FAILED_PRECONDITION": "ErrorInfo",
    "ALREADY_EXISTS": "ErrorInfo",
}

# SECKILL_FUZZ_SCALE multiplies every test's examples (0.1 for a quick look, 10 for a soak).
SCALE = float(os.environ.get("SECKILL_FUZZ_SCALE", "1"))


def examples(n: int) -> settings:
    """Repeatable in CI: derandomized (a fixed seed per test), no example database to replay
    from, no per-example deadline on a busy 2-core machine. A test's fresh stack (a function
    fixture) serves all its examples."""
    return settings(
        max_examples=max(1, int(n * SCALE)), deadline=None, derandomize=True, database=None,
        print_blob=True,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                               HealthCheck.data_too_large, HealthCheck.large_base_example],
    )


def method_path(service: str, rpc: str) -> str:
    return f"/seckill.v1.{service}/{rpc}"


def all_methods() -> list[str]:
    return [method_path(s.name, m.name) for s in SERVICES for m in s.methods]


@dataclass(frozen=True)
class Documented:
    """The status codes the protos document for one RPC."""

    rpc: frozenset[str]  # named in the comment above the rpc
    service: frozenset[str]  # named in the comment above its service (every RPC's)

    def for_request(self) -> frozenset[str]:
        """For a request that parses. The service comment's INVALID_ARGUMENT is for bytes that
        are not the request message: a parsed request's must be in the rpc's own comment."""
        return frozenset({"OK", *self.rpc, *(self.service - {"INVALID_ARGUMENT"})})


def documented_codes() -> dict[str, Documented]:
    """Per method path, the codes protos/seckill/v1/*.proto name above the rpc and above its
    service: the contract the answers are checked against."""
    names = {code.name for code in grpc.StatusCode}
    table: dict[str, Documented] = {}
    for proto in sorted((REPO / "protos" / "seckill" / "v1").glob("*.proto")):
        text = proto.read_text()
        for service in re.finditer(r"((?:^//[^\n]*\n)*)^service (\w+) \{(.*?)^\}", text,
                                   re.M | re.S):
            comment, name, body = service.groups()
            common = frozenset(set(re.findall(r"\b[A-Z_]+\b", comment)) & names)
            for rpc in re.finditer(r"((?:^[ \t]*//[^\n]*\n)+)^[ \t]*rpc (\w+)\(", body, re.M):
                codes = frozenset(set(re.findall(r"\b[A-Z_]+\b", rpc.group(1))) & names)
                table[method_path(name, rpc.group(2))] = Documented(codes, common)
    return table


@dataclass
class Outcome:
    code: str
    response: Any  # the RPC's response message, looked up by its path
    error: grpc.aio.AioRpcError | None


def first_message(stream: grpc.aio.UnaryStreamMultiCallable) -> Any:
    """A server stream called like a unary RPC: its first message (the stream is then
    cancelled), or the status it ended with first."""
    async def call(request: Any, **kwargs: Any) -> Any:
        response = stream(request, **kwargs)
        try:
            message = await response.read()
        finally:
            response.cancel()
        assert message is not grpc.aio.EOF, "the stream ended OK without a message"
        return message

    return call


@dataclass
class Prober:
    """Calls any RPC of the stack with the admin token and checks the answer (see module doc)."""

    stack: Stack
    conn: aiomysql.Connection
    max_message_bytes: int
    documented: dict[str, Documented]
    last: tuple = ()
    seen: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    _calls: dict[str, tuple] = field(default_factory=dict)

    def __post_init__(self) -> None:
        channels = dict(zip(("product", "activity", "order"), self.stack.channels, strict=True))
        for service in SERVICES:
            channel = channels[SHORT[service.name]]
            for method in service.methods:
                path = method_path(service.name, method.name)
                request_cls = message_factory.GetMessageClass(method.input_type)
                response_cls = message_factory.GetMessageClass(method.output_type)
                if method.server_streaming:  # WatchActivity: its first message is the answer
                    typed = first_message(channel.unary_stream(
                        path, request_serializer=request_cls.SerializeToString,
                        response_deserializer=response_cls.FromString))
                    raw = first_message(channel.unary_stream(path))
                else:
                    typed = channel.unary_unary(
                        path, request_serializer=request_cls.SerializeToString,
                        response_deserializer=response_cls.FromString)
                    raw = channel.unary_unary(path)  # bytes in, bytes out
                self._calls[path] = (request_cls, response_cls, typed, raw)

    def request_class(self, path: str) -> type[Message]:
        return self._calls[path][0]

    async def snapshot(self) -> tuple:
        async with self.conn.cursor() as cur:
            await cur.execute("CHECKSUM TABLE products, activities, orders")
            rows = tuple(await cur.fetchall())
        # A dropped table still gets a row, with a NULL checksum.
        assert len(rows) == 3 and all(r[1] is not None for r in rows), rows
        return rows

    async def resync(self) -> None:
        """After the test itself wrote (clean-up), the current state is the new reference."""
        self.last = await self.snapshot()

    async def call(self, path: str, request: Message | bytes) -> Outcome:
        """Calls `path` with a message, or with raw bytes sent as they are."""
        request_cls, response_cls, typed, raw = self._calls[path]
        size = len(request) if isinstance(request, bytes) else request.ByteSize()
        parsed = not isinstance(request, bytes) or parses(request_cls, request)
        try:
            if isinstance(request, bytes):
                body = await raw(request, metadata=ADMIN, timeout=CALL_TIMEOUT_S)
                response: Message = response_cls.FromString(body)
            else:
                response = await typed(request, metadata=ADMIN, timeout=CALL_TIMEOUT_S)
            outcome = Outcome("OK", response, None)
        except grpc.aio.AioRpcError as error:
            outcome = Outcome(error.code().name, None, error)
        after = await self.snapshot()
        rpc = path.rsplit("/", 1)[1]
        if outcome.code != "OK" or rpc in READS:
            assert after == self.last, (
                f"{path} answered {outcome.code} but changed the tables:\n"
                f"before {self.last}\nafter  {after}\nrequest {request!r:.300}")
        self.last = after
        self.seen[path][outcome.code] += 1
        self._check_answer(path, outcome, size, parsed, request)
        return outcome

    def _check_answer(self, path: str, outcome: Outcome, size: int, parsed: bool,
                      request: Message | bytes) -> None:
        shown = f"{path} {request!r:.300}"
        code = outcome.code
        assert code not in NEVER, f"{shown} -> {code}: {outcome.error and outcome.error.details()}"
        documented = self.documented[path]
        if size > self.max_message_bytes:
            assert "RESOURCE_EXHAUSTED" in documented.service, f"{path}: undocumented size cap"
            assert code == "RESOURCE_EXHAUSTED", f"{shown}: {size} bytes answered {code}"
            return
        if not parsed:
            assert "INVALID_ARGUMENT" in documented.service, f"{path}: undocumented"
            allowed = frozenset({"INVALID_ARGUMENT"})
        else:
            allowed = documented.for_request() - NOT_IN_THIS_SETUP
        assert code in allowed, (
            f"{shown} -> {code} ({outcome.error and outcome.error.details()}), "
            f"not among the documented {sorted(allowed)}")
        if outcome.error is None:
            return
        message = outcome.error.details() or ""
        assert message and "Traceback" not in message and 'File "' not in message, message
        details = error_details(outcome.error)
        wanted = DETAIL_OF.get(code)
        if wanted is None:
            return
        assert wanted in details, f"{shown} -> {code} without {wanted}: {message}"
        detail = details[wanted]
        if wanted == "BadRequest":
            assert detail.field_violations, message
            assert all(v.field and v.description
                       for v in detail.field_violations), detail
        elif wanted == "ResourceInfo":
            assert detail.resource_type.startswith("seckill.v1."), detail
            assert detail.resource_name, detail
        else:
            assert detail.reason and detail.domain == "seckill.v1", detail

    def bad_fields(self, outcome: Outcome) -> set[str]:
        assert outcome.error is not None
        return {v.field for v in error_details(outcome.error)["BadRequest"].field_violations}

    def table(self) -> str:
        return codes_table(self.seen)


def codes_table(seen: dict[str, Counter[str]]) -> str:
    """Codes answered per RPC: the numbers behind the RELIABILITY.md table."""
    lines = []
    for path in all_methods():
        counts = seen.get(path, Counter())
        lines.append(f"{path}: {sum(counts.values())} "
                     + ", ".join(f"{c}={n}" for c, n in sorted(counts.items())))
    return "\n".join(lines)


@dataclass(frozen=True)
class Property:
    """A property of one RPC: `body(prober, **drawn)` holds for `n` examples drawn from
    `strategies`."""

    name: str
    body: Callable[..., Coroutine[Any, Any, object]]
    n: int
    strategies: dict[str, st.SearchStrategy[Any]]

    async def check(self, prober: Prober) -> int:
        """Runs the examples against `prober`'s stack; returns how many ran.

        Hypothesis drives a synchronous test: it runs in a worker thread and hands each example
        to this event loop, where the stack lives."""
        loop = asyncio.get_running_loop()
        count = 0

        def example(**drawn: Any) -> None:
            nonlocal count
            count += 1
            asyncio.run_coroutine_threadsafe(self.body(prober, **drawn), loop).result()

        # derandomize seeds each property from its test function, here named after it.
        example.__name__ = example.__qualname__ = self.name
        await asyncio.to_thread(examples(self.n)(given(**self.strategies)(example)))
        return count


@dataclass
class Tally:
    """What the property tests of a module ran, for its totals: the examples per property and
    the codes each RPC answered, over each property's own prober."""

    ran: Counter[str] = field(default_factory=Counter)
    seen: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))

    async def check(self, prop: Property, prober: Prober) -> None:
        self.ran[prop.name] += await prop.check(prober)
        self.add(prober)

    def add(self, prober: Prober) -> None:
        """Counts what `prober` was answered."""
        for path, counts in prober.seen.items():
            self.seen[path].update(counts)

    def table(self) -> str:
        return codes_table(self.seen)


def parses(request_cls: type[Message], data: bytes) -> bool:
    """The oracle for raw bytes: does protobuf itself accept them as the request message?"""
    try:
        request_cls.FromString(data)
    except DecodeError:
        return False
    return True


class ServerLog(logging.Handler):
    """Collects the services' access-log codes and any error they log (in-process stack)."""

    LOGGERS = ("seckill.rpc", "seckill_common", "activity_svc", "order_svc", "product_svc")

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.codes: Counter[tuple[str, str]] = Counter()
        self.errors: list[str] = []
        self._saved: list[tuple[logging.Logger, int, bool]] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.name == "seckill.rpc" and record.getMessage() == "rpc":
            self.codes[(record.method, record.code)] += 1  # type: ignore[attr-defined]
        if record.levelno >= logging.ERROR:
            self.errors.append(f"{record.name}: {record.getMessage()}")

    def __enter__(self) -> ServerLog:
        for name in self.LOGGERS:
            logger = logging.getLogger(name)
            self._saved.append((logger, logger.level, logger.propagate))
            logger.setLevel(logging.INFO)
            logger.addHandler(self)
        # Thousands of access-log lines would flood pytest's report of a failure; errors still
        # propagate from the other loggers, and this handler keeps the codes.
        logging.getLogger("seckill.rpc").propagate = False
        return self

    def __exit__(self, *exc: object) -> None:
        for logger, level, propagate in self._saved:
            logger.removeHandler(self)
            logger.setLevel(level)
            logger.propagate = propagate

    def server_errors(self) -> list[str]:
        assert self.codes, "the access log recorded nothing: this check would be blind"
        bad = [f"{method} answered {code} x{n}" for (method, code), n in self.codes.items()
               if code in NEVER]
        return bad + self.errors


@asynccontextmanager
async def running_prober(mariadb: str, **overrides: str) -> AsyncIterator[Prober]:
    """A fresh database and stack, and a Prober on them.

    SECKILL_RATE_LIMIT_USER=0 turns the per-user rate limit off: thousands of calls in a few
    seconds would otherwise be refused RESOURCE_EXHAUSTED before reaching validation.
    """
    db_url = await create_database(mariadb)
    stack = await start_stack(db_url, SECKILL_RATE_LIMIT_USER="0", **overrides)
    base, name = db_url.rsplit("/", 1)
    host, port = base.rsplit("@", 1)[1].split(":")
    conn = await aiomysql.connect(host=host, port=int(port), user="root", db=name,
                                  autocommit=True)
    try:
        prober = Prober(stack, conn, stack.product.settings.max_message_bytes,
                        documented_codes())
        await prober.resync()
        yield prober
    finally:
        conn.close()
        await stack.stop()
