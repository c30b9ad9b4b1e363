"""docs/WAITING_ROOM.md as written: its grpcurl walkthrough run as it stands against a real
stack, and its Node note checked with @grpc/grpc-js (examples/queue_client.mjs; skipped when
npm cannot fetch the packages)."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import sys
from pathlib import Path

import pytest
from seckill.v1 import activity_pb2

from tests.helpers.factories import make_activity, make_product
from tests.helpers.stack import ADMIN_TOKEN, REPO, Stack, query

DOC = REPO / "docs" / "WAITING_ROOM.md"
VENV_BIN = Path(sys.executable).parent
NODE_DIR = REPO / ".run" / "node-grpc"  # @grpc/grpc-js and @grpc/proto-loader, fetched once
NODE_PACKAGES = ("@grpc/grpc-js@1", "@grpc/proto-loader@0.7")


def walkthrough() -> str:
    """The shell block under the "grpcurl walkthrough" heading."""
    section = DOC.read_text().split("## grpcurl walkthrough", 1)[1]
    found = re.search(r"```sh\n(.*?)```", section, re.S)
    assert found, "no sh block in the walkthrough"
    return found.group(1)


async def run(argv: list[str], cwd: Path, env: dict[str, str], timeout_s: float
              ) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        *argv, cwd=cwd, env=env, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(process.communicate(), timeout_s)
    return process.returncode or 0, out.decode(), err.decode()


@pytest.mark.skipif(shutil.which("jq") is None, reason="the walkthrough reads JSON with jq")
async def test_the_grpcurl_walkthrough_runs_as_written(stack: Stack, tmp_path: Path) -> None:
    env = {**os.environ, "PATH": f"{VENV_BIN}:{os.environ['PATH']}",
           "SECKILL_ADMIN_TOKEN": ADMIN_TOKEN, "P": stack.product.address,
           "A": stack.activity.address}
    code, out, err = await run(["bash", "-euo", "pipefail", "-c", walkthrough()], tmp_path,
                               env, 60)
    assert code == 0, err
    # alice: PRE_QUEUED, then ADMITTED with a pass, then an order; bob: sold out, then
    # refused without a pass of his own.
    assert '"PRE_QUEUED"' in out, out + err
    assert out.index('"PRE_QUEUED"') < out.index('"ADMITTED"') < out.index('"order"')
    assert out.index('"order"') < out.index('"QUEUE_SOLD_OUT"')
    assert "NOT_ADMITTED" in err
    assert await query(stack.db_url, "SELECT user_id FROM orders") == [(b"alice",)]


def node_env() -> dict[str, str]:
    return {**os.environ, "NODE_PATH": str(NODE_DIR / "node_modules")}


async def node_packages() -> bool:
    """@grpc/grpc-js and @grpc/proto-loader under NODE_DIR, fetched by npm if missing."""
    if (NODE_DIR / "node_modules" / "@grpc" / "proto-loader").is_dir():
        return True
    if shutil.which("npm") is None:
        return False
    NODE_DIR.mkdir(parents=True, exist_ok=True)
    try:
        code, _, _ = await run(["npm", "install", "--no-save", "--no-audit", "--no-fund",
                                "--prefix", str(NODE_DIR), *NODE_PACKAGES], NODE_DIR,
                               dict(os.environ), 180)
    except TimeoutError:
        return False
    return code == 0


async def test_the_node_note_joins_and_reads_the_first_message(stack: Stack) -> None:
    if shutil.which("node") is None or not await node_packages():
        pytest.skip("node, or npm's @grpc/grpc-js and @grpc/proto-loader, not available")
    product = await make_product(stack, stock=1)
    activity = await make_activity(stack, product.id, start_s=60,
                                   waiting_room=activity_pb2.WaitingRoom(enabled=True))
    code, out, err = await run(
        ["node", str(REPO / "examples" / "queue_client.mjs"), stack.activity.address,
         str(activity.id), "dana"], REPO, node_env(), 60)
    assert code == 0, err
    assert "PRE_QUEUED" in out
