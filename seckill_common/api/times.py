"""Protobuf Timestamps and the naive-UTC DATETIME(6) values the database stores."""

from __future__ import annotations

from datetime import UTC, datetime

from google.protobuf import timestamp_pb2

# DATETIME holds years 1000..9999; we accept the Unix era up to the end of 9999.
MIN_TIME = datetime(1970, 1, 1, tzinfo=UTC)
MAX_TIME = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)


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
