"""The `seckill` CLI against the in-process stack.

The CLI runs in this process (`cli.run(argv)`, stdout captured) so the servers keep running
on the same event loop; two tests run it as its own process, as people do."""

from __future__ import annotations

import pytest

from tests.helpers.cli import Seckill
from tests.helpers.stack import (
    ADMIN_TOKEN,
    Stack,
)


@pytest.fixture
def admin_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SECKILL_ADMIN_TOKEN", ADMIN_TOKEN)
    monkeypatch.delenv("SECKILL_USER_TOKEN", raising=False)
    monkeypatch.setenv("COLUMNS", "160")  # rich's width off a terminal: no cell wraps


@pytest.fixture
def seckill(stack: Stack, capsys: pytest.CaptureFixture[str], admin_env: None) -> Seckill:
    return Seckill(stack, capsys)
