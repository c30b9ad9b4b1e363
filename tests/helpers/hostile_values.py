"""Hostile values for the bad-input tests, as hypothesis strategies: texts (empty, blank, NUL,
10 kB, emoji, SQL fragments), ids and amounts at every integer edge, timestamps from year 1 to
9999 and past them, update masks valid and not."""

from __future__ import annotations

import time

from google.protobuf import field_mask_pb2, timestamp_pb2
from google.protobuf.message import Message
from hypothesis import strategies as st

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1

SQL_INJECTIONS = [
    "'; DROP TABLE orders; --",
    "'; DROP TABLE products; DROP TABLE activities; --",
    "' OR '1'='1",
    "\" OR \"\"=\"",
    "1; DELETE FROM products",
    "') ; TRUNCATE activities; --",
    "' UNION SELECT id, user_id FROM orders --",
    "x' AND SLEEP(5) --",
    "\\'; UPDATE products SET stock = 0; --",
    "%s", "%(name)s", "%%", "%", "\\", "\\\\", "`orders`", "/*", "*/", "?", ":1",
]
NASTY_TEXT = [
    "", " ", "\t\n\r ", "\u3000", "\x00", "a\x00b", "\x00" * 64, "\x7f", "\x1b[31mred",
    "NULL", "null", "None", "0", "-1",
    "\U0001f600", "\U0001f525" * 64, "\U0001f525" * 65,
    "\U0001f469\u200d\U0001f469\u200d\U0001f467", "\u202eevil", "\ufeff", "\u200b",
    "e\u0301" * 100, "\U0001d54f" * 200, "\U0001d54f" * 201,
    "x" * 64, "x" * 65, "x" * 200, "x" * 201, " " * 200 + "x",
    "x" * 10_000, "x" * 10_001, "\u00e9" * 10_240, "\U0010ffff", "\ue000", "\ud7ff",
    "${jndi:ldap://x/a}", "<script>alert(1)</script>", "../../etc/passwd", "a\nb", "a ",
    *SQL_INJECTIONS,
]
# No lone surrogates: proto3 strings are UTF-8, and Python's protobuf refuses them on set.
# (Invalid UTF-8 on the wire is sent by hand in test_malformed_wire.py.)
any_char = st.characters(exclude_categories=["Cs"])
texts = st.one_of(
    st.sampled_from(NASTY_TEXT),
    st.text(any_char, max_size=80),
    st.text(any_char, min_size=190, max_size=210),
    # Big strings built by repetition: cheap to generate at 10 kB.
    st.builds(lambda unit, n: unit * n,
              st.sampled_from(["x", "\u00e9", "\U0001f600", "\x00", "'", " ", "ab"]),
              st.sampled_from([199, 200, 201, 9_999, 10_000, 10_001, 10_240])),
)
# Values the contract accepts, so examples also get past validation to the database.
plausible_text = st.text(st.characters(exclude_categories=["Cs", "C", "Z"]), min_size=1,
                         max_size=66)
names = st.one_of(texts, plausible_text)
user_ids = st.one_of(texts, plausible_text)
ids = st.one_of(
    st.sampled_from([0, -1, 1, 2, 3, INT64_MIN, INT64_MIN + 1, INT64_MAX, INT64_MAX - 1,
                     INT32_MAX, INT32_MAX + 1, 2**32, 2**53 + 1, 10**12, 10**12 + 1, -(10**12)]),
    st.integers(-3, 40),  # small: the ids of this module's fresh database
    st.integers(INT64_MIN, INT64_MAX),
)
# Ids that often name a seeded row (products 1-2, activities 1-4, order 1: see the fixture).
known_ids = st.one_of(ids, st.integers(1, 5))
amounts = st.one_of(  # price_cents and stock: 0..10^12 is the documented range
    st.sampled_from([0, 1, -1, 10**12, 10**12 + 1, INT64_MIN, INT64_MAX]),
    st.integers(-5, 1000),
    st.integers(0, 10**12),
    st.integers(INT64_MIN, INT64_MAX),
)
int32s = st.one_of(
    st.sampled_from([0, -1, 1, 49, 50, 51, 999, 1000, 1001, INT32_MIN, INT32_MAX]),
    st.integers(INT32_MIN, INT32_MAX),
)
YEAR_1 = -62_135_596_800  # 0001-01-01T00:00:00Z, the smallest valid Timestamp
YEAR_9999_END = 253_402_300_799  # 9999-12-31T23:59:59Z, the largest
NOW = int(time.time())


def _ts(seconds: int, nanos: int) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=seconds, nanos=nanos)


timestamps = st.one_of(
    st.none(),  # unset
    st.builds(_ts,
              st.sampled_from([0, -1, 1, YEAR_1, YEAR_1 - 1, YEAR_9999_END, YEAR_9999_END + 1,
                               INT64_MIN, INT64_MAX, NOW, NOW + 3600, NOW - 3600]),
              st.sampled_from([0, 1, 999, 999_999_999, 1_000_000_000, -1, INT32_MIN,
                               INT32_MAX])),
    st.builds(_ts, st.integers(INT64_MIN, INT64_MAX), st.integers(INT32_MIN, INT32_MAX)),
    st.builds(_ts, st.integers(YEAR_1, YEAR_9999_END), st.integers(0, 999_999_999)),
    st.builds(_ts, st.integers(NOW - 10**6, NOW + 10**6), st.integers(0, 999_999_999)),
)
MASK_PATHS = [
    "name", "description", "price_cents", "stock", "start_time", "end_time",  # valid somewhere
    "product_id", "id", "create_time", "update_time", "product",  # immutable or output only
    "*", "", " ", "name.first", "product.name", "activity.name", "start_time.seconds",
    "NAME", " name", "name ", "name\x00", "stock,name", "paths", "update_mask", "..",
    "x" * 10_000,
]


def masks(updatable: tuple[str, ...]) -> st.SearchStrategy[field_mask_pb2.FieldMask | None]:
    """Unset, empty, valid (duplicates included), and hostile update masks."""
    return st.one_of(
        st.none(),
        st.lists(st.sampled_from([*updatable, "*"]), max_size=4),
        st.lists(st.one_of(st.sampled_from(MASK_PATHS), st.text(any_char, max_size=20)),
                 max_size=6),
    ).map(lambda paths: None if paths is None else field_mask_pb2.FieldMask(paths=paths))


def set_time(message: Message, name: str, value: timestamp_pb2.Timestamp | None) -> None:
    if value is not None:
        getattr(message, name).CopyFrom(value)
