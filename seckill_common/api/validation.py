"""Request checks shared by the servicers: ids, text, bounds, times, pages and update masks.

Checks collect every field violation of a request, so one INVALID_ARGUMENT names them all.
"""

from __future__ import annotations

from collections.abc import Iterable

from google.protobuf import duration_pb2, field_mask_pb2, timestamp_pb2
from google.protobuf.message import Message

from seckill_common.api.errors import InvalidArgument
from seckill_common.api.times import MAX_TIME, MIN_TIME, to_datetime

MAX_MONEY_OR_STOCK = 10**12
MAX_NAME_CHARS = 200
MAX_DESCRIPTION_CHARS = 10_000
MAX_USER_ID_CHARS = 64
# The most units an activity may let one user hold, so the most a Seckill may ask for (the
# schema's CHECKs on activities.per_user_limit and orders.quantity say the same).
MAX_PER_USER_LIMIT = 1000
MAX_ID = 2**63 - 1  # ids are BIGINT


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

    def duration_ms(self, field: str, value: duration_pb2.Duration, lo: int, hi: int,
                    bounds: str) -> None:
        """A duration of whole milliseconds within lo..hi (`bounds` says them to a person)."""
        if not lo <= whole_ms(value) <= hi:
            self.add(field, f"must be {bounds}, in whole milliseconds")

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


def whole_ms(value: duration_pb2.Duration) -> int:
    """The duration in milliseconds; -1 when negative, malformed or not whole milliseconds."""
    if value.seconds < 0 or not 0 <= value.nanos < 1_000_000_000 or value.nanos % 1_000_000:
        return -1
    return value.seconds * 1000 + value.nanos // 1_000_000





def require_id(value: int, field: str = "id") -> int:
    """The id of a Get/Delete request, or INVALID_ARGUMENT."""
    violations = Violations()
    violations.positive_id(field, value)
    violations.check()
    return value


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
