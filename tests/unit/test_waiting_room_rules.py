"""What a waiting room decides, without a database or a server: how many are admitted, at
which rate, what a place in the line says, what a pass binds (activity_svc/queue_line.py,
activity_svc/passes.py)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from seckill.v1 import activity_pb2

from activity_svc.passes import Passes
from activity_svc.queue_line import Room, admissions, place, rate_budget

T0 = dt.datetime(2030, 1, 1, 12, 0, 0)


def test_admissions_stop_at_the_units_left_the_slots_and_the_budget() -> None:
    assert admissions([1] * 10, Room(units_left=3, slots=100, budget=100)) == 3
    assert admissions([1] * 10, Room(units_left=30, slots=4, budget=100)) == 4
    assert admissions([1] * 10, Room(units_left=30, slots=100, budget=2)) == 2
    # A buyer for more units than are left is admitted (Seckill names the units left), and
    # takes them all: nobody behind.
    assert admissions([3, 1], Room(units_left=2, slots=100, budget=100)) == 1
    assert admissions([1], Room(units_left=0, slots=100, budget=100)) == 0


def test_a_fixed_rate_admits_no_faster_and_saves_up_no_burst() -> None:
    assert rate_budget(None, 0, T0, T0) >= 1 << 30  # adaptive: no bound here
    assert rate_budget(5, 0, T0, T0) == 1
    assert rate_budget(5, 1, T0, T0 + dt.timedelta(seconds=1)) == 5
    assert rate_budget(5, 6, T0, T0 + dt.timedelta(seconds=1)) == 0
    assert rate_budget(5, 0, T0, T0 + dt.timedelta(hours=1)) == 5  # a second's worth


def test_a_place_is_the_end_first_then_the_turn_then_the_stock() -> None:
    common: dict[str, Any] = {"pre_queued": False, "last_ticket": 10, "rate": 2.0,
                              "start_time": T0, "end_time": T0 + dt.timedelta(hours=1)}
    now = T0 + dt.timedelta(minutes=1)
    assert place(ticket=3, admitted_through=3, units_left=0, now=now,
                 **common).state == activity_pb2.ADMITTED
    assert place(ticket=4, admitted_through=3, units_left=0, now=now,
                 **common).state == activity_pb2.QUEUE_SOLD_OUT
    waiting = place(ticket=7, admitted_through=3, units_left=5, now=now, **common)
    assert (waiting.state, waiting.position, waiting.estimated_wait_s) == (
        activity_pb2.WAITING, 4, 1.5)
    assert place(ticket=None, admitted_through=3, units_left=5, now=now,
                 **common).position == 8  # behind every ticket handed out
    assert place(ticket=None, admitted_through=0, units_left=5, now=T0 - dt.timedelta(1),
                 **{**common, "pre_queued": True}).state == activity_pb2.PRE_QUEUED
    assert place(ticket=1, admitted_through=3, units_left=5, now=common["end_time"],
                 **common).state == activity_pb2.QUEUE_ENDED


def test_a_pass_binds_user_activity_and_expiry() -> None:
    passes = Passes("secret")
    good = passes.issue(7, "alice", dt.datetime(2030, 1, 1, tzinfo=dt.UTC))
    early = dt.datetime(2029, 12, 31, tzinfo=dt.UTC).timestamp()
    passes.check(good, 7, "alice", now=early)
    for args in ((7, "bob"), (8, "alice")):
        with pytest.raises(Exception, match="waiting room") as raised:
            passes.check(good, *args, now=early)
        assert getattr(raised.value, "reason", None) == "NOT_ADMITTED"
    with pytest.raises(Exception, match="expired"):
        passes.check(good, 7, "alice", now=early + 2 * 86400)
    with pytest.raises(Exception, match="waiting room"):
        Passes("another secret").check(good, 7, "alice", now=early)
    with pytest.raises(Exception, match="waiting room"):
        passes.check(good[:-2] + "AA", 7, "alice", now=early)
