"""Migrations as a deployment step: `seckill migrate` applies them, services started with
SECKILL_MIGRATE_ON_START=false then serve with an account that has no DDL rights, and a service
refuses to start, in one clear line and a non-zero exit, on a schema older than its code.

Each test names SECKILL_MIGRATE_ON_START=false where it uses it: that is what it is about."""

from __future__ import annotations

import asyncio
import json
import sys
import uuid

import aiomysql
import pytest
from seckill.v1 import activity_pb2, product_pb2

from product_svc.server import DEFINITION as PRODUCT
from seckill_common.database import migrations
from seckill_common.runtime.server import StartupError, start_service
from tests.helpers.factories import make_activity, make_product
from tests.helpers.stack import REPO, query, settings_for, start_stack, subprocess_env

SHIPPED = [name for _version, name, _sql in migrations.available()]
NO_MIGRATE = {"SECKILL_MIGRATE_ON_START": "false"}


async def run_cli(*argv: str, env: dict[str, str]) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", *argv, env=env, cwd=REPO,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def step_env(db_url: str) -> dict[str, str]:
    """What a migration Job gets: the database URL, and no admin token (it serves nothing)."""
    env = subprocess_env(db_url)
    del env["SECKILL_ADMIN_TOKEN"]
    return env


async def create_app_account(db_url: str) -> str:
    """An account with the rights the services need to serve, and no DDL: the URL to use."""
    base, database = db_url.rsplit("/", 1)
    host, port = base.rsplit("@", 1)[1].split(":")
    user, password = f"app_{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    conn = await aiomysql.connect(host=host, port=int(port), user="root", autocommit=True)
    try:
        async with conn.cursor() as cur:
            await cur.execute("CREATE USER %s@'%%' IDENTIFIED BY %s", (user, password))
            await cur.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON `{database}`.* "
                              "TO %s@'%%'", (user,))
    finally:
        conn.close()
    return f"mysql://{user}:{password}@{host}:{port}/{database}"


async def test_migrate_then_serve_without_ddl_rights(db_url: str) -> None:
    env = step_env(db_url)
    check = await run_cli("seckill_cli", "migrate", "--check", env=env)
    assert check[0] == 1 and f"{len(SHIPPED)} migration(s) pending" in check[1]

    code, out, err = await run_cli("seckill_cli", "--json", "migrate", env=env)
    assert code == 0, err
    assert json.loads(out) == {"applied": SHIPPED, "pending": []}
    assert [row[0] for row in await query(db_url, "SELECT name FROM schema_migrations "
                                                  "ORDER BY version")] == SHIPPED
    # Again: nothing to do, through the module entry point this time.
    code, out, _err = await run_cli("seckill_common.database.migrations", env=env)
    assert code == 0
    assert json.loads(out.splitlines()[-1])["message"] == "the schema is current"

    # The services, as the deployments run them: an account without DDL rights, no migrating.
    stack = await start_stack(await create_app_account(db_url), **NO_MIGRATE)
    try:
        product = await make_product(stack, stock=5)
        activity = await make_activity(stack, product.id)
        order = await stack.activities.Seckill(activity_pb2.SeckillRequest(
            activity_id=activity.id, user_id="alice"))
        assert order.order.user_id == "alice"
        assert (await stack.products.GetProduct(
            product_pb2.GetProductRequest(id=product.id))).stock == 4
    finally:
        await stack.stop()


async def test_a_service_refuses_an_empty_database_when_not_migrating(db_url: str) -> None:
    with pytest.raises(StartupError, match="schema is older than this code") as refused:
        await start_service(PRODUCT, settings_for(db_url, **NO_MIGRATE))
    assert f"{len(SHIPPED)} migration(s) not applied" in str(refused.value)
    assert "seckill migrate" in str(refused.value)
    assert await query(db_url, "SHOW TABLES") == []  # it changed nothing


async def test_a_service_refuses_a_schema_older_than_its_code(db_url: str) -> None:
    await migrations.migrate(settings_for(db_url))
    newest = SHIPPED[-1]
    # The schema as an older release left it: the newest migration not applied yet.
    await query(db_url, "DELETE FROM schema_migrations WHERE name = %s", (newest,))
    env = {**subprocess_env(db_url, SECKILL_PRODUCT_ADDR="127.0.0.1:0"), **NO_MIGRATE}
    code, out, _err = await run_cli("product_svc", env=env)
    assert code == 1
    errors = [json.loads(line) for line in out.splitlines()
              if line.startswith("{") and json.loads(line)["level"] == "ERROR"]
    assert len(errors) == 1, out
    assert "schema is older than this code" in errors[0]["message"]
    assert newest in errors[0]["message"] and "seckill migrate" in errors[0]["message"]
    assert "listening" not in out


async def test_migrate_needs_only_the_database_url(db_url: str) -> None:
    env = {key: value for key, value in step_env(db_url).items()
           if not key.startswith("SECKILL_") or key == "SECKILL_MYSQL_URL"}
    assert (await run_cli("seckill_cli", "migrate", env=env))[0] == 0
    bad = {**env, "SECKILL_MYSQL_URL": "postgres://x/y"}
    code, _out, err = await run_cli("seckill_cli", "migrate", env=bad)
    assert code == 2 and "SECKILL_MYSQL_URL must look like" in err


async def test_an_init_container_check_waits_for_the_migration(db_url: str) -> None:
    """`--check --wait`: what each Kubernetes pod runs before its service, so that pods wait
    for the migration Job rather than crash-loop on the refusal above."""
    waiting = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "seckill_common.database.migrations", "--check", "--wait", "60",
        env=step_env(db_url), cwd=REPO, stdout=asyncio.subprocess.PIPE)
    assert waiting.stdout is not None
    first = json.loads(await waiting.stdout.readline())
    assert first["message"].startswith("waiting for the migration step")
    await migrations.migrate(settings_for(db_url))
    out, _ = await asyncio.wait_for(waiting.communicate(), 30)
    assert waiting.returncode == 0
    assert json.loads(out.splitlines()[-1])["message"] == "the schema is current"
