"""The CLI's side of a call: channels, credentials, deadlines, and errors told in plain words.

Every RPC error becomes a `CliError` whose message says what went wrong in the terms of the
command (the product, the user, the service's address) and what to do about it, read from the
`google.rpc` details the services attach (BadRequest, ResourceInfo, ErrorInfo, RetryInfo).
"""

from __future__ import annotations

import asyncio
import enum
import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc
from google.protobuf import duration_pb2, json_format
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status
from seckill.v1 import activity_pb2_grpc, order_pb2_grpc, product_pb2_grpc

from seckill_common.api.errors import Reason
from seckill_common.client.retry import (
    MIN_RETRY_S,
    AdaptiveThrottle,
    ThrottledLocally,
    backoff_s,
    retry_delay_s,
)
from seckill_common.client.tls import ClientTLS


class Exit(enum.IntEnum):
    """The CLI's exit codes (listed in `seckill --help` and docs/CLI.md)."""

    OK = 0
    REFUSED = 1  # the service answered with an error: not found, invalid, sold out, ...
    USAGE = 2  # bad flags or values, or a setting missing (as argparse's own errors)
    UNREACHABLE = 3  # a service could not be reached, did not answer in time, or is not SERVING
    INVARIANT_FAILED = 4  # `sale simulate`: an invariant check FAILED


SERVICES = ("product", "activity", "order")
STUBS = {
    "product": product_pb2_grpc.ProductServiceStub,
    "activity": activity_pb2_grpc.ActivityServiceStub,
    "order": order_pb2_grpc.OrderServiceStub,
}
# Codes after which the call may never have reached the service's code: try again later.
UNREACHABLE_CODES = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}
ADMIN_HINT = ("set SECKILL_ADMIN_TOKEN to the services' admin token "
              "(after `make up`: `. .run/stack.env`)")
_Detail = TypeVar("_Detail", bound=Message)
USER_HINT = ("these services require user tokens: pass --user-token or set SECKILL_USER_TOKEN "
             "(`seckill token USER` prints one), or set SECKILL_ADMIN_TOKEN")


class CliError(Exception):
    """A command failed: `message` for people, `exit_code` and `document` for scripts."""

    def __init__(self, message: str, exit_code: Exit, document: Mapping[str, Any] | None = None):
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code
        self.document = dict(document or {"code": exit_code.name})


def usage_error(message: str) -> CliError:
    return CliError(message, Exit.USAGE, {"code": "USAGE"})


class Auth(enum.Enum):
    """Which credential a method takes (the proto comments say which RPC is which)."""

    NONE = "none"
    ADMIN = "admin"  # SECKILL_ADMIN_TOKEN
    USER = "user"  # a user token when the services require one, else the admin token if set


@dataclass(frozen=True)
class About:
    """What a call is about, so an error can name it: "user u already holds order 17"."""

    user: str = ""
    activity_id: int = 0


def rich_status(exc: grpc.aio.AioRpcError) -> status_pb2.Status | None:
    try:
        status: status_pb2.Status | None = rpc_status.from_call(exc)
    except ValueError:  # details that disagree with the status: use the status alone
        return None
    return status


def resumable_after_s(exc: grpc.aio.AioRpcError) -> float | None:
    """How long to wait before calling a stream again: the RetryInfo delay of an UNAVAILABLE
    (a stream's lifetime, a server shutting down); None for an end not to resume."""
    return retry_delay_s(exc) if exc.code() == grpc.StatusCode.UNAVAILABLE else None


def detail(status: status_pb2.Status | None, kind: type[_Detail]) -> _Detail | None:
    """The first detail of type `kind` in the status, or None."""
    for packed in status.details if status else ():
        message = kind()
        if packed.Unpack(message):  # False for a detail of another type
            return message
    return None


def seconds(duration: duration_pb2.Duration) -> str:
    return f"{duration.seconds + duration.nanos / 1e9:g}s"


def _precondition(info: error_details_pb2.ErrorInfo | None, message: str) -> str:
    reason = info.reason if info else ""
    activity = info.metadata.get("activity_id", "") if info else ""
    match Reason.of(reason):
        case Reason.SOLD_OUT:
            return f"activity {activity} is sold out"
        case Reason.NOT_STARTED:
            return f"activity {activity} has not started yet (`seckill activity get {activity}`)"
        case Reason.ENDED:
            return f"activity {activity} has ended"
        case Reason.ACTIVITY_HAS_ORDERS:
            return (f"activity {activity} has pending or paid orders: cancel them first "
                    f"(`seckill orders --activity {activity}`)")
        case Reason.PRODUCT_IN_USE:
            return f"{message}: delete its activities first"
    return f"refused ({reason}): {message}" if reason else f"refused: {message}"


def _exhausted(status: status_pb2.Status | None, retry: error_details_pb2.RetryInfo,
               message: str, who: str) -> str:
    """RESOURCE_EXHAUSTED with RetryInfo: an overloaded process, or a rate limit."""
    info = detail(status, error_details_pb2.ErrorInfo)
    if info is not None and Reason.of(info.reason) is Reason.OVERLOADED:
        return f"{who} is overloaded: nothing was done; retry in {seconds(retry.retry_delay)}"
    return f"rate limited: {message}; retry in {seconds(retry.retry_delay)}"


def explain(exc: grpc.aio.AioRpcError, service: str, addr: str, *, auth: Auth,
            about: About = About(), timeout_s: float = 0) -> CliError:
    """The error a failed call becomes: a sentence for people, the status for scripts."""
    code = exc.code()
    message = exc.details() or ""
    status = rich_status(exc)
    retry = detail(status, error_details_pb2.RetryInfo)
    match code:
        case grpc.StatusCode.NOT_FOUND:
            resource = detail(status, error_details_pb2.ResourceInfo)
            if resource and "/" in resource.resource_name:
                kind = resource.resource_type.rsplit(".", 1)[-1].lower()
                text = f"{kind} {resource.resource_name.rsplit('/', 1)[1]} not found"
            else:
                text = message or "not found"
        case grpc.StatusCode.INVALID_ARGUMENT:
            bad = detail(status, error_details_pb2.BadRequest)
            lines = [f"  - {v.field}: {v.description}" for v in bad.field_violations] if bad \
                else [f"  - {message}"]
            text = "invalid request:\n" + "\n".join(lines)
        case grpc.StatusCode.ALREADY_EXISTS:
            info = detail(status, error_details_pb2.ErrorInfo)
            order = info.metadata.get("order_id") if info else None
            who = f"user {about.user}" if about.user else "this user"
            where = f"activity {about.activity_id}" if about.activity_id else "this activity"
            text = f"{who} already holds order {order} for {where}" if order else message
        case grpc.StatusCode.FAILED_PRECONDITION:
            text = _precondition(detail(status, error_details_pb2.ErrorInfo), message)
        case grpc.StatusCode.UNAUTHENTICATED | grpc.StatusCode.PERMISSION_DENIED:
            text = f"{message}: {USER_HINT if auth is Auth.USER else ADMIN_HINT}"
        case grpc.StatusCode.UNAVAILABLE if retry is not None:
            # The service answered: it is up, but its database or a peer is not.
            text = (f"the {service} service at {addr} is unavailable: {message} "
                    f"(retry in {seconds(retry.retry_delay)}; `seckill status` shows what is down)")
        case grpc.StatusCode.UNAVAILABLE:
            text = f"cannot reach the {service} service at {addr} (is it running? `make up`)"
        case grpc.StatusCode.DEADLINE_EXCEEDED:
            text = (f"the {service} service at {addr} did not answer within {timeout_s:g}s "
                    f"(--timeout)")
        case grpc.StatusCode.RESOURCE_EXHAUSTED if retry is not None:
            text = _exhausted(status, retry, message, f"the {service} service at {addr}")
        case grpc.StatusCode.ABORTED:
            text = f"{message} (a lock was held too long; trying again may work)"
        case _:
            text = f"the {service} service answered {code.name}: {message}"
    document: dict[str, Any] = {"code": code.name, "message": text}
    if status is not None:
        document["details"] = json_format.MessageToDict(
            status, preserving_proto_field_name=True).get("details", [])
    exit_code = Exit.UNREACHABLE if code in UNREACHABLE_CODES else Exit.REFUSED
    return CliError(text, exit_code, document)


@dataclass
class Session:
    """Channels to the three services, opened on first use, with the caller's credentials."""

    addrs: Mapping[str, str]
    timeout_s: float
    admin_token: str = ""
    user_token: str = ""
    tls: ClientTLS = field(default_factory=ClientTLS)
    # Overload: tries after a RetryInfo refusal, and the client-side throttle.
    retries: int = 8
    throttle: AdaptiveThrottle = field(default_factory=AdaptiveThrottle)
    _channels: dict[str, grpc.aio.Channel] = field(default_factory=dict)

    def channel(self, service: str) -> grpc.aio.Channel:
        if service not in self._channels:
            self._channels[service] = self.tls.channel(self.addrs[service])
        return self._channels[service]

    def stub(self, service: str) -> Any:
        return STUBS[service](self.channel(service))

    def metadata(self, auth: Auth) -> tuple[tuple[str, str], ...]:
        token = {Auth.NONE: "", Auth.ADMIN: self.admin_token,
                 Auth.USER: self.user_token or self.admin_token}[auth]
        return (("authorization", f"Bearer {token}"),) if token else ()

    async def call(self, service: str, method: str, request: Message, *, auth: Auth = Auth.NONE,
                   about: About = About(), stub: Callable[[grpc.aio.Channel], Any] | None = None
                   ) -> Any:
        """Calls `service`.`method` (through `stub` on its channel: another gRPC service of the
        same process); a failure raises CliError with the explanation.

        An overloaded service's refusal (RESOURCE_EXHAUSTED with RetryInfo) is tried again
        after its delay, jittered, while the waits fit in --timeout; past them, and while the
        service refuses most calls (adaptive throttling), the refusal is the answer."""
        called = stub(self.channel(service)) if stub else self.stub(service)
        waited, delay = 0.0, 0.0
        for attempt in itertools.count():
            try:
                self.throttle.admit()
            except ThrottledLocally as exc:
                wait = backoff_s(max(delay, MIN_RETRY_S), attempt)
                if attempt >= self.retries or waited + wait >= self.timeout_s:
                    raise CliError(f"the {service} service at {self.addrs[service]} is "
                                   f"refusing most calls; {exc}; try again later",
                                   Exit.REFUSED, {"code": "RESOURCE_EXHAUSTED",
                                                  "message": str(exc)}) from None
                waited += wait
                await asyncio.sleep(wait)
                continue
            try:
                reply = await getattr(called, method)(
                    request, metadata=self.metadata(auth), timeout=self.timeout_s)
            except grpc.aio.AioRpcError as exc:
                self.throttle.answered(exc.code())
                retry_s = retry_delay_s(exc)
                if retry_s is not None and exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                    delay = retry_s
                    wait = backoff_s(delay, attempt)
                    if attempt < self.retries and waited + wait < self.timeout_s:
                        waited += wait
                        await asyncio.sleep(wait)
                        continue
                raise explain(exc, service, self.addrs[service], auth=auth, about=about,
                              timeout_s=self.timeout_s) from None
            self.throttle.answered(grpc.StatusCode.OK)
            return reply
        raise AssertionError("unreachable")

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()
