"""WatchActivity's pure rules, without a server: the state is the window first, then the
stock; min_interval's default, floor and ceiling; the CLI's live line counts down by the
clock it is given."""

from __future__ import annotations

import datetime as dt

from seckill.v1 import activity_pb2

from activity_svc.watch_view import State, min_interval_s, state_of


def test_state_is_the_window_first_then_the_stock() -> None:
    start = dt.datetime(2030, 1, 1, 12, 0, 0)
    end = start + dt.timedelta(hours=1)
    assert state_of(start, end, start - dt.timedelta(microseconds=1), 0) is State.NOT_STARTED
    assert state_of(start, end, start, 1) is State.OPEN  # start is inclusive
    assert state_of(start, end, start, 0) is State.SOLD_OUT
    assert state_of(start, end, end, 5) is State.ENDED  # end is exclusive


def test_min_interval_has_a_default_a_floor_and_a_ceiling() -> None:
    def request(ms: int | None) -> activity_pb2.WatchActivityRequest:
        r = activity_pb2.WatchActivityRequest(id=1)
        if ms is not None:
            r.min_interval.FromMilliseconds(ms)
        return r

    assert min_interval_s(request(None)) == min_interval_s(request(0)) == 0.5
    assert min_interval_s(request(1)) == 0.1
    assert min_interval_s(request(2000)) == 2.0
    assert min_interval_s(request(10**9)) == 60.0


def test_the_live_line_counts_down_by_the_given_clock() -> None:
    from seckill_cli.watch_sale import live_line

    view = activity_pb2.WatchActivityResponse(units_left=3, state=activity_pb2.OPEN)
    view.activity.id, view.activity.name = 7, "Tea rush"
    start = dt.datetime(2030, 1, 1, 12, tzinfo=dt.UTC)
    view.activity.start_time.FromDatetime(start)
    view.activity.end_time.FromDatetime(start + dt.timedelta(hours=1))
    line = live_line(view, start + dt.timedelta(minutes=15))
    assert line == "#7 Tea rush: OPEN        3 left, ends in 00:45:00 (server clock)"
    assert "opens in 00:00:10" in live_line(view, start - dt.timedelta(seconds=10))
