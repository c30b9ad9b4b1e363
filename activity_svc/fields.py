"""Rules of the activity's own fields: how long a buyer has to pay (Activity.payment_window),
and its waiting room (Activity.waiting_room)."""

from __future__ import annotations

from google.protobuf import duration_pb2
from seckill.v1 import activity_pb2

from seckill_common.api.validation import Violations, whole_ms

DEFAULT_PAYMENT_WINDOW_MS = 15 * 60 * 1000
MIN_PAYMENT_WINDOW_MS = 1000
MAX_PAYMENT_WINDOW_MS = 7 * 24 * 3600 * 1000


def check_payment_window(violations: Violations, field: str,
                         value: duration_pb2.Duration) -> None:
    violations.duration_ms(field, value, MIN_PAYMENT_WINDOW_MS, MAX_PAYMENT_WINDOW_MS,
                           "1 second to 7 days")


def payment_window_ms(value: duration_pb2.Duration) -> int:
    """A payment window that `check_payment_window` accepted, in milliseconds."""
    ms = whole_ms(value)
    assert MIN_PAYMENT_WINDOW_MS <= ms <= MAX_PAYMENT_WINDOW_MS, value
    return ms


# The waiting room's settings (Activity.waiting_room; docs/WAITING_ROOM.md): their defaults
# and ranges, the one statement of them.
DEFAULT_PRE_QUEUE_MS = 30 * 60 * 1000
MIN_PRE_QUEUE_MS, MAX_PRE_QUEUE_MS = 1000, 7 * 24 * 3600 * 1000
DEFAULT_PASS_VALIDITY_MS = 2 * 60 * 1000
MIN_PASS_VALIDITY_MS, MAX_PASS_VALIDITY_MS = 10 * 1000, 3600 * 1000
MAX_ADMISSION_RATE = 100_000


def check_waiting_room(violations: Violations, field: str,
                       room: activity_pb2.WaitingRoom) -> None:
    if room.HasField("pre_queue"):
        violations.duration_ms(f"{field}.pre_queue", room.pre_queue, MIN_PRE_QUEUE_MS,
                               MAX_PRE_QUEUE_MS, "1 second to 7 days")
    if room.HasField("pass_validity"):
        violations.duration_ms(f"{field}.pass_validity", room.pass_validity,
                               MIN_PASS_VALIDITY_MS, MAX_PASS_VALIDITY_MS,
                               "10 seconds to 1 hour")
    if room.HasField("admission_rate"):
        violations.bounded(f"{field}.admission_rate", room.admission_rate, 1,
                           MAX_ADMISSION_RATE)


def waiting_room_columns(room: activity_pb2.WaitingRoom) -> dict[str, object]:
    """The activity's columns for a waiting room that `check_waiting_room` accepted, unset
    fields defaulted."""
    return {
        "waiting_room": int(room.enabled),
        "pre_queue_ms": (whole_ms(room.pre_queue) if room.HasField("pre_queue")
                         else DEFAULT_PRE_QUEUE_MS),
        "pass_validity_ms": (whole_ms(room.pass_validity) if room.HasField("pass_validity")
                             else DEFAULT_PASS_VALIDITY_MS),
        "admission_rate": room.admission_rate if room.HasField("admission_rate") else None,
    }
