"""Running the `seckill` CLI in this process against a stack (its stdout captured, its JSON
parsed) or as a process of its own."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pytest

from seckill_cli import cli
from tests.helpers.stack import (
    Stack,
)


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


def addr_flags(stack: Stack) -> list[str]:
    return ["--product-addr", stack.product.address, "--activity-addr", stack.activity.address,
            "--order-addr", stack.order.address]


class Seckill:
    """Runs `seckill ARGS` against one stack, in-process, and captures what it prints."""

    def __init__(self, stack: Stack, capsys: pytest.CaptureFixture[str]) -> None:
        self.stack = stack
        self.capsys = capsys

    async def __call__(self, *argv: str) -> Result:
        self.capsys.readouterr()
        code = await cli.run([*addr_flags(self.stack), *argv])
        captured = self.capsys.readouterr()
        return Result(int(code), captured.out, captured.err)
