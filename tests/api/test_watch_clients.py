"""WatchActivity as its clients follow it: `seckill watch`, examples/watch_client.py (resuming
after the stream ends) and grpcurl (docs/WATCH.md's line)."""

from __future__ import annotations

import asyncio
import json
import os
import sys

import pytest

from seckill_stack.services import python_env
from tests.helpers.factories import make_activity, make_product
from tests.helpers.stack import (
    REPO,
    Stack,
    start_stack,
)


async def test_the_cli_follows_a_sale_to_its_end(stack: Stack,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    from seckill_cli import cli

    product = await make_product(stack, stock=2)
    activity = await make_activity(stack, product.id, start_s=0.5, end_s=1.5)
    code = await cli.run(["--activity-addr", stack.activity.address, "--json",
                          "watch", str(activity.id)])
    assert code == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    states = [line["state"] for line in lines]
    assert states[0] in ("NOT_STARTED", "OPEN") and states[-1] == "ENDED", states
    assert all(line["units_left"] == 2 for line in lines)


async def test_the_python_example_follows_a_sale_and_resumes(db_url: str) -> None:
    # A lifetime of 1 s (the setting under test) makes the example resume once at least.
    stack = await start_stack(db_url, SECKILL_WATCH_MAX_LIFETIME="1")
    try:
        product = await make_product(stack, stock=4)
        activity = await make_activity(stack, product.id, start_s=-1, end_s=2.5)
        process = await asyncio.create_subprocess_exec(
            sys.executable, "examples/watch_client.py", str(activity.id),
            "--activity-addr", stack.activity.address, cwd=REPO,
            env=python_env(dict(os.environ)), stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT)
        out, _ = await asyncio.wait_for(process.communicate(), 30)
        text = out.decode()
        assert process.returncode == 0, text
        assert "resuming in 0 s" in text, text
        assert text.splitlines()[0].startswith("revision 1: OPEN, 4 left"), text
        assert "ENDED, 4 left, ends in 0 s" in text.splitlines()[-1], text
    finally:
        await stack.stop()


async def test_grpcurl_prints_each_message(stack: Stack) -> None:
    from tests.helpers.wire import grpcurl

    product = await make_product(stack, stock=3)
    activity = await make_activity(stack, product.id, start_s=-1, end_s=1.0)
    # docs/WATCH.md's line, bounded by -max-time: the stream itself does not end at ENDED.
    _, out, err = await grpcurl("-max-time", "3", "-d",
                                json.dumps({"id": activity.id, "min_interval": "1s"}),
                                stack.activity.address,
                                "seckill.v1.ActivityService/WatchActivity")
    states = [json.loads(doc)["state"] for doc in out.replace("}\n{", "}\x00{").split("\x00")
              if doc.strip()]
    assert states == ["OPEN", "ENDED"], (out, err)
    assert "DeadlineExceeded" in err, err
