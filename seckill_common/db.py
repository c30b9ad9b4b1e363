"""The MySQL/MariaDB connection pool: one owner, opened at start, closed at stop.

Every unit of work runs in `transaction(pool)`; driver errors that mean "the database is not
there" become `Unavailable`, and lock conflicts that outlive their retries become `Aborted`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TypeVar

import aiomysql
import grpc
import pymysql

from seckill_common.config import MySQLTarget, Settings
from seckill_common.errors import ServiceError, Unavailable

log = logging.getLogger(__name__)
T = TypeVar("T")

# Errors after which the connection cannot be trusted and the server may be gone.
CONNECTION_ERRORS = {2003, 2006, 2013, 2055, 1927, 1053, 1077, 1079, 1080}
LOCK_CONFLICTS = {1205, 1213}  # lock wait timeout, deadlock: the transaction was rolled back
MAX_LOCK_RETRIES = 3


class Aborted(ServiceError):
    """A lock conflict that did not clear after retries; the client may retry."""

    code = grpc.StatusCode.ABORTED


def _session_init(settings: Settings) -> str:
    # READ COMMITTED: every read sees the latest commit, and inserts take no gap locks.
    # UTC session clock: DATETIME columns hold UTC, and NOW() agrees across processes.
    # max_statement_time bounds a slow statement on MariaDB (an executable comment, so MySQL,
    # which has no such variable for writes, reads it as a comment).
    return (
        "SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED; "
        f"SET SESSION time_zone = '+00:00', "
        f"innodb_lock_wait_timeout = {int(settings.db_lock_wait_timeout_s)} "
        f"/*M!100108 , max_statement_time = {settings.db_statement_timeout_s:.3f} */"
    )


def connect_kwargs(settings: Settings, *, with_db: bool = True) -> dict[str, object]:
    target: MySQLTarget = settings.mysql
    kwargs: dict[str, object] = dict(
        host=target.host,
        port=target.port,
        user=target.user,
        password=target.password,
        charset="utf8mb4",
        autocommit=False,
        connect_timeout=settings.db_connect_timeout_s,
        init_command=_session_init(settings),
    )
    if with_db:
        kwargs["db"] = target.database
    return kwargs


async def create_pool(settings: Settings) -> aiomysql.Pool:
    # minsize=0: a pool made while the database is down still opens; calls then fail fast.
    return await aiomysql.create_pool(
        minsize=0,
        maxsize=settings.db_pool_size,
        pool_recycle=3600,
        **connect_kwargs(settings),
    )


def is_connection_error(exc: BaseException) -> bool:
    if isinstance(exc, pymysql.err.OperationalError | pymysql.err.InterfaceError):
        code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else 0
        return code in CONNECTION_ERRORS or isinstance(exc, pymysql.err.InterfaceError)
    return isinstance(exc, ConnectionError | OSError | asyncio.TimeoutError | TimeoutError)


def error_code(exc: BaseException) -> int:
    if isinstance(exc, pymysql.err.MySQLError) and exc.args and isinstance(exc.args[0], int):
        return exc.args[0]
    return 0


_COMMITTED = "_seckill_committed"


def committed_in_pipeline(cur: aiomysql.Cursor) -> None:
    """Tells `Database.transaction` that the work's last statement was its own COMMIT (one
    round trip less on a hot path), so there is nothing left to commit."""
    setattr(cur, _COMMITTED, True)


class Database:
    """The pool plus a liveness flag that the health monitor and failing calls share."""

    def __init__(self, pool: aiomysql.Pool) -> None:
        self.pool = pool
        self.reachable = asyncio.Event()
        self.reachable.set()
        self.on_change: list[Callable[[bool], None]] = []

    def mark(self, up: bool) -> None:
        if up == self.reachable.is_set():
            return
        if up:
            self.reachable.set()
            log.info("database reachable again")
        else:
            self.reachable.clear()
            log.warning("database unreachable")
        for callback in self.on_change:
            callback(up)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[aiomysql.Cursor]:
        """One transaction on a pooled connection: commit on success, roll back on error.

        A connection that saw a connection error is closed rather than returned to the pool.
        """
        try:
            conn: aiomysql.Connection = await self.pool.acquire()
        except Exception as exc:
            if is_connection_error(exc) or isinstance(exc, pymysql.err.OperationalError):
                self.mark(False)
                raise Unavailable("database unavailable") from exc
            raise
        try:
            async with conn.cursor() as cur:
                # autocommit is off: the first statement opens the transaction, which saves
                # the round trip of an explicit BEGIN.
                yield cur
                if not getattr(cur, _COMMITTED, False):
                    await conn.commit()
        except asyncio.CancelledError:
            # The call was cancelled mid-query: the connection's state is unknown, so drop it;
            # the server rolls back whatever the transaction held.
            conn.close()
            raise
        except BaseException as exc:
            if is_connection_error(exc):
                conn.close()
                self.mark(False)
                raise Unavailable("database unavailable") from exc
            try:
                await conn.rollback()
            except Exception:
                conn.close()
            raise
        finally:
            self.pool.release(conn)

    async def run(self, work: Callable[[aiomysql.Cursor], Awaitable[T]]) -> T:
        """Run `work` in a transaction, retrying lock conflicts (deadlock, lock wait timeout)."""
        for attempt in range(1, MAX_LOCK_RETRIES + 1):
            try:
                async with self.transaction() as cur:
                    return await work(cur)
            except pymysql.err.OperationalError as exc:
                if error_code(exc) not in LOCK_CONFLICTS:
                    raise
                if attempt == MAX_LOCK_RETRIES:
                    raise Aborted("database lock conflict, please retry") from exc
                log.info("lock conflict %s, retrying (attempt %d)", error_code(exc), attempt)
        raise AssertionError("unreachable")

    async def ping(self) -> bool:
        try:
            async with self.transaction() as cur:
                await cur.execute("SELECT 1")
            self.mark(True)
            return True
        except Exception:
            self.mark(False)
            return False

    async def close(self) -> None:
        self.pool.close()
        await self.pool.wait_closed()


async def wait_for_server(settings: Settings) -> None:
    """Block until the server accepts connections (creating the database if it is missing).

    Fails with `Unavailable` after SECKILL_DB_STARTUP_TIMEOUT seconds.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + settings.db_startup_timeout_s
    delay = 0.05
    while True:
        try:
            conn = await aiomysql.connect(**connect_kwargs(settings, with_db=False))
            try:
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
