"""The documented ways in work as written: examples/python_client.py, the grpcurl walk-through
(docs/CLIENTS.md) and the Kubernetes probe snippet (docs/OPERATIONS.md)."""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import shutil
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import yaml

from activity_svc.server import DEFINITION as ACTIVITY
from seckill_common.runtime.auth import UserTokens
from tests.helpers.stack import ADMIN_TOKEN, REPO, Stack, query, start_stack, subprocess_env

SECRET = "example-user-token-secret-0123456789abcdef"
BIN = Path(sys.executable).parent


def doc_section(doc: str, title: str) -> str:
    """The text of `doc` from the heading `title` to the next heading of its level or above."""
    lines = (REPO / doc).read_text(encoding="utf-8").splitlines(keepends=True)
    start = lines.index(f"{title}\n")
    level, fenced = len(title.split(" ")[0]), False
    for end in range(start + 1, len(lines)):
        fenced ^= lines[end].lstrip().startswith("```")
        heading = re.match(r"(#+) ", lines[end])
        if not fenced and heading and len(heading[1]) <= level:
            break
    else:
        end = len(lines)
    return "".join(lines[start:end])


async def run(*args: str, env: dict[str, str], cwd: Path = REPO) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        *args, cwd=cwd, env=env, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(process.communicate(), 60)
    return process.returncode or 0, out.decode()


def stack_env(stack: Stack, **overrides: str) -> dict[str, str]:
    return subprocess_env(stack.db_url, SECKILL_PRODUCT_ADDR=stack.product.address,
                          SECKILL_ACTIVITY_ADDR=stack.activity.address,
                          SECKILL_ORDER_ADDR=stack.order.address, **overrides)


async def run_example(stack: Stack, *args: str) -> str:
    code, out = await run(sys.executable, "examples/python_client.py", *args,
                          env=stack_env(stack))
    assert code == 0, out
    return out


def assert_sale(out: str) -> int:
    """Checks the example's story; returns the order id it printed."""
    order = re.search(r"^alice: order (\d+)$", out, re.M)
    assert order, out
    activity = re.search(r"^activity (\d+): Tea rush$", out, re.M)
    assert activity and re.search(r"^product \d+: Tea, stock 1$", out, re.M), out
    assert f"alice: ALREADY_EXISTS ALREADY_PURCHASED, order {order[1]}\n" in out
    assert "alice-friend: FAILED_PRECONDITION SOLD_OUT\n" in out
    assert f"orders of activity {activity[1]}: {order[1]} (alice)\n" in out
    return int(order[1])


async def test_python_client_example(stack: Stack) -> None:
    order_id = assert_sale(await run_example(stack))
    assert await query(stack.db_url, "SELECT user_id FROM orders") == [(b"alice",)]
    assert await query(stack.db_url, "SELECT id FROM orders") == [(order_id,)]


@pytest.fixture
async def secured(db_url: str) -> AsyncIterator[Stack]:
    running = await start_stack(db_url, SECKILL_USER_TOKEN_SECRET=SECRET)
    yield running
    await running.stop()


async def test_python_client_example_with_user_tokens(secured: Stack) -> None:
    token = UserTokens(SECRET).issue("alice", ttl_s=300)
    assert_sale(await run_example(secured, "--user-token", token))
    # Without the token the first Seckill is refused, and the example says so (exit 1).
    code, out = await run(sys.executable, "examples/python_client.py", env=stack_env(secured))
    assert code == 1 and "UNAUTHENTICATED" in out


@pytest.mark.skipif(not (shutil.which("jq") and shutil.which("bash")), reason="needs bash, jq")
async def test_grpcurl_walkthrough(stack: Stack, tmp_path: Path) -> None:
    script = re.search(r"```sh\n(.*?)```", doc_section("docs/CLIENTS.md", "## grpcurl"), re.S)
    assert script and script[1].startswith(". .run/stack.env")
    (tmp_path / ".run").mkdir()
    exports = {"SECKILL_ADMIN_TOKEN": ADMIN_TOKEN, "SECKILL_PRODUCT_ADDR": stack.product.address,
               "SECKILL_ACTIVITY_ADDR": stack.activity.address,
               "SECKILL_ORDER_ADDR": stack.order.address}
    (tmp_path / ".run/stack.env").write_text(
        "".join(f"export {k}={shlex.quote(v)}\n" for k, v in exports.items()))
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    _, out = await run("bash", "-c", script[1], env=env, cwd=tmp_path)
    # The four refusals the walk-through shows, and no other error.
    assert re.findall(r"Code: (\w+)", out) == ["AlreadyExists"] + ["FailedPrecondition"] * 3, out
    assert '"reason":"ALREADY_PURCHASED"' in out and '"reason":"SOLD_OUT"' in out
    # Quantities: the limit named, the units left named, 3 units at 3 x 350 cents given back.
    assert '"per_user_limit":"3","quantity":"4"},"reason":"QUANTITY_OVER_LIMIT"' in out
    assert '"available":"2","quantity":"3"},"reason":"INSUFFICIENT_STOCK"' in out
    assert '"quantity": 3,\n  "total_price_cents": "1050"' in out
    assert '"status": "SERVING"' in out and "Message template:" in out
    assert '"description": "Green, loose leaf"' in out and '"name": "Tea rush, day 2"' in out
    # It deletes what it made: the order, the activity and the product.
    for table in ("orders", "activities", "products"):
        assert await query(stack.db_url, f"SELECT COUNT(*) FROM {table}") == [(0,)]


def test_kubernetes_probes() -> None:
    section = doc_section("docs/OPERATIONS.md", "## Health probes (Kubernetes)")
    deployment = yaml.safe_load(re.search(r"```yaml\n(.*?)```", section, re.S)[1])  # type: ignore[index]
    pod = deployment["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] > 5  # SECKILL_SHUTDOWN_GRACE's default
    (container,) = pod["containers"]
    port = container["ports"][0]["containerPort"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["SECKILL_ACTIVITY_ADDR"] == f"0.0.0.0:{port}"
    assert container["command"] == ["python", "-m", "activity_svc"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        grpc_probe = container[probe]["grpc"]
        assert grpc_probe["port"] == port
        assert grpc_probe.get("service", "") in {"", *ACTIVITY.service_names}
    # The exec alternative parses too.
    exec_probe = yaml.safe_load(re.findall(r"```yaml\n(.*?)```", section, re.S)[1])
    assert exec_probe["readinessProbe"]["exec"]["command"][0] == "grpc_health_probe"
