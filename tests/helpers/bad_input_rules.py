"""What the bad-input tests (tests/api/bad_input/) share beyond the prober
(tests/helpers/bad_input.py): the documented limits restated from the protos' comments, the
property-test wrapper, the seeded stack every test starts from, and the documented rules they
model (texts, page tokens, update masks)."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any

from google.protobuf import field_mask_pb2, timestamp_pb2
from hypothesis import given
from hypothesis import strategies as st
from seckill.v1 import activity_pb2, product_pb2

from seckill_common.api.pages import encode_page_token
from tests.helpers.bad_input import (
    Outcome,
    Prober,
    Property,
    Tally,
    examples,
    running_prober,
)
from tests.helpers.hostile_values import (
    INT64_MAX,
    NOW,
    texts,
)
from tests.helpers.stack import ADMIN

PRODUCT = "ProductService"
ACTIVITY = "ActivityService"
ORDER = "OrderService"
# The documented limits (proto comments), restated here rather than imported, so the tests
# check the contract and not the code's own constants.
MAX_NAME, MAX_DESCRIPTION, MAX_USER_ID, MAX_AMOUNT = 200, 10_000, 64, 10**12

# Mostly present: an absent resource is one refusal, worth a tenth of the examples.
present = st.integers(0, 9).map(bool)
Body = Callable[..., Coroutine[Any, Any, object]]


def property_test(n: int, **strategies: st.SearchStrategy[Any]) -> Callable[[Body], Any]:
    """A hypothesis test of `body` on `n` examples drawn from `strategies` (derandomized, see
    `examples`) against the test's own fresh stack (`prober`), counted in the folder's tally;
    the totals test runs the same `Property` itself when this test did not run."""
    def wrap(body: Body) -> Any:
        @examples(n)
        @given(**strategies)
        async def test(prober: Prober, tally: Tally, **drawn: Any) -> None:
            tally.ran[body.__name__] += 1
            await body(prober, **drawn)

        test.__name__ = test.__qualname__ = body.__name__
        test.__doc__ = body.__doc__
        test.property = Property(  # type: ignore[attr-defined]
            body.__name__, body, n, strategies)
        return test
    return wrap


@asynccontextmanager
async def seeded_prober(mariadb: str) -> AsyncIterator[Prober]:
    """A fresh stack, seeded with a sale (stock 10, one order), a sale not started, an
    ended one, an activity to edit and a product no activity sells."""
    async with running_prober(mariadb) as p:
        stack = p.stack

        async def product(name: str, stock: int) -> int:
            return (await stack.products.CreateProduct(product_pb2.CreateProductRequest(
                product=product_pb2.Product(name=name, price_cents=100, stock=stock)),
                metadata=ADMIN)).id

        async def activity(product_id: int, start: int, end: int) -> int:
            return (await stack.activities.CreateActivity(activity_pb2.CreateActivityRequest(
                activity=activity_pb2.Activity(
                    product_id=product_id, name="sale", start_time=seconds_at(start),
                    end_time=seconds_at(end))),
                metadata=ADMIN)).id

        sale = await product("on sale", 10)
        open_ = await activity(sale, NOW - 60, NOW + 30 * 86400)
        later = await activity(sale, NOW + 30 * 86400, NOW + 60 * 86400)  # not started
        ended = await activity(sale, NOW - 2 * 86400, NOW - 86400)
        edit = await activity(sale, NOW - 60, NOW + 86400)
        free = await product("sold by nobody", 5)
        order = await stack.activities.Seckill(
            activity_pb2.SeckillRequest(activity_id=open_, user_id="alice"))
        # The ids `known_ids` aims at (a fresh database numbers from 1).
        assert (sale, free, open_, later, ended, edit, order.order.id) == (1, 2, 1, 2, 3, 4, 1)
        await p.resync()
        yield p


def seconds_at(seconds: int, nanos: int = 0) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=seconds, nanos=nanos)


async def row(p: Prober, sql: str, *params: object) -> tuple | None:
    async with p.conn.cursor() as cur:
        await cur.execute(sql, params)
        return await cur.fetchone()


async def remove(p: Prober, table: str, row_id: int) -> None:
    """Deletes a row a successful Create made, so later examples see the seeded data."""
    async with p.conn.cursor() as cur:
        await cur.execute(f"DELETE FROM {table} WHERE id = %s", (row_id,))
    await p.resync()


def refused_with(p: Prober, outcome: Outcome, fields: set[str]) -> None:
    """INVALID_ARGUMENT whose BadRequest names exactly `fields` (every violation at once)."""
    assert outcome.code == "INVALID_ARGUMENT", (outcome.code, fields)
    assert p.bad_fields(outcome) == fields, (fields, outcome.error.details())  # type: ignore[union-attr]


def too_big(p: Prober, request: object) -> bool:
    """Over the size cap: Prober already checked RESOURCE_EXHAUSTED; nothing else to model."""
    return request.ByteSize() > p.max_message_bytes  # type: ignore[attr-defined]


def text_ok(value: str, max_chars: int, required: bool) -> bool:
    return (bool(value.strip()) or not required) and len(value) <= max_chars


# Page tokens: garbage, tokens a server could issue (any `after`, right or wrong filters) and
# well-formed base64 around JSON of the wrong shape.
page_tokens = st.one_of(
    st.just(""),
    texts,
    st.tuples(st.just("issued"),
              st.one_of(st.integers(-2, 50), st.sampled_from([INT64_MAX, 2**64, 10**100, -1])),
              st.booleans()),
    st.sampled_from([json.dumps(v) for v in (  # type: ignore[var-annotated]
        {"after": True, "f": ""}, {"after": 1.5, "f": ""}, {"after": "1", "f": ""},
        {"after": None}, {"f": "x"}, [], {}, "x", 1, None, {"after": [1], "f": {}},
    )]).map(lambda body: base64.urlsafe_b64encode(body.encode()).decode()),
    st.sampled_from(["====", "!!!!", "\u00e9\u00e9", "a", "ab=", "\x00",
                     base64.urlsafe_b64encode(b"\xff\xfe\xfd").decode(),
                     base64.urlsafe_b64encode(b"[" * 149).decode()]),
)


def token(spec: str | tuple, filters: dict[str, object]) -> str:
    if isinstance(spec, str):
        return spec
    _, after, right_filters = spec
    body = json.dumps({"after": after, "f": "0" * 16}).encode()
    if right_filters and isinstance(after, int) and after >= 0:
        return encode_page_token(after, filters)
    return base64.urlsafe_b64encode(body).decode().rstrip("=")


def mask_paths(mask: field_mask_pb2.FieldMask | None, message: object,
               updatable: tuple[str, ...]) -> list[str] | None:
    """The paths AIP-134 says an update applies; None if the mask names any other path."""
    if mask is None or not mask.paths:
        populated = {f.name for f, _ in message.ListFields()}  # type: ignore[attr-defined]
        return [p for p in updatable if p in populated]
    if any(p != "*" and p not in updatable for p in mask.paths):
        return None
    return list(updatable) if "*" in mask.paths else list(dict.fromkeys(mask.paths))
