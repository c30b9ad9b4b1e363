"""Rules of the activity's own fields: how long a buyer has to pay (Activity.payment_window)."""

from __future__ import annotations

from google.protobuf import duration_pb2

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
