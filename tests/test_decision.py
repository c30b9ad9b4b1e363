"""The seckill decision, without a database: who wins, and which refusal comes first."""

from __future__ import annotations

from activity_svc.decision import (
    Facts,
    Refused,
    SeckillAttempt,
    Twin,
    Win,
    Window,
    decide,
)


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
