"""Bad input: hostile values in every field of every RPC's request (issue 4).

Each property test drives one RPC with hypothesis (derandomized, so CI repeats the same
examples) through `Prober.call`, which checks every answer against the protos' documented
errors, the google.rpc detail each refusal carries, and that a refused call (or any read) left
the tables unchanged. The tests then model the documented validation rules, so a value the
contract says is bad must be INVALID_ARGUMENT and one it allows must get past validation.

Every test has its own database and stack, seeded alike (`prober`), so any test runs alone and
in any order. Within a property test, calls that succeed may change the data later examples see
(an update, a seckill, a delete): every outcome they lead to is documented, so the checks hold
whatever the order of the examples. The last test checks the module's totals, running first
any property test this session has not run.
"""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import sys
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import field_mask_pb2, timestamp_pb2
from hypothesis import given
from hypothesis import strategies as st
from seckill.v1 import activity_pb2, order_pb2, product_pb2

from seckill_common.api.pages import encode_page_token
from seckill_common.api.validation import MAX_PER_USER_LIMIT
from tests.helpers.bad_input import (
    INT64_MAX,
    NOW,
    SCALE,
    SQL_INJECTIONS,
    Outcome,
    Prober,
    Property,
    ServerLog,
    Tally,
    all_methods,
    amounts,
    examples,
    ids,
    int32s,
    known_ids,
    masks,
    method_path,
    names,
    running_prober,
    set_time,
    texts,
    timestamps,
    user_ids,
)
from tests.helpers.stack import ADMIN, ADMIN_TOKEN

# A database warning (truncation, overflow) raised in a service becomes an error there, and so
# an INTERNAL answer that fails the test.
pytestmark = pytest.mark.filterwarnings("error::pymysql.err.Warning")

PRODUCT = "ProductService"
ACTIVITY = "ActivityService"
ORDER = "OrderService"
# The documented limits (proto comments), restated here rather than imported, so the tests
# check the contract and not the code's own constants.
MAX_NAME, MAX_DESCRIPTION, MAX_USER_ID, MAX_AMOUNT = 200, 10_000, 64, 10**12
MIN_TIME = datetime(1970, 1, 1, tzinfo=UTC)
MAX_TIME = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)
PRODUCT_PATHS = ("name", "description", "price_cents", "stock")
ACTIVITY_PATHS = ("name", "start_time", "end_time", "price_cents", "payment_window",
                  "per_user_limit")
GRPCURL = shutil.which("grpcurl", path=str(Path(sys.executable).parent)) or "grpcurl"

# Mostly present: an absent resource is one refusal, worth a tenth of the examples.
present = st.integers(0, 9).map(bool)
Body = Callable[..., Coroutine[Any, Any, object]]


def property_test(n: int, **strategies: st.SearchStrategy[Any]) -> Callable[[Body], Any]:
    """A hypothesis test of `body` on `n` examples drawn from `strategies` (derandomized, see
    `examples`) against the test's own fresh stack (`prober`), counted in the module's tally;
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


@pytest.fixture(scope="module")
def tally() -> Tally:
    return Tally()


@pytest.fixture(scope="module")
async def server_log() -> AsyncIterator[ServerLog]:
    with ServerLog() as log:
        yield log


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
                activity=activity_pb2.Activity(product_id=product_id, name="sale",
                                               start_time=_time(start), end_time=_time(end))),
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


@pytest.fixture
async def prober(mariadb: str, server_log: ServerLog, tally: Tally) -> AsyncIterator[Prober]:
    """The test's own seeded stack (see `seeded_prober`); `server_log` hears its services, and
    the tally counts what it answered."""
    async with seeded_prober(mariadb) as p:
        yield p
    tally.add(p)


def _time(seconds: int, nanos: int = 0) -> timestamp_pb2.Timestamp:
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


def user_id_ok(value: str) -> bool:
    return 0 < len(value) <= MAX_USER_ID and value.isprintable()


def instant(value: timestamp_pb2.Timestamp | None) -> datetime | None:
    """The documented reading of a Timestamp (microseconds, as stored), or None if invalid or
    outside 1970..9999."""
    if value is None or not 0 <= value.nanos < 10**9:
        return None
    try:
        when = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(
            seconds=value.seconds, microseconds=value.nanos // 1000)
    except OverflowError:
        return None
    return when if MIN_TIME <= when <= MAX_TIME else None


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


def products_strategy() -> st.SearchStrategy[product_pb2.Product]:
    return st.builds(_product, known_ids, names, names, amounts, amounts, timestamps)


def _product(id_: int, name: str, description: str, price: int, stock: int,
             created: timestamp_pb2.Timestamp | None) -> product_pb2.Product:
    product = product_pb2.Product(id=id_, name=name, description=description,
                                  price_cents=price, stock=stock)
    set_time(product, "create_time", created)  # output only: ignored
    return product


def activities_strategy() -> st.SearchStrategy[activity_pb2.Activity]:
    hostile = st.builds(_activity, known_ids, known_ids, names, timestamps, timestamps)
    # A seeded product and a window around now, ordered or not: these reach the database.
    plausible = st.builds(
        _activity, known_ids, st.integers(1, 2), names,
        st.integers(-86400, 86400).map(lambda d: _time(NOW + d)),
        st.integers(-86400, 10 * 86400).map(lambda d: _time(NOW + d)))
    return st.one_of(hostile, plausible)


def _activity(id_: int, product_id: int, name: str, start: timestamp_pb2.Timestamp | None,
              end: timestamp_pb2.Timestamp | None) -> activity_pb2.Activity:
    activity = activity_pb2.Activity(id=id_, product_id=product_id, name=name)
    set_time(activity, "start_time", start)
    set_time(activity, "end_time", end)
    return activity


def mask_paths(mask: field_mask_pb2.FieldMask | None, message: object,
               updatable: tuple[str, ...]) -> list[str] | None:
    """The paths AIP-134 says an update applies; None if the mask names any other path."""
    if mask is None or not mask.paths:
        populated = {f.name for f, _ in message.ListFields()}  # type: ignore[attr-defined]
        return [p for p in updatable if p in populated]
    if any(p != "*" and p not in updatable for p in mask.paths):
        return None
    return list(updatable) if "*" in mask.paths else list(dict.fromkeys(mask.paths))


# --- ProductService -------------------------------------------------------------------------

@property_test(1000, has_product=present, product=products_strategy())
async def test_create_product(prober: Prober, has_product: bool,
                              product: product_pb2.Product) -> None:
    request = product_pb2.CreateProductRequest(product=product if has_product else None)
    outcome = await prober.call(method_path(PRODUCT, "CreateProduct"), request)
    if too_big(prober, request):
        return
    bad = set() if has_product else {"product"}
    if has_product:
        if not text_ok(product.name, MAX_NAME, True):
            bad.add("product.name")
        if not text_ok(product.description, MAX_DESCRIPTION, False):
            bad.add("product.description")
        for name in ("price_cents", "stock"):
            if not 0 <= getattr(product, name) <= MAX_AMOUNT:
                bad.add(f"product.{name}")
    if bad:
        refused_with(prober, outcome, bad)
        return
    assert outcome.code == "OK"
    created = outcome.response
    assert created is not None and created.id > 0
    # Stored exactly as sent: values travel as parameters, never as SQL text.
    stored = await row(prober, "SELECT name, description, price_cents, stock FROM products"
                       " WHERE id = %s", created.id)
    assert stored == (product.name, product.description, product.price_cents, product.stock)
    assert (created.name, created.description) == (product.name, product.description)
    await remove(prober, "products", created.id)


@property_test(500, product_id=known_ids)
async def test_get_product(prober: Prober, product_id: int) -> None:
    outcome = await prober.call(method_path(PRODUCT, "GetProduct"),
                                product_pb2.GetProductRequest(id=product_id))
    if product_id <= 0:
        refused_with(prober, outcome, {"id"})
    elif outcome.code == "OK":
        assert outcome.response.id == product_id
    else:
        assert outcome.code == "NOT_FOUND"
        assert await row(prober, "SELECT id FROM products WHERE id = %s", product_id) is None


@property_test(600, size=int32s, spec=page_tokens)
async def test_list_products(prober: Prober, size: int, spec: str | tuple) -> None:
    request = product_pb2.ListProductsRequest(page_size=size, page_token=token(spec, {}))
    outcome = await prober.call(method_path(PRODUCT, "ListProducts"), request)
    if size < 0:
        refused_with(prober, outcome, {"page_size"})
    elif outcome.code == "OK":
        assert len(outcome.response.products) <= min(size or 50, 1000)
    else:
        assert request.page_token and prober.bad_fields(outcome) == {"page_token"}
    if size >= 0 and not request.page_token:
        assert outcome.code == "OK"


@property_test(1000, has_product=present, product=products_strategy(), mask=masks(PRODUCT_PATHS))
async def test_update_product(prober: Prober, has_product: bool, product: product_pb2.Product,
                              mask: field_mask_pb2.FieldMask | None) -> None:
    request = product_pb2.UpdateProductRequest(product=product if has_product else None,
                                               update_mask=mask)
    before = await row(prober, "SELECT name, description, price_cents, stock FROM products"
                       " WHERE id = %s", product.id) if product.id > 0 else None
    outcome = await prober.call(method_path(PRODUCT, "UpdateProduct"), request)
    if too_big(prober, request):
        return
    if not has_product:
        return refused_with(prober, outcome, {"product"})
    if product.id <= 0:
        return refused_with(prober, outcome, {"product.id"})
    paths = mask_paths(mask, product, PRODUCT_PATHS)
    if paths is None:
        return refused_with(prober, outcome, {"update_mask"})
    bad = set()
    if "name" in paths and not text_ok(product.name, MAX_NAME, True):
        bad.add("product.name")
    if "description" in paths and not text_ok(product.description, MAX_DESCRIPTION, False):
        bad.add("product.description")
    for name in ("price_cents", "stock"):
        if name in paths and not 0 <= getattr(product, name) <= MAX_AMOUNT:
            bad.add(f"product.{name}")
    if bad:
        return refused_with(prober, outcome, bad)
    if before is None:
        assert outcome.code == "NOT_FOUND", outcome.code
        return
    assert outcome.code == "OK", (outcome.code, outcome.error and outcome.error.details())
    after = await row(prober, "SELECT name, description, price_cents, stock FROM products"
                      " WHERE id = %s", product.id)
    expected = tuple(getattr(product, name) if name in paths else old
                     for name, old in zip(PRODUCT_PATHS, before, strict=True))
    assert after == expected, (paths, after, expected)
    return None


# --- ActivityService ------------------------------------------------------------------------

@property_test(1000, has_activity=present, activity=activities_strategy())
async def test_create_activity(prober: Prober, has_activity: bool,
                               activity: activity_pb2.Activity) -> None:
    request = activity_pb2.CreateActivityRequest(activity=activity if has_activity else None)
    outcome = await prober.call(method_path(ACTIVITY, "CreateActivity"), request)
    if too_big(prober, request):
        return
    if not has_activity:
        return refused_with(prober, outcome, {"activity"})
    bad = set()
    if activity.product_id <= 0:
        bad.add("activity.product_id")
    if not text_ok(activity.name, MAX_NAME, True):
        bad.add("activity.name")
    start = instant(activity.start_time if activity.HasField("start_time") else None)
    end = instant(activity.end_time if activity.HasField("end_time") else None)
    if start is None:
        bad.add("activity.start_time")
    if end is None:
        bad.add("activity.end_time")
    if bad or not end > start:  # type: ignore[operator]
        return refused_with(prober, outcome, bad or {"activity.end_time"})
    exists = await row(prober, "SELECT id FROM products WHERE id = %s", activity.product_id)
    if exists is None:
        assert outcome.code == "NOT_FOUND", outcome.code
        return None
    assert outcome.code == "OK", (outcome.code, outcome.error and outcome.error.details())
    created = outcome.response
    stored = await row(prober, "SELECT product_id, name, start_time, end_time FROM activities"
                       " WHERE id = %s", created.id)
    assert stored == (activity.product_id, activity.name,
                      start.replace(tzinfo=None),  # type: ignore[union-attr]
                      end.replace(tzinfo=None))  # type: ignore[union-attr]
    await remove(prober, "activities", created.id)
    return None


@property_test(500, activity_id=known_ids)
async def test_get_activity(prober: Prober, activity_id: int) -> None:
    outcome = await prober.call(method_path(ACTIVITY, "GetActivity"),
                                activity_pb2.GetActivityRequest(id=activity_id))
    if activity_id <= 0:
        refused_with(prober, outcome, {"id"})
    elif outcome.code == "OK":
        got = outcome.response
        assert got.id == activity_id and got.product.id == got.product_id
    else:
        assert outcome.code == "NOT_FOUND"


@property_test(600, size=int32s, spec=page_tokens)
async def test_list_activities(prober: Prober, size: int, spec: str | tuple) -> None:
    request = activity_pb2.ListActivitiesRequest(page_size=size, page_token=token(spec, {}))
    outcome = await prober.call(method_path(ACTIVITY, "ListActivities"), request)
    if size < 0:
        refused_with(prober, outcome, {"page_size"})
    elif outcome.code != "OK":
        assert request.page_token and prober.bad_fields(outcome) == {"page_token"}
    if size >= 0 and not request.page_token:
        assert outcome.code == "OK"


@property_test(1000, activity_id=known_ids,
       user_id=st.one_of(user_ids, st.sampled_from(["alice", "bob", "carol"])),
       quantity=st.one_of(st.just(0), int32s))
async def test_seckill(prober: Prober, activity_id: int, user_id: str, quantity: int) -> None:
    outcome = await prober.call(method_path(ACTIVITY, "Seckill"), activity_pb2.SeckillRequest(
        activity_id=activity_id, user_id=user_id, quantity=quantity))
    bad = set()
    if activity_id <= 0:
        bad.add("activity_id")
    if not user_id_ok(user_id):
        bad.add("user_id")
    if not 0 <= quantity <= MAX_PER_USER_LIMIT:
        bad.add("quantity")
    if bad:
        return refused_with(prober, outcome, bad)
    assert outcome.code != "INVALID_ARGUMENT", outcome.error and outcome.error.details()
    if outcome.code == "OK":
        order = outcome.response.order
        stored = await row(prober, "SELECT activity_id, user_id FROM orders WHERE id = %s",
                           order.id)
        assert stored == (activity_id, user_id.encode())
    elif outcome.code == "NOT_FOUND":
        assert await row(prober, "SELECT id FROM activities WHERE id = %s", activity_id) is None
    return None


def update_violations(activity: activity_pb2.Activity, paths: list[str]
                      ) -> tuple[set[str], dict[str, datetime | None]]:
    """The fields an UpdateActivity of `paths` must name as bad, and the new times it sets."""
    bad = set()
    if "name" in paths and not text_ok(activity.name, MAX_NAME, True):
        bad.add("activity.name")
    if "payment_window" in paths:  # never set by the strategy: 0 s, below the 1 s minimum
        bad.add("activity.payment_window")
    if "per_user_limit" in paths and not 1 <= activity.per_user_limit <= MAX_PER_USER_LIMIT:
        bad.add("activity.per_user_limit")
    new: dict[str, datetime | None] = {}
    for name in ("start_time", "end_time"):
        if name in paths:
            new[name] = instant(getattr(activity, name) if activity.HasField(name) else None)
            if new[name] is None:
                bad.add(f"activity.{name}")
    return bad, new


@property_test(1000, has_activity=present, activity=activities_strategy(),
               mask=masks(ACTIVITY_PATHS))
async def test_update_activity(prober: Prober, has_activity: bool,
                               activity: activity_pb2.Activity,
                               mask: field_mask_pb2.FieldMask | None) -> None:
    request = activity_pb2.UpdateActivityRequest(activity=activity if has_activity else None,
                                                 update_mask=mask)
    before = await row(prober, "SELECT name, start_time, end_time FROM activities"
                       " WHERE id = %s", activity.id) if activity.id > 0 else None
    outcome = await prober.call(method_path(ACTIVITY, "UpdateActivity"), request)
    if too_big(prober, request):
        return None
    if not has_activity:
        return refused_with(prober, outcome, {"activity"})
    if activity.id <= 0:
        return refused_with(prober, outcome, {"activity.id"})
    paths = mask_paths(mask, activity, ACTIVITY_PATHS)
    if paths is None:
        return refused_with(prober, outcome, {"update_mask"})
    bad, new = update_violations(activity, paths)
    if bad:
        return refused_with(prober, outcome, bad)
    if before is None:
        assert outcome.code == "NOT_FOUND", outcome.code
        return None
    start = new.get("start_time") or before[1].replace(tzinfo=UTC)
    end = new.get("end_time") or before[2].replace(tzinfo=UTC)
    if not end > start:
        return refused_with(prober, outcome, {"activity.end_time"})
    assert outcome.code == "OK", (outcome.code, outcome.error and outcome.error.details())
    after = await row(prober, "SELECT name, start_time, end_time FROM activities WHERE id = %s",
                      activity.id)
    assert after == (activity.name if "name" in paths else before[0],
                     start.replace(tzinfo=None), end.replace(tzinfo=None))
    return None


# --- OrderService ---------------------------------------------------------------------------

@property_test(500, order_id=known_ids)
async def test_get_order(prober: Prober, order_id: int) -> None:
    outcome = await prober.call(method_path(ORDER, "GetOrder"),
                                order_pb2.GetOrderRequest(id=order_id))
    if order_id <= 0:
        refused_with(prober, outcome, {"id"})
    elif outcome.code == "OK":
        assert outcome.response.id == order_id
    else:
        assert outcome.code == "NOT_FOUND"


@property_test(800, user_id=user_ids, activity_id=ids, size=int32s, spec=page_tokens)
async def test_list_orders(prober: Prober, user_id: str, activity_id: int, size: int,
                           spec: str | tuple) -> None:
    filters = {"user_id": user_id, "activity_id": activity_id}
    request = order_pb2.ListOrdersRequest(user_id=user_id, activity_id=activity_id,
                                          page_size=size, page_token=token(spec, filters))
    outcome = await prober.call(method_path(ORDER, "ListOrders"), request)
    if too_big(prober, request):
        return
    bad = set()
    if activity_id < 0:
        bad.add("activity_id")
    if len(user_id) > MAX_USER_ID:
        bad.add("user_id")
    if bad:
        return refused_with(prober, outcome, bad)
    if size < 0:
        return refused_with(prober, outcome, {"page_size"})
    if not request.page_token:
        assert outcome.code == "OK", (outcome.code, outcome.error and outcome.error.details())
    if outcome.code == "OK":
        # Only the orders the filters name: a filter value is a parameter, never SQL.
        for order in outcome.response.orders:
            assert not user_id or order.user_id == user_id
            assert not activity_id or order.activity_id == activity_id
    else:
        assert prober.bad_fields(outcome) == {"page_token"}
    return None


@property_test(300, order_id=known_ids)
async def test_pay_order(prober: Prober, order_id: int) -> None:
    state = await row(prober, "SELECT state FROM orders WHERE id = %s", order_id)
    outcome = await prober.call(method_path(ORDER, "PayOrder"),
                                order_pb2.PayOrderRequest(id=order_id))
    if order_id <= 0:
        refused_with(prober, outcome, {"id"})
    elif state is None:
        assert outcome.code == "NOT_FOUND"
    else:  # the seeded windows are 15 minutes: nothing is past its deadline here
        paid = state[0] in (order_pb2.PENDING_PAYMENT, order_pb2.PAID)
        assert outcome.code == ("OK" if paid else "FAILED_PRECONDITION"), outcome.code


# --- Deletes, last: they may remove the seeded rows -----------------------------------------

@property_test(300, order_id=known_ids)
async def test_cancel_order(prober: Prober, order_id: int) -> None:
    state = await row(prober, "SELECT state FROM orders WHERE id = %s", order_id)
    outcome = await prober.call(method_path(ORDER, "CancelOrder"),
                                order_pb2.CancelOrderRequest(id=order_id))
    if order_id <= 0:
        refused_with(prober, outcome, {"id"})
    elif state is None:
        assert outcome.code == "NOT_FOUND"
    else:
        assert outcome.code == ("FAILED_PRECONDITION" if state[0] == order_pb2.EXPIRED
                                else "OK"), outcome.code


@property_test(500, order_id=known_ids)
async def test_delete_order(prober: Prober, order_id: int) -> None:
    existed = await row(prober, "SELECT id FROM orders WHERE id = %s", order_id)
    outcome = await prober.call(method_path(ORDER, "DeleteOrder"),
                                order_pb2.DeleteOrderRequest(id=order_id))
    if order_id <= 0:
        refused_with(prober, outcome, {"id"})
    else:
        assert outcome.code == ("OK" if existed else "NOT_FOUND"), outcome.code


@property_test(500, activity_id=known_ids)
async def test_delete_activity(prober: Prober, activity_id: int) -> None:
    existed = await row(prober, "SELECT id FROM activities WHERE id = %s", activity_id)
    has_orders = await row(prober, "SELECT id FROM orders WHERE activity_id = %s"
                           " AND active = 1 LIMIT 1", activity_id)
    outcome = await prober.call(method_path(ACTIVITY, "DeleteActivity"),
                                activity_pb2.DeleteActivityRequest(id=activity_id))
    if activity_id <= 0:
        refused_with(prober, outcome, {"id"})
    elif not existed:
        assert outcome.code == "NOT_FOUND"
    else:
        assert outcome.code == ("FAILED_PRECONDITION" if has_orders else "OK"), outcome.code


@property_test(500, product_id=known_ids)
async def test_delete_product(prober: Prober, product_id: int) -> None:
    existed = await row(prober, "SELECT id FROM products WHERE id = %s", product_id)
    in_use = await row(prober, "SELECT id FROM activities WHERE product_id = %s UNION ALL "
                       "SELECT id FROM orders WHERE product_id = %s LIMIT 1",
                       product_id, product_id)
    outcome = await prober.call(method_path(PRODUCT, "DeleteProduct"),
                                product_pb2.DeleteProductRequest(id=product_id))
    if product_id <= 0:
        refused_with(prober, outcome, {"id"})
    elif not existed:
        assert outcome.code == "NOT_FOUND"
    else:
        assert outcome.code == ("FAILED_PRECONDITION" if in_use else "OK"), outcome.code


# --- SQL injection, size cap, grpcurl --------------------------------------------------------

async def test_sql_injection_strings_are_stored_and_matched_literally(prober: Prober) -> None:
    """Every injection string in every string field: stored byte for byte, matched exactly
    as a filter, and the tables all still there with only the rows the OK calls made."""
    stack = prober.stack
    created = await stack.products.CreateProduct(product_pb2.CreateProductRequest(
        product=product_pb2.Product(name="injection target", stock=len(SQL_INJECTIONS))),
        metadata=ADMIN)
    sale = await stack.activities.CreateActivity(activity_pb2.CreateActivityRequest(
        activity=activity_pb2.Activity(product_id=created.id, name="injection sale",
                                       start_time=_time(NOW - 60),
                                       end_time=_time(NOW + 86400))), metadata=ADMIN)
    await prober.resync()
    for text in SQL_INJECTIONS:
        made = await prober.call(method_path(PRODUCT, "CreateProduct"),
                                 product_pb2.CreateProductRequest(product=product_pb2.Product(
                                     name=text, description=text)))
        assert made.code == "OK"
        assert await row(prober, "SELECT name, description FROM products WHERE id = %s",
                         made.response.id) == (text, text)
        await remove(prober, "products", made.response.id)
        renamed = await prober.call(method_path(ACTIVITY, "UpdateActivity"),
                                    activity_pb2.UpdateActivityRequest(
                                        activity=activity_pb2.Activity(id=sale.id, name=text)))
        assert renamed.code == "OK"
        assert await row(prober, "SELECT name FROM activities WHERE id = %s", sale.id) == (text,)
        bought = await prober.call(method_path(ACTIVITY, "Seckill"),
                                   activity_pb2.SeckillRequest(activity_id=sale.id,
                                                               user_id=text))
        assert bought.code == "OK", bought.error and bought.error.details()
        listed = await prober.call(method_path(ORDER, "ListOrders"),
                                   order_pb2.ListOrdersRequest(user_id=text,
                                                               activity_id=sale.id))
        # "' OR '1'='1" would list every order if it were spliced into the SQL.
        assert [o.user_id for o in listed.response.orders] == [text]
        for path, request in [
            (method_path(PRODUCT, "ListProducts"), product_pb2.ListProductsRequest(
                page_token=text)),
            (method_path(ORDER, "ListOrders"), order_pb2.ListOrdersRequest(page_token=text)),
            (method_path(PRODUCT, "UpdateProduct"), product_pb2.UpdateProductRequest(
                product=product_pb2.Product(id=created.id, name="x"),
                update_mask=field_mask_pb2.FieldMask(paths=[text]))),
        ]:
            assert (await prober.call(path, request)).code == "INVALID_ARGUMENT"
    orders = await row(prober, "SELECT COUNT(*) FROM orders WHERE activity_id = %s", sale.id)
    assert orders == (len(SQL_INJECTIONS),)
    async with prober.conn.cursor() as cur:
        await cur.execute("SHOW TABLES")
        assert {"products", "activities", "orders"} <= {name for (name,) in await cur.fetchall()}


@pytest.mark.parametrize("after", [INT64_MAX + 1, 2**64, 10**100])
async def test_a_cursor_past_the_largest_id_is_refused(prober: Prober, after: int) -> None:
    """Regression: a token naming an id past 2^63-1 reached SQL as `id > 1000...0`, which
    MariaDB answered with an overflow warning; no server issues such a token."""
    for path, request_cls, filters in [
        (method_path(PRODUCT, "ListProducts"), product_pb2.ListProductsRequest, {}),
        (method_path(ACTIVITY, "ListActivities"), activity_pb2.ListActivitiesRequest, {}),
        (method_path(ORDER, "ListOrders"), order_pb2.ListOrdersRequest,
         {"user_id": "", "activity_id": 0}),
    ]:
        request = request_cls(page_token=encode_page_token(after, filters))
        refused_with(prober, await prober.call(path, request), {"page_token"})


async def test_a_page_of_the_largest_products_fits_a_default_client(prober: Prober) -> None:
    """Regression: 120 products with 10,000-emoji descriptions (each a valid product, 40 kB)
    made ListProducts(page_size=1000) a 4.8 MB reply, past the 4 MiB a default grpc client
    accepts: it got RESOURCE_EXHAUSTED. Pages now end early, and the token carries on."""
    made = []
    for i in range(120):
        made.append((await prober.stack.products.CreateProduct(
            product_pb2.CreateProductRequest(product=product_pb2.Product(
                name=f"big {i}", description="\U0001f600" * MAX_DESCRIPTION)),
            metadata=ADMIN)).id)
    await prober.resync()
    try:
        seen: list[int] = []
        request = product_pb2.ListProductsRequest(page_size=1000)
        while True:
            outcome = await prober.call(method_path(PRODUCT, "ListProducts"), request)
            assert outcome.code == "OK", outcome.error and outcome.error.details()
            page = outcome.response
            assert page.products and page.ByteSize() < 4 * 1024 * 1024
            seen += [product.id for product in page.products]
            if not page.next_page_token:
                break
            request = product_pb2.ListProductsRequest(
                page_size=1000, page_token=page.next_page_token)
        assert seen == sorted(set(seen)) and set(made) <= set(seen)
    finally:
        async with prober.conn.cursor() as cur:
            await cur.execute("DELETE FROM products WHERE id BETWEEN %s AND %s",
                              (made[0], made[-1]))
        await prober.resync()


def padded(base: bytes, total: int) -> bytes:
    """`base` plus an unknown length-delimited field (number 1000) making `total` bytes; a
    parser keeps unknown fields and the service never looks at them."""
    tag = bytes([0xC2, 0x3E])  # (1000 << 3) | 2 as a varint
    for length_bytes in range(1, 6):
        payload = total - len(base) - len(tag) - length_bytes
        if payload >= 0 and len(_varint(payload)) == length_bytes:
            return base + tag + _varint(payload) + b"u" * payload
    raise AssertionError(f"cannot pad {len(base)} bytes to {total}")


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


async def test_requests_over_the_size_cap_are_refused_and_change_nothing(
        prober: Prober) -> None:
    """For every RPC: exactly SECKILL_MAX_MESSAGE_BYTES is handled as the same request
    without padding; one byte more is RESOURCE_EXHAUSTED before any of our code runs."""
    cap = prober.max_message_bytes
    assert cap == 64 * 1024  # the documented default
    for path in all_methods():
        base = prober.request_class(path)().SerializeToString()  # the empty request
        plain = await prober.call(path, base)
        at_cap = await prober.call(path, padded(base, cap))
        assert at_cap.code == plain.code, (path, plain.code, at_cap.code)
        over = await prober.call(path, padded(base, cap + 1))
        assert over.code == "RESOURCE_EXHAUSTED", (path, over.code)


async def test_a_name_just_under_the_cap_is_invalid_argument_and_over_it_exhausted(
        prober: Prober) -> None:
    """One byte under the cap and at it, a 65,000-character name reaches validation."""
    path = method_path(PRODUCT, "CreateProduct")
    cap = prober.max_message_bytes
    for size in (cap - 1, cap):
        request = product_pb2.CreateProductRequest(product=product_pb2.Product(name="n"))
        request.product.name = "n" * (size - request.ByteSize() + 1 - 4)  # 4: longer lengths
        while request.ByteSize() < size:
            request.product.name += "n"
        assert request.ByteSize() == size
        refused_with(prober, await prober.call(path, request), {"product.name"})
    request.product.name += "n"  # one byte over the cap
    assert (await prober.call(path, request)).code == "RESOURCE_EXHAUSTED"


HOSTILE_MASKS = {
    "one 60,000-character path": ["x" * 60_000],
    "one path of 15,000 emoji": ["\U0001f600" * 15_000],
    "6,000 distinct paths": [f"p{i}" for i in range(6_000)],
    "20,000 copies of one path": ["a"] * 20_000,
    "600 paths of 20 emoji": [f"{i}" + "\U0001f600" * 20 for i in range(600)],
}


@pytest.mark.parametrize("paths", HOSTILE_MASKS.values(), ids=HOSTILE_MASKS.keys())
async def test_a_refusal_stays_small_whatever_the_request_echoes(
        prober: Prober, paths: list[str]) -> None:
    """Regression: an UpdateActivity whose mask held a 10 kB path was refused with the path
    quoted in full, and the trailers outgrew the client's metadata limit (16 KiB): the client
    got RESOURCE_EXHAUSTED "received metadata size exceeds hard limit" instead of the answer.
    Now at most 10 violations, each quoting at most 20 characters: well under grpc's 8 KiB."""
    for path, request in [
        (method_path(PRODUCT, "UpdateProduct"), product_pb2.UpdateProductRequest(
            product=product_pb2.Product(id=1, name="x"),
            update_mask=field_mask_pb2.FieldMask(paths=paths))),
        (method_path(ACTIVITY, "UpdateActivity"), activity_pb2.UpdateActivityRequest(
            activity=activity_pb2.Activity(id=1, name="x"),
            update_mask=field_mask_pb2.FieldMask(paths=paths))),
    ]:
        assert request.ByteSize() <= prober.max_message_bytes
        started = asyncio.get_running_loop().time()
        outcome = await prober.call(path, request)
        assert asyncio.get_running_loop().time() - started < 2  # no quadratic work either
        refused_with(prober, outcome, {"update_mask"})
        assert outcome.error is not None
        trailers = sum(len(k) + len(v) for k, v in outcome.error.trailing_metadata() or ())
        assert trailers + len((outcome.error.details() or "").encode()) * 3 < 8 * 1024
        assert len(prober.bad_fields(outcome)) <= 10


async def test_a_compressed_request_is_capped_by_its_decompressed_size(
        prober: Prober) -> None:
    """A gzip request of a few kB that inflates to 10 MB (a zip bomb) is refused
    RESOURCE_EXHAUSTED like a plain one, and creates nothing; at the cap it is handled."""
    base = product_pb2.CreateProductRequest(
        product=product_pb2.Product(name="gzip", stock=1)).SerializeToString()
    async with grpc.aio.insecure_channel(prober.stack.product.address,
                                         compression=grpc.Compression.Gzip) as channel:
        create: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
            method_path(PRODUCT, "CreateProduct"))
        for size in (10_000_000, prober.max_message_bytes + 1):
            await prober.resync()
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await create(padded(base, size), metadata=ADMIN, timeout=30)
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert await prober.snapshot() == prober.last
        made = product_pb2.Product.FromString(
            await create(padded(base, prober.max_message_bytes), metadata=ADMIN, timeout=30))
        assert made.name == "gzip"
        await remove(prober, "products", made.id)


async def grpcurl(*args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        GRPCURL, "-plaintext", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(process.communicate(), 30)
    return process.returncode or 0, out.decode(), err.decode()


MALFORMED_JSON = [
    ("GetProduct", "{bad"),
    ("GetProduct", "{\"id\": 1,"),
    ("GetProduct", "[1]"),
    ("GetProduct", "{\"nope\": 1}"),
    ("GetProduct", "{\"id\": \"abc\"}"),
    ("GetProduct", "{\"id\": {}}"),
    ("GetProduct", "{\"id\": 1.5}"),
    ("GetProduct", "{\"id\": \"9223372036854775808\"}"),
    ("ListProducts", "{\"page_size\": 3000000000}"),
    ("ListProducts", "{\"page_size\": true}"),
    ("CreateProduct", "{\"product\": \"x\"}"),
    ("CreateProduct", "{\"product\": {\"price_cents\": \"1e100\"}}"),
    ("CreateProduct", "{\"product\": {\"name\": 5}}"),
    ("UpdateProduct", "{\"product\": {\"id\": 1}, \"update_mask\": 7}"),
]


@pytest.mark.parametrize(("rpc", "body"), MALFORMED_JSON)
async def test_grpcurl_malformed_json_is_refused_cleanly(
        prober: Prober, server_log: ServerLog, rpc: str, body: str) -> None:
    """grpcurl refuses JSON it cannot map onto the request message with a message and a
    non-zero exit; nothing reaches the service, and nothing changes."""
    address = prober.stack.product.address
    method = method_path(PRODUCT, rpc)
    calls_before = sum(n for (m, _), n in server_log.codes.items() if m == method)
    await prober.resync()
    code, out, err = await grpcurl("-H", f"authorization: Bearer {ADMIN_TOKEN}", "-d", body,
                                   address, method.lstrip("/"))
    assert code != 0, out
    assert err.strip(), "no explanation on stderr"
    assert "Internal" not in err and "Unknown" not in err, err
    assert sum(n for (m, _), n in server_log.codes.items() if m == method) == calls_before
    assert await prober.snapshot() == prober.last


async def test_grpcurl_well_formed_json_with_bad_values_gets_the_documented_refusal(
        prober: Prober) -> None:
    """JSON that parses reaches validation: INVALID_ARGUMENT with its BadRequest, exit 1."""
    code, _, err = await grpcurl(
        "-H", f"authorization: Bearer {ADMIN_TOKEN}",
        "-d", json.dumps({"product": {"name": "'; DROP TABLE orders; --" * 20}}),
        prober.stack.product.address, "seckill.v1.ProductService/CreateProduct")
    assert code != 0 and "InvalidArgument" in err and "product.name" in err, err
    assert await prober.snapshot() == prober.last


# --- Totals ----------------------------------------------------------------------------------

PROPERTY_TESTS = (
    test_create_product, test_get_product, test_list_products, test_update_product,
    test_create_activity, test_get_activity, test_list_activities, test_seckill,
    test_update_activity, test_get_order, test_list_orders, test_pay_order, test_cancel_order,
    test_delete_order, test_delete_activity, test_delete_product,
)


async def test_every_rpc_was_tried_and_no_server_error_was_logged(
        mariadb: str, tally: Tally, server_log: ServerLog) -> None:
    """The module's totals over every property test: those this session did not run (under
    -k, or ordered after this test) run here first, each on its own fresh stack."""
    for test in PROPERTY_TESTS:
        prop: Property = test.property
        if prop.name not in tally.ran:
            async with seeded_prober(mariadb) as prober:
                await tally.check(prop, prober)
    print("\n" + tally.table())
    assert set(tally.seen) == set(all_methods())
    for path, counts in tally.seen.items():
        assert counts["INVALID_ARGUMENT"] > 0, (path, counts)
    print("examples per property test:", dict(sorted(tally.ran.items())), "total",
          tally.ran.total())
    assert tally.ran.total() >= 10_000 * SCALE
    assert not server_log.server_errors(), server_log.server_errors()
