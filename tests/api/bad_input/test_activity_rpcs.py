"""Bad input to ActivityService's create, get, list, Seckill and update: hostile values in every
field, each answer checked against the protos' documented errors."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from google.protobuf import field_mask_pb2, timestamp_pb2
from hypothesis import strategies as st
from seckill.v1 import activity_pb2

from seckill_common.api.validation import MAX_PER_USER_LIMIT
from tests.helpers.bad_input import (
    Prober,
    method_path,
)
from tests.helpers.bad_input_rules import (
    ACTIVITY,
    MAX_NAME,
    MAX_USER_ID,
    mask_paths,
    page_tokens,
    present,
    property_test,
    refused_with,
    remove,
    row,
    seconds_at,
    text_ok,
    token,
    too_big,
)
from tests.helpers.hostile_values import (
    NOW,
    int32s,
    known_ids,
    masks,
    names,
    set_time,
    timestamps,
    user_ids,
)

# A database warning (truncation, overflow) raised in a service becomes an error there, and so
# an INTERNAL answer that fails the test.
pytestmark = pytest.mark.filterwarnings("error::pymysql.err.Warning")

MIN_TIME = datetime(1970, 1, 1, tzinfo=UTC)
MAX_TIME = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)
ACTIVITY_PATHS = ("name", "start_time", "end_time", "price_cents", "payment_window",
                  "per_user_limit")


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


def activities_strategy() -> st.SearchStrategy[activity_pb2.Activity]:
    hostile = st.builds(_activity, known_ids, known_ids, names, timestamps, timestamps)
    # A seeded product and a window around now, ordered or not: these reach the database.
    plausible = st.builds(
        _activity, known_ids, st.integers(1, 2), names,
        st.integers(-86400, 86400).map(lambda d: seconds_at(NOW + d)),
        st.integers(-86400, 10 * 86400).map(lambda d: seconds_at(NOW + d)))
    return st.one_of(hostile, plausible)


def _activity(id_: int, product_id: int, name: str, start: timestamp_pb2.Timestamp | None,
              end: timestamp_pb2.Timestamp | None) -> activity_pb2.Activity:
    activity = activity_pb2.Activity(id=id_, product_id=product_id, name=name)
    set_time(activity, "start_time", start)
    set_time(activity, "end_time", end)
    return activity


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
