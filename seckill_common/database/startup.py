"""Start-up's database work, before a pool exists: waiting for the server (creating the
database for whoever migrates), and the connection budget a replica asks of it."""

from __future__ import annotations

import asyncio
import logging

import pymysql

from seckill_common.api.errors import Unavailable
from seckill_common.config import Settings
from seckill_common.database.aiomysql_fix import connect as bounded_connect
from seckill_common.database.errors import is_connection_error
from seckill_common.database.sessions import connect_kwargs

log = logging.getLogger(__name__)


async def wait_for_server(settings: Settings, *, create_database: bool = True) -> None:
    """Block until the server accepts connections: creating the database if it is missing
    (`create_database`, for whoever migrates), else connecting to it.

    Fails with `Unavailable` after SECKILL_DB_STARTUP_TIMEOUT seconds.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + settings.db_startup_timeout_s
    delay = 0.05
    while True:
        try:
            conn = await bounded_connect(**connect_kwargs(settings, with_db=not create_database))
            try:
                if create_database:
                    async with conn.cursor() as cur:
                        await cur.execute("SET SESSION sql_notes = 0")
                        # Identifier quoting: the name comes from our own config, never a client.
                        name = settings.mysql.database.replace("`", "``")
                        await cur.execute(
                            f"CREATE DATABASE IF NOT EXISTS `{name}` "
                            "CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"
                        )
                    await conn.commit()
            finally:
                conn.close()
            return
        except Exception as exc:
            if not (is_connection_error(exc) or isinstance(exc, pymysql.err.OperationalError)):
                raise
            if loop.time() + delay > deadline:
                raise Unavailable(
                    f"database {settings.mysql.redacted()} not reachable: {exc}"
                ) from exc
            log.info("waiting for database %s: %s", settings.mysql.redacted(), exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)


async def connection_limit(settings: Settings) -> int:
    """How many connections the server lets our account open: max_connections, or the account's
    own limit (MAX_USER_CONNECTIONS, which the session's max_user_connections reports) if lower."""
    conn = await bounded_connect(**connect_kwargs(settings))
    try:
        async with conn.cursor() as cur:
            await cur.execute("SELECT @@GLOBAL.max_connections, @@SESSION.max_user_connections")
            server, account = await cur.fetchone()
    finally:
        conn.close()
    return min(int(server), int(account)) if int(account) > 0 else int(server)


def log_connection_budget(settings: Settings, limit: int) -> None:
    """One line with what one replica (all its worker processes) asks of the database; a
    warning, with the numbers, when the database cannot hold it."""
    asks = settings.workers * settings.db_pool_size
    fields = {"workers": settings.workers, "pool_size": settings.db_pool_size,
              "replica_connections": asks, "database_limit": limit}
    if asks > limit:
        log.warning(
            "connection budget: %d workers x pool %d = %d connections for one replica, but the "
            "database allows %d: calls will fail with 'Too many connections' under load; lower "
            "SECKILL_WORKERS or SECKILL_DB_POOL_SIZE, or raise max_connections (replicas x "
            "workers x pool must stay below it)", settings.workers, settings.db_pool_size, asks,
            limit, extra=fields)
    else:
        log.info("connection budget: %d workers x pool %d = %d connections for one replica "
                 "(database allows %d)", settings.workers, settings.db_pool_size, asks, limit,
                 extra=fields)
