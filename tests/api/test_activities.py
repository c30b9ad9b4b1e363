"""ActivityService end to end: CRUD, update masks, pagination, Seckill and every error."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import field_mask_pb2, timestamp_pb2
from seckill.v1 import activity_pb2, order_pb2, product_pb2

from tests.helpers.factories import make_activity, make_product, timestamp
from tests.helpers.rpc import DEEP_TOKEN, bad_fields, not_found, refused, walk
from tests.helpers.stack import ADMIN, Stack, query

ACTIVITY_ROW = "SELECT product_id, name, start_time, end_time FROM activities WHERE id = %s"
ORDERS_AND_STOCK = ("SELECT (SELECT COUNT(*) FROM orders),"
                    " (SELECT stock FROM products WHERE id = %s)")


async def activity_row(stack: Stack, activity_id: int) -> tuple | None:
    rows = await query(stack.db_url, ACTIVITY_ROW, (activity_id,))
    return rows[0] if rows else None


def patched(activity: activity_pb2.Activity, **fields: object) -> activity_pb2.Activity:
    """`activity` with `fields` set: None clears a field, a float time is now + that many s."""
    for name, value in fields.items():
        if value is None:
            activity.ClearField(name)  # type: ignore[arg-type]
        elif name.endswith("_time"):
            when = value if isinstance(value, timestamp_pb2.Timestamp) else timestamp(value)  # type: ignore[arg-type]
            getattr(activity, name).CopyFrom(when)
        elif name == "payment_window":
            activity.payment_window.FromMilliseconds(value)  # type: ignore[arg-type]
        else:
            setattr(activity, name, value)
    return activity


def new_activity(for_product: int, /, **overrides: object) -> activity_pb2.Activity:
    """A valid activity selling now, with `overrides` patched in."""
    return patched(activity_pb2.Activity(product_id=for_product, name="Flash sale",
                                         start_time=timestamp(-60), end_time=timestamp(3600)),
                   **overrides)


async def update(stack: Stack, activity: activity_pb2.Activity,
                 paths: list[str] | None = None) -> activity_pb2.Activity:
    return await stack.activities.UpdateActivity(activity_pb2.UpdateActivityRequest(
        activity=activity, update_mask=field_mask_pb2.FieldMask(paths=paths or [])),
        metadata=ADMIN)


async def buy(stack: Stack, activity_id: int, user_id: str) -> order_pb2.Order:
    response = await stack.activities.Seckill(
        activity_pb2.SeckillRequest(activity_id=activity_id, user_id=user_id))
    return response.order


async def test_create_get_and_list_an_activity(stack: Stack) -> None:
    product = await make_product(stack, stock=10)
    sent = new_activity(product.id, name="Spring sale")
    created = await stack.activities.CreateActivity(
        activity_pb2.CreateActivityRequest(activity=sent), metadata=ADMIN)
    assert created.id > 0 and created.create_time.seconds > 0
    assert (created.product_id, created.name, created.start_time, created.end_time) == (
        product.id, "Spring sale", sent.start_time, sent.end_time)
    assert not created.HasField("product")
    assert await activity_row(stack, created.id) == (
        product.id, "Spring sale", sent.start_time.ToDatetime(), sent.end_time.ToDatetime())

    await buy(stack, created.id, "alice")
    got = await stack.activities.GetActivity(activity_pb2.GetActivityRequest(id=created.id))
    # GetActivity embeds the product with its current stock ...
    current = await stack.products.GetProduct(product_pb2.GetProductRequest(id=product.id))
    assert got.product == current and got.product.stock == 9
    got.ClearField("product")
    assert got == created
    # ... ListActivities does not.
    listed = await stack.activities.ListActivities(activity_pb2.ListActivitiesRequest())
    assert list(listed.activities) == [created] and listed.next_page_token == ""


@pytest.mark.parametrize(("overrides", "expected"), [
    ({"product_id": 0}, {"activity.product_id"}),
    ({"product_id": -1}, {"activity.product_id"}),
    ({"name": ""}, {"activity.name"}),
    ({"name": " \t "}, {"activity.name"}),
    ({"name": "n" * 201}, {"activity.name"}),
    ({"start_time": None}, {"activity.start_time"}),
    ({"end_time": None}, {"activity.end_time"}),
    ({"start_time": None, "end_time": None}, {"activity.start_time", "activity.end_time"}),
    ({"start_time": timestamp_pb2.Timestamp(seconds=-1)}, {"activity.start_time"}),
    ({"end_time": timestamp_pb2.Timestamp(seconds=253402300800)},  # year 10000
     {"activity.end_time"}),
    ({"start_time": 100, "end_time": 50}, {"activity.end_time"}),
    ({"start_time": timestamp_pb2.Timestamp(seconds=2_000_000_000),
      "end_time": timestamp_pb2.Timestamp(seconds=2_000_000_000)}, {"activity.end_time"}),
    ({"product_id": 0, "name": ""}, {"activity.product_id", "activity.name"}),
])
async def test_create_activity_rejects_bad_fields(stack: Stack, overrides: dict,
                                                  expected: set[str]) -> None:
    product = await make_product(stack)
    request = activity_pb2.CreateActivityRequest(activity=new_activity(product.id, **overrides))
    assert await bad_fields(stack.activities.CreateActivity(request, metadata=ADMIN)) == expected
    assert await query(stack.db_url, "SELECT id FROM activities") == []


async def test_create_activity_needs_an_activity(stack: Stack) -> None:
    assert await bad_fields(stack.activities.CreateActivity(
        activity_pb2.CreateActivityRequest(), metadata=ADMIN)) == {"activity"}


async def test_create_activity_for_an_unknown_product_is_not_found(stack: Stack) -> None:
    request = activity_pb2.CreateActivityRequest(activity=new_activity(999))
    assert await not_found(stack.activities.CreateActivity(request, metadata=ADMIN)) == (
        "seckill.v1.Product", "products/999")
    assert await query(stack.db_url, "SELECT id FROM activities") == []


def id_call(stack: Stack, rpc: str, activity_id: int):
    """A call of `rpc` naming the activity `activity_id`, with a body that is otherwise valid."""
    if rpc == "UpdateActivity":
        return update(stack, activity_pb2.Activity(id=activity_id, name="x"), ["name"])
    if rpc == "Seckill":
        return stack.activities.Seckill(
            activity_pb2.SeckillRequest(activity_id=activity_id, user_id="alice"))
    request = getattr(activity_pb2, f"{rpc}Request")(id=activity_id)
    return getattr(stack.activities, rpc)(request, metadata=ADMIN)


ID_FIELDS = {"GetActivity": "id", "DeleteActivity": "id", "UpdateActivity": "activity.id",
             "Seckill": "activity_id"}


@pytest.mark.parametrize("bad_id", [0, -1])
@pytest.mark.parametrize("rpc", list(ID_FIELDS))
async def test_activity_ids_must_be_positive(stack: Stack, rpc: str, bad_id: int) -> None:
    assert await bad_fields(id_call(stack, rpc, bad_id)) == {ID_FIELDS[rpc]}


@pytest.mark.parametrize("rpc", list(ID_FIELDS))
async def test_unknown_activity_is_not_found(stack: Stack, rpc: str) -> None:
    assert await not_found(id_call(stack, rpc, 999)) == ("seckill.v1.Activity",
                                                          "activities/999")


# --- update masks (AIP-134) and the window -----------------------------------------------------

@pytest.mark.parametrize(("paths", "fields", "changed"), [
    # An empty mask updates every populated field among name, start_time and end_time.
    ([], {"name": "Renamed"}, {"name"}),
    ([], {"end_time": 7200}, {"end_time"}),
    ([], {"name": "Renamed", "start_time": -30, "end_time": 60},
     {"name", "start_time", "end_time"}),
    # Explicit paths update only those.
    (["end_time"], {"name": "Ignored", "end_time": 7200}, {"end_time"}),
    (["name", "start_time"], {"name": "Renamed", "start_time": 10, "end_time": 20},
     {"name", "start_time"}),
    # Moving the whole window past its old end works when both sides move together.
    (["start_time", "end_time"], {"start_time": 5000, "end_time": 6000},
     {"start_time", "end_time"}),
    # "*" replaces every updatable field, so the request names them all.
    (["*"], {"name": "All", "start_time": 1, "end_time": 2, "price_cents": 5,
             "payment_window": 60_000, "per_user_limit": 4},
     {"name", "start_time", "end_time", "price_cents", "payment_window", "per_user_limit"}),
    (["per_user_limit"], {"name": "Ignored", "per_user_limit": 2}, {"per_user_limit"}),
])
async def test_update_activity_applies_the_mask(stack: Stack, paths: list[str], fields: dict,
                                                changed: set[str]) -> None:
    product = await make_product(stack)
    activity = await make_activity(stack, product.id, start_s=-60, end_s=3600)
    patch = patched(activity_pb2.Activity(id=activity.id, product_id=product.id), **fields)
    updated = await update(stack, patch, paths)
    expected = activity_pb2.Activity()
    expected.CopyFrom(activity)
    for name in changed:
        if name in ("name", "price_cents", "per_user_limit"):
            setattr(expected, name, getattr(patch, name))
        else:
            getattr(expected, name).CopyFrom(getattr(patch, name))
    assert updated == expected
    assert await activity_row(stack, activity.id) == (
        product.id, expected.name, expected.start_time.ToDatetime(),
        expected.end_time.ToDatetime())


@pytest.mark.parametrize(("paths", "fields", "expected"), [
    (["product_id"], {"product_id": 1}, {"update_mask"}),
    (["name", "product_id"], {"name": "x"}, {"update_mask"}),
    (["colour"], {}, {"update_mask"}),
    (["id"], {}, {"update_mask"}),
    (["product"], {}, {"update_mask"}),
    (["create_time"], {}, {"update_mask"}),
    (["name"], {}, {"activity.name"}),
    (["name"], {"name": "n" * 201}, {"activity.name"}),
    (["start_time"], {}, {"activity.start_time"}),
    (["end_time"], {"end_time": timestamp_pb2.Timestamp(seconds=-5)}, {"activity.end_time"}),
    # The resulting window must stay ordered when only one side moves ...
    (["start_time"], {"start_time": 7200}, {"activity.end_time"}),
    ([], {"start_time": 3600}, {"activity.end_time"}),
    (["end_time"], {"end_time": -120}, {"activity.end_time"}),
    ([], {"end_time": -90}, {"activity.end_time"}),
    # ... and when both do.
    ([], {"start_time": 10, "end_time": 5}, {"activity.end_time"}),
])
async def test_update_activity_rejects_bad_masks_and_values(
        stack: Stack, paths: list[str], fields: dict, expected: set[str]) -> None:
    product = await make_product(stack)
    activity = await make_activity(stack, product.id, start_s=-60, end_s=3600)
    before = await activity_row(stack, activity.id)
    patch = patched(activity_pb2.Activity(id=activity.id), **fields)
    assert await bad_fields(update(stack, patch, paths)) == expected
    assert await activity_row(stack, activity.id) == before


async def test_update_activity_needs_an_activity(stack: Stack) -> None:
    assert await bad_fields(stack.activities.UpdateActivity(
        activity_pb2.UpdateActivityRequest(), metadata=ADMIN)) == {"activity"}


# --- delete ------------------------------------------------------------------------------------

async def test_delete_activity_removes_it(stack: Stack) -> None:
    product = await make_product(stack)
    activity = await make_activity(stack, product.id)
    await stack.activities.DeleteActivity(activity_pb2.DeleteActivityRequest(id=activity.id),
                                          metadata=ADMIN)
    assert await activity_row(stack, activity.id) is None
    assert await not_found(stack.activities.GetActivity(activity_pb2.GetActivityRequest(
        id=activity.id))) == ("seckill.v1.Activity", f"activities/{activity.id}")
    # A seckill on the deleted activity is NOT_FOUND too, and the product is free again.
    assert await not_found(stack.activities.Seckill(activity_pb2.SeckillRequest(
        activity_id=activity.id, user_id="alice"))) == (
        "seckill.v1.Activity", f"activities/{activity.id}")
    await stack.products.DeleteProduct(product_pb2.DeleteProductRequest(id=product.id),
                                       metadata=ADMIN)


async def test_delete_activity_with_orders_is_failed_precondition(stack: Stack, sale) -> None:
    product, activity = sale
    order = await buy(stack, activity.id, "alice")
    delete = activity_pb2.DeleteActivityRequest(id=activity.id)
    reason, metadata = await refused(stack.activities.DeleteActivity(delete, metadata=ADMIN),
                                     grpc.StatusCode.FAILED_PRECONDITION)
    assert (reason, metadata) == ("ACTIVITY_HAS_ORDERS", {"activity_id": str(activity.id)})
    assert await activity_row(stack, activity.id) is not None
    # Once its orders are cancelled, the activity and then its product can go.
    await stack.orders.DeleteOrder(order_pb2.DeleteOrderRequest(id=order.id), metadata=ADMIN)
    await stack.activities.DeleteActivity(delete, metadata=ADMIN)
    await stack.products.DeleteProduct(product_pb2.DeleteProductRequest(id=product.id),
                                       metadata=ADMIN)
    assert await query(stack.db_url, "SELECT COUNT(*) FROM products") == [(0,)]


# --- Seckill -----------------------------------------------------------------------------------

@pytest.mark.parametrize(("user_id", "expected"), [
    ("", {"user_id"}),
    ("u" * 65, {"user_id"}),
    ("a\x00b", {"user_id"}),
    ("alice\n", {"user_id"}),
    ("\u200b", {"user_id"}),  # zero-width space: not printable
])
async def test_seckill_rejects_bad_user_ids(stack: Stack, sale, user_id: str,
                                            expected: set[str]) -> None:
    product, activity = sale
    assert await bad_fields(buy(stack, activity.id, user_id)) == expected
    assert await query(stack.db_url, ORDERS_AND_STOCK, (product.id,)) == [(0, 10)]


async def test_seckill_reports_every_bad_field(stack: Stack) -> None:
    assert await bad_fields(buy(stack, 0, "")) == {"activity_id", "user_id"}


@pytest.mark.parametrize("user_id", ["u" * 64, "\U0001f600" * 64, "a b", "Ünïcødé"])
async def test_seckill_accepts_1_to_64_printable_characters(stack: Stack, sale,
                                                            user_id: str) -> None:
    _, activity = sale
    order = await buy(stack, activity.id, user_id)
    assert order.user_id == user_id
    rows = await query(stack.db_url, "SELECT user_id FROM orders WHERE id = %s", (order.id,))
    assert rows == [(user_id.encode(),)]


async def test_repeat_seckill_is_already_purchased(stack: Stack, sale) -> None:
    product, activity = sale
    order = await buy(stack, activity.id, "bob")
    reason, metadata = await refused(buy(stack, activity.id, "bob"),
                                     grpc.StatusCode.ALREADY_EXISTS)
    assert (reason, metadata) == ("ALREADY_PURCHASED", {"order_id": str(order.id)})
    assert await query(stack.db_url, ORDERS_AND_STOCK, (product.id,)) == [(1, 9)]


async def test_seckill_past_the_last_unit_is_sold_out(stack: Stack) -> None:
    product = await make_product(stack, stock=1)
    activity = await make_activity(stack, product.id)
    await buy(stack, activity.id, "first")
    reason, metadata = await refused(buy(stack, activity.id, "second"),
                                     grpc.StatusCode.FAILED_PRECONDITION)
    assert (reason, metadata) == ("SOLD_OUT", {"activity_id": str(activity.id)})
    assert await query(stack.db_url, ORDERS_AND_STOCK, (product.id,)) == [(1, 0)]


@pytest.mark.parametrize(("start_s", "end_s", "reason"), [
    (3600, 7200, "NOT_STARTED"),
    (-7200, -3600, "ENDED"),
])
async def test_seckill_outside_the_window_is_refused(stack: Stack, start_s: float,
                                                     end_s: float, reason: str) -> None:
    product = await make_product(stack, stock=5)
    activity = await make_activity(stack, product.id, start_s=start_s, end_s=end_s)
    assert await refused(buy(stack, activity.id, "alice"),
                         grpc.StatusCode.FAILED_PRECONDITION) == (
        reason, {"activity_id": str(activity.id)})
    assert await query(stack.db_url, ORDERS_AND_STOCK, (product.id,)) == [(0, 5)]


async def test_seckill_follows_a_window_moved_by_update(stack: Stack) -> None:
    product = await make_product(stack, stock=5)
    activity = await make_activity(stack, product.id, start_s=3600, end_s=7200)
    await update(stack, activity_pb2.Activity(id=activity.id, start_time=timestamp(-1)),
                 ["start_time"])
    assert (await buy(stack, activity.id, "alice")).activity_id == activity.id
    await update(stack, activity_pb2.Activity(id=activity.id, end_time=timestamp(-0.5)),
                 ["end_time"])
    assert (await refused(buy(stack, activity.id, "bob"),
                          grpc.StatusCode.FAILED_PRECONDITION))[0] == "ENDED"


# --- pagination --------------------------------------------------------------------------------

@pytest.mark.parametrize("count", [0, 6, 7])
async def test_list_activities_walks_every_row_once(stack: Stack, count: int) -> None:
    product = await make_product(stack)
    ids = [(await make_activity(stack, product.id)).id for _ in range(count)]
    pages = await walk(stack.activities.ListActivities,
                       activity_pb2.ListActivitiesRequest(page_size=3), "activities")
    assert pages == [ids[i:i + 3] for i in range(0, count, 3)] or (count, pages) == (0, [[]])


@pytest.mark.parametrize(("page_size", "served"), [(0, 50), (1000, 1000), (5000, 1000)])
async def test_list_activities_page_size_defaults_to_50_and_caps_at_1000(
        stack: Stack, page_size: int, served: int) -> None:
    product = await make_product(stack)
    values = ", ".join(f"({product.id}, 'a{i}', '2030-01-01', '2030-01-02', UTC_TIMESTAMP(6),"
                       " 0, 1000)" for i in range(1001))
    await query(stack.db_url, "INSERT INTO activities (product_id, name, start_time, end_time,"
                f" create_time, price_cents, payment_window_ms) VALUES {values}")
    ids = [row[0] for row in await query(stack.db_url, "SELECT id FROM activities ORDER BY id")]
    first = await stack.activities.ListActivities(activity_pb2.ListActivitiesRequest(
        page_size=page_size))
    assert [a.id for a in first.activities] == ids[:served] and first.next_page_token
    assert not any(a.HasField("product") for a in first.activities)


@pytest.mark.parametrize(("request_fields", "field"), [
    ({"page_size": -1}, "page_size"),
    ({"page_token": "garbage"}, "page_token"),
    ({"page_token": "eyJhZnRlciI6IDN9"}, "page_token"),  # base64 of '{"after": 3}'
    ({"page_token": DEEP_TOKEN}, "page_token"),
])
async def test_list_activities_rejects_bad_page_requests(stack: Stack, request_fields: dict,
                                                         field: str) -> None:
    assert await bad_fields(stack.activities.ListActivities(
        activity_pb2.ListActivitiesRequest(**request_fields))) == {field}
