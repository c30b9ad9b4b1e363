"""Numbered SQL migrations (`schema/NNNN_name.sql`), applied once each: at a service's
start-up (SECKILL_MIGRATE_ON_START, the default) or as a step of its own (`seckill migrate`,
`python -m seckill_common.database.migrations`) run by a user with DDL rights before the services.

Several processes may start at once: a server-side named lock (GET_LOCK) lets one apply while
the others wait, then find nothing left to do. It is not a lease (database/lease.py), and
cannot be one: the leases table is itself a migration (0007), DDL commits implicitly so no
transaction's fence could guard it, and a session lock ends with its session, so a migrator
that crashes frees it at once, where a lease would keep the others waiting out its time to
live. This module is its one owner (`_migration_lock`). On a Galera cluster a named lock
holds on one node only (and older MariaDB releases refuse it, error 1235, which is then
skipped): there the migration must run as one step at a time through one node (the Kubernetes
Job, via the operator's primary Service).
Every statement is idempotent, because MySQL DDL commits implicitly and a crash can leave a
migration half applied: IF NOT EXISTS where both servers have it, and for ALTER TABLE (atomic
on both, but MySQL has no ADD COLUMN IF NOT EXISTS) an error saying its change is already
there means the statement committed before.

A service that does not migrate checks instead that every migration it ships has been applied,
and refuses to start otherwise (`check_schema`).

"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator
from importlib import resources

import aiomysql
import pymysql

from seckill_common.config import ConfigError, Settings
from seckill_common.database.aiomysql_fix import connect as bounded_connect
from seckill_common.database.errors import (
    ALREADY_ALTERED,
    NO_SUCH_TABLE,
    NOT_SUPPORTED_YET,
    error_code,
)
from seckill_common.database.sessions import connect_kwargs
from seckill_common.database.startup import wait_for_server

log = logging.getLogger(__name__)
LOCK_NAME = "seckill.schema_migrations"
LOCK_TIMEOUT_S = 120
_FILE = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")
CHECK_INTERVAL_S = 2.0  # `--check --wait`: another process applies them; nothing to await


class MigrationError(RuntimeError):
    pass


class SchemaBehind(RuntimeError):
    """The database lacks migrations that this code needs; the service must not serve."""

    def __init__(self, missing: list[str]) -> None:
        self.missing = missing
        super().__init__(
            f"the database schema is older than this code: {len(missing)} migration(s) not "
            f"applied ({', '.join(missing)}); run `seckill migrate` (or start with "
            f"SECKILL_MIGRATE_ON_START=true)")


def available() -> list[tuple[int, str, str]]:
    """(version, file name, SQL) of every migration shipped, in order."""
    found = []
    for entry in resources.files("seckill_common.database").joinpath("schema").iterdir():
        match = _FILE.match(entry.name)
        if match:
            found.append((int(match.group(1)), entry.name, entry.read_text("utf-8")))
    return sorted(found)


def statements(sql: str) -> list[str]:
    """Split a migration file on `;` at line ends; our files hold no procedures."""
    lines = [line for line in sql.splitlines() if not line.strip().startswith("--")]
    return [part.strip() for part in re.split(r";\s*$", "\n".join(lines), flags=re.M)
            if part.strip()]


async def migrate(settings: Settings) -> list[str]:
    """Apply every pending migration; returns the names applied by this call."""
    conn = await bounded_connect(**connect_kwargs(settings))
    applied_now: list[str] = []
    try:
        async with conn.cursor() as cur:
            await cur.execute("SET SESSION sql_notes = 0")  # no "already exists" warnings
            async with _migration_lock(cur):
                await cur.execute(
                    "CREATE TABLE IF NOT EXISTS schema_migrations ("
                    " version INT NOT NULL PRIMARY KEY,"
                    " name VARCHAR(255) NOT NULL,"
                    " applied_at DATETIME(6) NOT NULL"
                    ") ENGINE = InnoDB"
                )
                await cur.execute("SELECT version FROM schema_migrations")
                done = {row[0] for row in await cur.fetchall()}
                for version, name, sql in available():
                    if version in done:
                        continue
                    for statement in statements(sql):
                        await _execute(cur, statement)
                    await cur.execute(
                        "INSERT INTO schema_migrations (version, name, applied_at)"
                        " VALUES (%s, %s, UTC_TIMESTAMP(6))",
                        (version, name),
                    )
                    await conn.commit()
                    applied_now.append(name)
                    log.info("applied migration %s", name)
    finally:
        conn.close()
    return applied_now


async def _execute(cur: aiomysql.Cursor, statement: str) -> None:
    try:
        await cur.execute(statement)
    except pymysql.err.MySQLError as exc:
        if not (statement.upper().startswith("ALTER TABLE")
                and error_code(exc) in ALREADY_ALTERED):
            raise
        log.info("migration statement already applied: %s", exc)


@contextlib.asynccontextmanager
async def _migration_lock(cur: aiomysql.Cursor) -> AsyncIterator[None]:
    """Holds the migration lock (a session lock, GET_LOCK) while the block runs; without one
    where the server has no named locks (Galera). The lock dies with the session: a migrator
    that crashes frees it at once."""
    try:
        await cur.execute("SELECT GET_LOCK(%s, %s)", (LOCK_NAME, LOCK_TIMEOUT_S))
    except pymysql.err.MySQLError as exc:
        if error_code(exc) != NOT_SUPPORTED_YET:
            raise
        log.warning("the database refuses named locks (Galera with wsrep on): migrating "
                    "without one; run a single migration step at a time")
        yield
        return
    (got,) = await cur.fetchone()
    if got != 1:
        raise MigrationError(f"could not take the migration lock in {LOCK_TIMEOUT_S}s")
    try:
        yield
    finally:
        await cur.execute("SELECT RELEASE_LOCK(%s)", (LOCK_NAME,))
        await cur.fetchone()


async def missing(settings: Settings) -> list[str]:
    """The shipped migrations the database has not applied (all of them on an empty one).

    A database ahead of the code (a newer release migrated it) is not an error: migrations only
    add, so older code keeps working during a rolling upgrade.
    """
    conn = await bounded_connect(**connect_kwargs(settings))
    try:
        async with conn.cursor() as cur:
            try:
                await cur.execute("SELECT version FROM schema_migrations")
                done = {row[0] for row in await cur.fetchall()}
            except pymysql.err.MySQLError as exc:
                if error_code(exc) != NO_SUCH_TABLE:
                    raise
                done = set()
    finally:
        conn.close()
    return [name for version, name, _sql in available() if version not in done]


async def check_schema(settings: Settings) -> None:
    """Raises `SchemaBehind` unless every shipped migration has been applied."""
    if needed := await missing(settings):
        raise SchemaBehind(needed)


async def run(settings: Settings, *, check_only: bool = False,
              wait_s: float = 0.0) -> tuple[list[str], list[str]]:
    """The migration step: (applied now, still pending). `check_only` applies nothing; with
    `wait_s` it checks again every few seconds until the schema is current or the time is up
    (a Kubernetes init container waiting for the migration Job)."""
    await wait_for_server(settings, create_database=not check_only)
    if check_only:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        while (pending := await missing(settings)) and loop.time() < deadline:
            log.info("waiting for the migration step: %s pending", ", ".join(pending))
            await asyncio.sleep(min(CHECK_INTERVAL_S, max(0.0, deadline - loop.time())))
        return [], pending
    applied = await migrate(settings)
    return applied, await missing(settings)


def describe(applied: list[str], pending: list[str]) -> str:
    if pending:
        return f"{len(pending)} migration(s) pending: {', '.join(pending)}"
    if applied:
        return f"applied {len(applied)} migration(s): {', '.join(applied)}; the schema is current"
    return "the schema is current"


def main(argv: list[str] | None = None) -> int:
    """`python -m seckill_common.database.migrations [--check]`, configured like the services by
    SECKILL_MYSQL_URL (and SECKILL_DB_CONNECT_TIMEOUT, SECKILL_DB_STARTUP_TIMEOUT)."""
    from seckill_common.runtime.logs import setup_logging

    parser = argparse.ArgumentParser(
        prog="python -m seckill_common.database.migrations",
        description="Apply the database migrations that SECKILL_MYSQL_URL's database lacks.")
    parser.add_argument("--check", action="store_true",
                        help="change nothing: exit 1 if a migration is pending")
    parser.add_argument("--wait", type=float, default=0.0, metavar="S",
                        help="with --check: wait up to S seconds for the schema to become "
                             "current (applied by another process) before giving up")
    args = parser.parse_args(argv)
    if args.wait and not args.check:
        parser.error("--wait goes with --check")
    setup_logging("migrate")
    try:
        settings = Settings.from_env(admin_token_required=False)
    except ConfigError as exc:
        log.error("bad configuration: %s", exc)
        return 2
    try:
        applied, pending = asyncio.run(run(settings, check_only=args.check, wait_s=args.wait))
    except Exception as exc:  # one clear line: unreachable database, refused DDL, ...
        log.error("migration failed: %s", exc)
        return 1
    (log.warning if pending else log.info)(describe(applied, pending),
                                           extra={"applied": applied, "pending": pending})
    return 1 if pending else 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        raise SystemExit(main())
