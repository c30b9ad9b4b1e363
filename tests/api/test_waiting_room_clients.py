"""Waiting rooms as their clients meet them: `seckill buy` waits in line then buys with the
pass, examples/queue_client.py, watchers told how many wait, user tokens binding the place
and the pass, and two workers of one process serving one line."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

import grpc
import pytest
from seckill.v1 import activity_pb2, activity_pb2_grpc

from seckill_cli import cli
from seckill_cli.client import Exit
from seckill_common.runtime.auth import UserTokens
from seckill_stack.services import python_env
from tests.helpers.processes import start_processes
from tests.helpers.rpc import error_details
from tests.helpers.stack import (
    ADMIN_TOKEN,
    REPO,
    Stack,
)
from tests.helpers.waiting_room import (
    at,
    first,
    join,
    room_sale,
    running_with,
    state,
    until,
)


async def test_seckill_buy_waits_in_line_then_buys_with_the_pass(
        stack: Stack, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SECKILL_ADMIN_TOKEN", ADMIN_TOKEN)
    activity = await room_sale(stack, stock=1)
    flags = ["--product-addr", stack.product.address, "--activity-addr",
             stack.activity.address, "--order-addr", stack.order.address]
    capsys.readouterr()
    assert await cli.run([*flags, "buy", "--activity", str(activity.id), "--user", "alice"]
                         ) == Exit.OK
    assert "user alice bought one unit" in capsys.readouterr().out
    assert await cli.run([*flags, "buy", "--activity", str(activity.id), "--user", "bob"]
                         ) == Exit.REFUSED
    assert "sold out" in capsys.readouterr().err


async def test_the_queue_client_example_waits_then_buys(stack: Stack) -> None:
    activity = await room_sale(stack, stock=1, start_s=2)
    process = await asyncio.create_subprocess_exec(
        sys.executable, "examples/queue_client.py", str(activity.id), "alice",
        "--activity-addr", stack.activity.address, cwd=REPO,
        env=python_env(dict(os.environ)), stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(process.communicate(), 30)
    lines = out.decode().splitlines()
    assert process.returncode == 0, lines
    # Pre-queued, unless starting Python on a busy machine took longer than the 2 s.
    assert lines[0].startswith(("PRE_QUEUED: the line is drawn in ", "WAITING: position 1")), lines
    assert lines[-2].startswith("ADMITTED: pass valid until "), lines
    assert lines[-1].startswith("order ") and lines[-1].endswith(": 1 unit(s)"), lines


async def test_watchers_see_how_many_wait(stack: Stack) -> None:
    activity = await room_sale(stack, stock=5, start_s=60)  # the pre-queue is open
    watcher: Any = stack.activities.WatchActivity(
        activity_pb2.WatchActivityRequest(id=activity.id))
    try:
        assert (await watcher.read()).waiting == 0
        for user in ("a", "b", "c"):
            await first(stack.activities, activity.id, user)
        async with asyncio.timeout(10):
            while (await watcher.read()).waiting != 3:
                pass
    finally:
        watcher.cancel()


async def test_with_user_tokens_the_place_and_the_pass_are_the_tokens_users(
        db_url: str) -> None:
    secret = "s" * 40  # user tokens on: the setting under test
    tokens = UserTokens(secret)

    def as_user(user: str) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {tokens.issue(user)}"),)

    async with running_with(db_url, SECKILL_USER_TOKEN_SECRET=secret) as stack:
        activity = await room_sale(stack, stock=2)
        call = stack.activities.JoinQueue(
            activity_pb2.JoinQueueRequest(activity_id=activity.id), metadata=as_user("alice"))
        admitted = await until(call, state(activity_pb2.ADMITTED))
        call = stack.activities.JoinQueue(
            activity_pb2.JoinQueueRequest(activity_id=activity.id, user_id="bob"),
            metadata=as_user("alice"))
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await call.read()
        assert raised.value.code() == grpc.StatusCode.PERMISSION_DENIED
        # Alice's pass is not Bob's, whatever Bob's token.
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await stack.activities.Seckill(activity_pb2.SeckillRequest(
                activity_id=activity.id, admission_pass=admitted.admission_pass),
                metadata=as_user("bob"))
        assert error_details(raised.value)["ErrorInfo"].reason == "NOT_ADMITTED"
        reply = await stack.activities.Seckill(activity_pb2.SeckillRequest(
            activity_id=activity.id, admission_pass=admitted.admission_pass),
            metadata=as_user("alice"))
        assert reply.order.user_id == "alice"


async def test_two_workers_of_a_process_serve_one_line(stack: Stack, tmp_path: Path) -> None:
    # Two workers (SECKILL_WORKERS=2): the setting under test; the rest shipped defaults.
    async with start_processes("activity", 1, stack.db_url, tmp_path, peers=stack,
                               SECKILL_WORKERS="2") as extra:
        # A channel per buyer: their connections spread over the workers.
        channels = [grpc.aio.insecure_channel(extra[0].address) for _ in range(7)]
        try:
            stubs = [activity_pb2_grpc.ActivityServiceStub(channel) for channel in channels]
            activity = await room_sale(stack, stock=1)
            admitted = await until(join(stubs[0], activity.id, "u0"),
                                   state(activity_pb2.ADMITTED))
            calls = []
            for position, stub in enumerate(stubs[1:], start=1):
                calls.append(join(stub, activity.id, f"w{position}"))
                await until(calls[-1], at(position))
            await stubs[3].Seckill(activity_pb2.SeckillRequest(
                activity_id=activity.id, user_id="u0", admission_pass=admitted.admission_pass))
            for call in calls:
                await until(call, state(activity_pb2.QUEUE_SOLD_OUT))
        finally:
            for channel in channels:
                await channel.close()
