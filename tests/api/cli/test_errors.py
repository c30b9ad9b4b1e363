"""The `seckill` CLI's errors: each class told in plain words with its exit code (refusals of
the sale, invalid arguments, a missing or wrong admin token, an unreachable service, a
deadline, usage, a rate limit)."""

from __future__ import annotations

import socket

import pytest

from seckill_cli.client import Exit
from tests.helpers.cli import Seckill
from tests.helpers.factories import make_activity, make_product
from tests.helpers.stack import (
    Stack,
    free_port,
    start_stack,
)


async def test_already_holds_an_order(seckill: Seckill, stack: Stack) -> None:
    aid = (await make_activity(stack, (await make_product(stack)).id)).id
    first = (await seckill("--json", "buy", "--activity", str(aid), "--user", "u")).json()
    again = await seckill("buy", "--activity", str(aid), "--user", "u")
    assert again.code == Exit.REFUSED
    assert (f"user u already holds order {first['order']['id']} for activity {aid}"
            in again.err)


async def test_sold_out_and_not_started(seckill: Seckill, stack: Stack) -> None:
    product = await make_product(stack, stock=1)
    aid = (await make_activity(stack, product.id)).id
    assert (await seckill("buy", "--activity", str(aid), "--user", "a")).code == Exit.OK
    late = await seckill("buy", "--activity", str(aid), "--user", "b")
    assert late.code == Exit.REFUSED and f"activity {aid} is sold out" in late.err

    early_id = (await make_activity(stack, (await make_product(stack)).id, start_s=3600)).id
    early = await seckill("--json", "buy", "--activity", str(early_id), "--user", "a")
    assert early.code == Exit.REFUSED and "has not started yet" in early.err
    # --json: the error as a document on stdout too, with the status details.
    error = early.json()["error"]
    assert error["code"] == "FAILED_PRECONDITION"
    assert error["details"][0]["reason"] == "NOT_STARTED"


async def test_invalid_arguments_list_every_violation(seckill: Seckill) -> None:
    bad = await seckill("product", "create", "--name", " ", "--price-cents", "-1")
    assert bad.code == Exit.REFUSED
    assert "invalid request:" in bad.err
    assert "- product.name: is required" in bad.err
    assert "- product.price_cents: must be within" in bad.err
    zero = await seckill("product", "get", "0")
    assert zero.code == Exit.REFUSED and "- id: must be a positive id" in zero.err


async def test_admin_token_missing_or_wrong(seckill: Seckill,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SECKILL_ADMIN_TOKEN")
    missing = await seckill("product", "create", "--name", "Tea")
    assert missing.code == Exit.REFUSED
    assert "missing 'authorization: Bearer <token>'" in missing.err
    assert "set SECKILL_ADMIN_TOKEN" in missing.err
    monkeypatch.setenv("SECKILL_ADMIN_TOKEN", "not-the-token")
    wrong = await seckill("product", "create", "--name", "Tea")
    assert wrong.code == Exit.REFUSED and "not the admin token" in wrong.err
    assert "set SECKILL_ADMIN_TOKEN" in wrong.err


async def test_unreachable_service(seckill: Seckill) -> None:
    closed = f"127.0.0.1:{free_port()}"
    down = await seckill("--product-addr", closed, "product", "list")
    assert down.code == Exit.UNREACHABLE
    assert (f"cannot reach the product service at {closed} (is it running? `make up`)"
            in down.err)


async def test_deadline_exceeded(seckill: Seckill) -> None:
    # A server that takes the connection and never answers: the deadline decides, not a race
    # between a 1 us timer and a fast local answer.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        slow = await seckill("--activity-addr", f"127.0.0.1:{silent.getsockname()[1]}",
                             "--timeout", "0.000001", "activity", "list")
    assert slow.code == Exit.UNREACHABLE
    assert "did not answer within 1e-06s (--timeout)" in slow.err


async def test_usage_errors(seckill: Seckill) -> None:
    assert (await seckill()).code == Exit.USAGE
    assert (await seckill("product", "get", "one")).code == Exit.USAGE
    nothing = await seckill("product", "update", "1")
    assert nothing.code == Exit.USAGE and "nothing to update" in nothing.err
    when = await seckill("activity", "create", "--product", "1", "--name", "x", "--end", "soon")
    assert when.code == Exit.USAGE and "is not a time" in when.err
    assert (await seckill("sale", "simulate", "--users", "0")).code == Exit.USAGE
    assert (await seckill("--help")).code == Exit.OK


async def test_rate_limited(db_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    # A limit a single user reaches at once: the CLI's answer to RESOURCE_EXHAUSTED is tested.
    stack = await start_stack(db_url, SECKILL_RATE_LIMIT_USER="0.01",
                              SECKILL_RATE_LIMIT_USER_BURST="1")
    try:
        seckill = Seckill(stack, capsys)
        assert (await seckill("orders", "--user", "greedy")).code == Exit.OK
        again = await seckill("orders", "--user", "greedy")
        assert again.code == Exit.REFUSED
        assert "rate limited:" in again.err and "retry in" in again.err
    finally:
        await stack.stop()
