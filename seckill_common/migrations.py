"""Numbered SQL migrations (`migrations/NNNN_name.sql`), applied once each at start-up.

Several processes may start at once: a server-side named lock (GET_LOCK) lets one apply while
the others wait, then find nothing left to do. Every statement is idempotent, because MySQL DDL
commits implicitly and a crash can leave a migration half applied: IF NOT EXISTS where both
servers have it, and for ALTER TABLE (atomic on both, but MySQL has no ADD COLUMN IF NOT
EXISTS) an error saying its change is already there means the statement committed before.
"""

from __future__ import annotations

import logging
import re
from importlib import resources

import aiomysql
import pymysql

from seckill_common.config import Settings
from seckill_common.db import connect_kwargs, error_code

log = logging.getLogger(__name__)
LOCK_NAME = "seckill.schema_migrations"
LOCK_TIMEOUT_S = 120
_FILE = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")
# Duplicate column, duplicate key name, can't drop (already gone), duplicate CHECK name
# (MariaDB, MySQL).
ALREADY_ALTERED = {1060, 1061, 1091, 1826, 3822}


class MigrationError(RuntimeError):
    pass


def available() -> list[tuple[int, str, str]]:
    """(version, file name, SQL) of every migration shipped, in order."""
    found = []
    for entry in resources.files("seckill_common").joinpath("migrations").iterdir():
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
    conn = await aiomysql.connect(**connect_kwargs(settings))
    applied_now: list[str] = []
    try:
        async with conn.cursor() as cur:
            await cur.execute("SET SESSION sql_notes = 0")  # no "already exists" warnings
            await cur.execute("SELECT GET_LOCK(%s, %s)", (LOCK_NAME, LOCK_TIMEOUT_S))
            (got,) = await cur.fetchone()
            if got != 1:
                raise MigrationError(f"could not take the migration lock in {LOCK_TIMEOUT_S}s")
            try:
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
                await cur.execute("SELECT RELEASE_LOCK(%s)", (LOCK_NAME,))
                await cur.fetchone()
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
