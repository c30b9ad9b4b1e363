"""The seckill decision, without a database: who wins, and which refusal comes first."""

from __future__ import annotations

import itertools

from activity_svc.decision import (
    Decision,
    Facts,
    Refusal,
    Refused,
    SeckillAttempt,
    Twin,
    Win,
    Window,
    decide,
    error_of,
)
from seckill_common.api.errors import Reason


def outcomes(attempts: list[tuple[int, str]], stock: int | None,
             windows: dict[int, Window] | None = None,
             held: dict[tuple[int, str], int] | None = None) -> list[str]:
    facts = Facts(stock, windows if windows is not None else {1: Window.OPEN}, held or {})
    return [d.error.reason if isinstance(d, Refused) and hasattr(d.error, "reason")
            else d.error.code.name if isinstance(d, Refused)
            else type(d).__name__
            for d in decide([SeckillAttempt(a, u) for a, u in attempts], facts)]


def test_first_come_first_served_until_the_stock_runs_out() -> None:
    assert outcomes([(1, "a"), (1, "b"), (1, "c")], stock=2) == ["Win", "Win", "SOLD_OUT"]


def test_a_twin_of_a_winner_is_answered_with_its_order_not_a_unit() -> None:
    assert outcomes([(1, "a"), (1, "a"), (1, "b")], stock=2) == ["Win", "Twin", "Win"]


def test_a_twin_of_a_refused_attempt_is_refused_alike() -> None:
    assert outcomes([(1, "a"), (1, "b"), (1, "b")], stock=1) == ["Win", "SOLD_OUT", "SOLD_OUT"]


def test_holders_are_told_their_order_before_anything_else() -> None:
    decided = decide([SeckillAttempt(1, "a")],
                     Facts(0, {1: Window.ENDED}, {(1, "a"): 42}))
    [refused] = decided
    assert isinstance(refused, Refused)
    assert refused.error.reason == "ALREADY_PURCHASED"  # type: ignore[attr-defined]
    assert refused.error.metadata == {"order_id": "42"}  # type: ignore[attr-defined]


def test_the_window_comes_before_the_stock() -> None:
    windows = {1: Window.ENDED, 2: Window.NOT_STARTED, 3: Window.OPEN}
    assert outcomes([(1, "a"), (2, "a"), (3, "a")], stock=0, windows=windows) == [
        "ENDED", "NOT_STARTED", "SOLD_OUT"]


def test_window_refusals_take_no_unit() -> None:
    windows = {1: Window.ENDED, 2: Window.OPEN}
    assert outcomes([(1, "a"), (2, "b")], stock=1, windows=windows) == ["ENDED", "Win"]


def test_an_unknown_activity_or_a_gone_product_is_not_found() -> None:
    assert outcomes([(9, "a")], stock=5) == ["NOT_FOUND"]
    assert outcomes([(1, "a")], stock=None) == ["NOT_FOUND"]


def test_activities_of_one_product_share_its_stock() -> None:
    windows = {1: Window.OPEN, 2: Window.OPEN}
    assert outcomes([(1, "a"), (2, "a"), (2, "b")], stock=2, windows=windows) == [
        "Win", "Win", "SOLD_OUT"]


def test_decisions_are_types_callers_can_match() -> None:
    decided = decide([SeckillAttempt(1, "a"), SeckillAttempt(1, "a")],
                     Facts(1, {1: Window.OPEN}, {}))
    assert [type(d) for d in decided] == [Win, Twin]


# --- quantities (issue 17) -------------------------------------------------------------------

def decide_units(asked: list[tuple[str, int]], stock: int, limit: int = 3,
                 held: dict[tuple[int, str], int] | None = None) -> list[Decision]:
    facts = Facts(stock, {1: Window.OPEN}, held or {}, limits={1: limit})
    return decide([SeckillAttempt(1, user, quantity) for user, quantity in asked], facts)


def reasons(decisions: list[Decision]) -> list[str]:
    return [d.error.reason if isinstance(d, Refused) else type(d).__name__  # type: ignore[attr-defined]
            for d in decisions]


def test_a_request_takes_its_whole_quantity_or_nothing() -> None:
    decided = decide_units([("a", 3), ("b", 2)], stock=4)
    assert reasons(decided) == ["Win", "INSUFFICIENT_STOCK"]
    refused = decided[1]
    assert isinstance(refused, Refused)
    assert refused.error.metadata == {  # type: ignore[attr-defined]
        "activity_id": "1", "available": "1", "quantity": "2"}


def test_a_refused_large_request_does_not_block_a_smaller_one_behind_it() -> None:
    # 2 left: 3 is refused naming 2, 1 wins, 2 is refused naming the 1 the winner left.
    decided = decide_units([("a", 3), ("b", 1), ("c", 2), ("d", 1), ("e", 1)], stock=2)
    assert reasons(decided) == ["INSUFFICIENT_STOCK", "Win", "INSUFFICIENT_STOCK", "Win",
                                "SOLD_OUT"]
    assert [d.error.metadata["available"] for d in decided  # type: ignore[attr-defined]
            if isinstance(d, Refused) and d.error.reason == "INSUFFICIENT_STOCK"] == ["2", "1"]  # type: ignore[attr-defined]


def test_sold_out_only_when_no_unit_is_left() -> None:
    assert reasons(decide_units([("a", 3)], stock=0)) == ["SOLD_OUT"]
    assert reasons(decide_units([("a", 3)], stock=1)) == ["INSUFFICIENT_STOCK"]
    assert reasons(decide_units([("a", 3)], stock=3)) == ["Win"]


def test_a_quantity_over_the_limit_is_refused_naming_the_limit_and_takes_nothing() -> None:
    decided = decide_units([("a", 3), ("b", 2)], stock=5, limit=2)
    assert reasons(decided) == ["QUANTITY_OVER_LIMIT", "Win"]
    refused = decided[0]
    assert isinstance(refused, Refused)
    assert refused.error.code.name == "FAILED_PRECONDITION"
    assert refused.error.metadata == {  # type: ignore[attr-defined]
        "activity_id": "1", "per_user_limit": "2", "quantity": "3"}


def test_the_limit_comes_before_the_held_order_and_the_stock() -> None:
    assert reasons(decide_units([("a", 4)], stock=0, held={(1, "a"): 7})) == [
        "QUANTITY_OVER_LIMIT"]
    assert reasons(decide_units([("a", 2)], stock=0, held={(1, "a"): 7})) == [
        "ALREADY_PURCHASED"]


def test_still_one_order_per_user_whatever_its_quantity() -> None:
    # The user's second attempt in the batch is its winner's twin, not a second order.
    assert reasons(decide_units([("a", 1), ("a", 2)], stock=10)) == ["Win", "Twin"]
    # Refused for want of units, the user may still win with a smaller request behind.
    assert reasons(decide_units([("a", 3), ("a", 1)], stock=2)) == [
        "INSUFFICIENT_STOCK", "Win"]


def test_facts_without_limits_allow_one_unit_as_before_quantities() -> None:
    facts = Facts(5, {1: Window.OPEN}, {})
    assert reasons(decide([SeckillAttempt(1, "a"), SeckillAttempt(1, "b", 2)], facts)) == [
        "Win", "QUANTITY_OVER_LIMIT"]


def test_units_won_never_exceed_the_stock_and_winners_get_what_they_asked() -> None:
    for quantities in itertools.product((1, 2, 3), repeat=4):
        for stock in range(0, 8):
            asked = [(f"u{i}", q) for i, q in enumerate(quantities)]
            decided = decide_units(asked, stock)
            taken = sum(q for (_, q), d in zip(asked, decided, strict=True)
                        if isinstance(d, Win))
            assert taken <= stock
            left = stock
            for (_, q), d in zip(asked, decided, strict=True):  # arrival order, greedily
                assert isinstance(d, Win) == (q <= left), (quantities, stock)
                left -= q if isinstance(d, Win) else 0


def test_refusals_are_values_and_error_of_gives_each_its_status() -> None:
    facts = Facts(1, {1: Window.OPEN, 2: Window.ENDED}, {(1, "h"): 9}, {1: 2})
    attempts = [SeckillAttempt(1, "a", 3), SeckillAttempt(1, "h"), SeckillAttempt(2, "b"),
                SeckillAttempt(3, "c"), SeckillAttempt(1, "d", 2), SeckillAttempt(1, "e"),
                SeckillAttempt(1, "f")]
    decided = decide(attempts, facts)
    kinds = [d.kind if isinstance(d, Refused) else type(d).__name__ for d in decided]
    assert kinds == [Refusal.QUANTITY_OVER_LIMIT, Refusal.ALREADY_PURCHASED, Refusal.ENDED,
                     Refusal.NOT_FOUND, Refusal.INSUFFICIENT_STOCK, "Win", Refusal.SOLD_OUT]
    for decision in decided:
        if isinstance(decision, Refused):
            error = error_of(decision)
            if decision.kind is Refusal.NOT_FOUND:
                assert error.code.name == "NOT_FOUND"
            else:  # the ErrorInfo reason is the kind's own name
                assert getattr(error, "reason", None) is Reason[decision.kind.name]
