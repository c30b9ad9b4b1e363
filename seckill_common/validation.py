"""Request checks shared by the servicers: ids, text, bounds, times, pages and update masks.

Checks collect every field violation of a request, so one INVALID_ARGUMENT names them all.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Protocol, TypeVar

from google.protobuf import duration_pb2, field_mask_pb2, timestamp_pb2
from google.protobuf.message import Message

from seckill_common.errors import InvalidArgument


class _Row(Protocol):
    """A listed row: pages end at an id."""

    @property
    def id(self) -> int: ...


T = TypeVar("T", bound=_Row)
MAX_MONEY_OR_STOCK = 10**12
MAX_NAME_CHARS = 200
MAX_DESCRIPTION_CHARS = 10_000
MAX_USER_ID_CHARS = 64
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
# Tokens we issue are under 80 characters; a bound keeps hostile ones (deeply nested JSON) cheap.
MAX_PAGE_TOKEN_CHARS = 200
MAX_ID = 2**63 - 1  # ids are BIGINT
# DATETIME holds years 1000..9999; we accept the Unix era up to the end of 9999.
MIN_TIME = datetime(1970, 1, 1, tzinfo=UTC)
MAX_TIME = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)
# How long a buyer has to pay an order (Activity.payment_window).
DEFAULT_PAYMENT_WINDOW_MS = 15 * 60 * 1000
MIN_PAYMENT_WINDOW_MS = 1000
MAX_PAYMENT_WINDOW_MS = 7 * 24 * 3600 * 1000


# A refusal travels in the call's trailers, which clients cap (grpc: 8 KiB, then 16 KiB hard;
# past it the client sees RESOURCE_EXHAUSTED instead of our answer). So a refusal names at most
# MAX_VIOLATIONS violations and quotes at most MAX_QUOTED_CHARS of any value a client sent.
MAX_VIOLATIONS = 10
MAX_QUOTED_CHARS = 20


def quoted(value: str) -> str:
    """A client's value for an error message: repr'd (control characters visible), cut short."""
    if len(value) <= MAX_QUOTED_CHARS:
        return repr(value)
    return f"{value[:MAX_QUOTED_CHARS]!r}... ({len(value)} characters)"


class Violations:
    """Collects BadRequest field violations; `check()` raises them together."""

    def __init__(self) -> None:
        self.items: list[tuple[str, str]] = []
        self._seen: set[tuple[str, str]] = set()

    def add(self, field: str, description: str) -> None:
        if (field, description) not in self._seen:  # a mask may repeat one bad path 20,000 times
            self._seen.add((field, description))
            self.items.append((field, description))

    def check(self) -> None:
        if len(self.items) > MAX_VIOLATIONS:
            kept, rest = self.items[:MAX_VIOLATIONS - 1], self.items[MAX_VIOLATIONS - 1:]
            raise InvalidArgument([*kept, (rest[0][0], f"and {len(rest)} more violations")])
        if self.items:
            raise InvalidArgument(self.items)

    def present(self, message: Message, field: str) -> None:
        """A required message-typed field is set (raises at once: nothing else to check)."""
        if not message.HasField(field):
            self.add(field, "is required")
            self.check()

    def positive_id(self, field: str, value: int) -> None:
        if value <= 0:
            self.add(field, "must be a positive id")

    def text(self, field: str, value: str, *, max_chars: int, required: bool) -> None:
        if required and not value.strip():
            self.add(field, "is required and must not be blank")
        elif len(value) > max_chars:
            self.add(field, f"must be at most {max_chars} characters")

    def user_id(self, field: str, value: str) -> None:
        if not value:
            self.add(field, "is required")
        elif len(value) > MAX_USER_ID_CHARS:
            self.add(field, f"must be at most {MAX_USER_ID_CHARS} characters")
        elif not value.isprintable():
            self.add(field, "must contain only printable characters")

    def bounded(self, field: str, value: int, lo: int = 0, hi: int = MAX_MONEY_OR_STOCK) -> None:
        if not lo <= value <= hi:
            self.add(field, f"must be within {lo}..{hi}")

    def payment_window(self, field: str, value: duration_pb2.Duration) -> None:
        if not MIN_PAYMENT_WINDOW_MS <= _whole_ms(value) <= MAX_PAYMENT_WINDOW_MS:
            self.add(field, "must be 1 second to 7 days, in whole milliseconds")

    def time(self, field: str, value: timestamp_pb2.Timestamp, *, present: bool) -> None:
        if not present:
            self.add(field, "is required")
            return
        try:
            when = to_datetime(value)
        except (ValueError, OverflowError):
            self.add(field, "is not a valid timestamp")
            return
        if not MIN_TIME <= when <= MAX_TIME:
            self.add(field, "must be between 1970-01-01 and 9999-12-31 (UTC)")


def _whole_ms(value: duration_pb2.Duration) -> int:
    """The duration in milliseconds; -1 when negative, malformed or not whole milliseconds."""
    if value.seconds < 0 or not 0 <= value.nanos < 1_000_000_000 or value.nanos % 1_000_000:
        return -1
    return value.seconds * 1000 + value.nanos // 1_000_000


def payment_window_ms(value: duration_pb2.Duration) -> int:
    """A payment window that `Violations.payment_window` accepted, in milliseconds."""
    ms = _whole_ms(value)
    assert MIN_PAYMENT_WINDOW_MS <= ms <= MAX_PAYMENT_WINDOW_MS, value
    return ms


def to_datetime(value: timestamp_pb2.Timestamp) -> datetime:
    """A protobuf Timestamp as an aware UTC datetime (microsecond precision, as stored)."""
    if not 0 <= value.nanos < 1_000_000_000:
        raise ValueError("nanos out of range")
    return value.ToDatetime(tzinfo=UTC)


def to_timestamp(value: datetime) -> timestamp_pb2.Timestamp:
    """A naive-UTC DATETIME from the database as a protobuf Timestamp."""
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(value.replace(tzinfo=UTC) if value.tzinfo is None else value)
    return ts


def db_time(value: datetime) -> datetime:
    """An aware datetime as the naive UTC value a DATETIME(6) column stores."""
    return value.astimezone(UTC).replace(tzinfo=None)


def require_id(value: int, field: str = "id") -> int:
    """The id of a Get/Delete request, or INVALID_ARGUMENT."""
    violations = Violations()
    violations.positive_id(field, value)
    violations.check()
    return value


def page_size(value: int) -> int:
    if value < 0:
        raise InvalidArgument({"page_size": "must not be negative"})
    return min(value or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def _filters_digest(filters: Mapping[str, object]) -> str:
    canonical = json.dumps(filters, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def encode_page_token(after_id: int, filters: Mapping[str, object]) -> str:
    """An opaque keyset cursor: the last id served, bound to the filters it was made for."""
    body = json.dumps({"after": after_id, "f": _filters_digest(filters)}).encode()
    return base64.urlsafe_b64encode(body).decode().rstrip("=")


def decode_page_token(token: str, filters: Mapping[str, object]) -> int:
    """The id to continue after (0 for the first page); INVALID_ARGUMENT for a bad token."""
    if not token:
        return 0
    if len(token) > MAX_PAGE_TOKEN_CHARS:
        raise InvalidArgument({"page_token": "is not a token this server issued"})
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        body = json.loads(raw)
        after = body["after"]
        digest = body["f"]
    except (ValueError, KeyError, TypeError, binascii.Error):
        raise InvalidArgument({"page_token": "is not a token this server issued"}) from None
    # Ids are BIGINTs: a cursor past 2^63-1 was never issued, and in SQL it would overflow.
    if type(after) is not int or not 0 <= after <= MAX_ID:
        raise InvalidArgument({"page_token": "is not a token this server issued"})
    if digest != _filters_digest(filters):
        raise InvalidArgument(
            {"page_token": "does not belong to this list request (filters changed?)"}
        )
    return after


def page_of(rows: Sequence[T], limit: int, filters: Mapping[str, object]) -> tuple[
        Sequence[T], str]:
    """Splits `limit + 1` fetched rows into the page and the next page's token ("" if none)."""
    if len(rows) <= limit:
        return rows, ""
    return rows[:limit], encode_page_token(rows[limit - 1].id, filters)


def update_paths(
    mask: field_mask_pb2.FieldMask,
    resource: Message,
    *,
    updatable: Iterable[str],
    immutable: Iterable[str] = (),
    field_prefix: str,
) -> list[str]:
    """The paths an AIP-134 update applies: the mask's, or every populated updatable field.

    Unknown paths, and fields that cannot change, are INVALID_ARGUMENT.
    """
    allowed = list(updatable)
    fixed = set(immutable)
    if not mask.paths:
        populated = {field.name for field, _ in resource.ListFields()}
        return [path for path in allowed if path in populated]
    violations = Violations()
    paths: list[str] = []
    for path in mask.paths:
        if path == "*":
            paths.extend(p for p in allowed if p not in paths)
        elif path in allowed:
            if path not in paths:
                paths.append(path)
        elif path in fixed:
            violations.add("update_mask", f"{field_prefix}.{path} cannot be changed")
        else:
            violations.add("update_mask", f"unknown or read-only path {quoted(path)}")
    violations.check()
    return paths
