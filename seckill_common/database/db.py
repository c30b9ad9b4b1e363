"""The MySQL/MariaDB connection pool: one owner (`Database`), opened at start (`create_pool`),
closed at stop (`Database.close`).

Every unit of work is `await db.run(work)`: `work(transaction)` (a `Transaction`: its
statements on its cursor) runs in one transaction, committed when it returns (unless its own
pipeline carried the COMMIT) and rolled back when it raises; a deadlock runs it again from the
start. Driver errors that mean "the database is not there" become `Unavailable`, a statement
that outlives SECKILL_DB_STATEMENT_TIMEOUT becomes `Unavailable` too (without marking the
database down), and a lock wait timeout or a deadlock that outlives its retries becomes
`Aborted`. A transaction whose caller is cancelled mid-statement is ended on the server at once
(KILL), so a caller that left holds no lock, lock wait or connection.

Every wait for the database is bounded on the client too (`client_bound_s`): a caller's
deadline cancels its work (grpc.aio cancels the handler), and whatever no deadline ends (shared
reads, background loops) gives up after SECKILL_DB_CLIENT_TIMEOUT. A connection whose round
trip timed out or was cancelled, its ROLLBACK included, is dropped and its session KILLed:
never pooled with a reply still unread."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, nullcontext
from typing import Any, TypeVar, cast

import aiomysql
import pymysql
from opentelemetry import trace

from seckill_common.api.errors import Aborted, NoAnswer, StatementTimeout, Unavailable
from seckill_common.config import MySQLTarget, Settings, default_of
from seckill_common.database.aiomysql_fix import (
    DropWakingRelease,
    bound_pool_connects,
)
from seckill_common.database.aiomysql_fix import (
    connect as bounded_connect,
)
from seckill_common.database.transaction import Transaction
from seckill_common.runtime.telemetry import tracer

log = logging.getLogger(__name__)
T = TypeVar("T")

# Errors after which the connection cannot be trusted and the server may be gone.
# 1047: a Galera node that is not (or no longer) in the primary component: unusable until it
# has rejoined, like a server that is down.
CONNECTION_ERRORS = {2003, 2006, 2013, 2055, 1927, 1053, 1077, 1079, 1080, 1047}
# A deadlock rolls the transaction back at once: the work is retried from the start in a new
# one. A lock wait timeout (row or metadata lock) is not retried: the caller has already waited
# SECKILL_DB_LOCK_WAIT_TIMEOUT, and retrying would multiply the bound.
DEADLOCK = 1213
LOCK_WAIT_TIMEOUT = 1205
MAX_LOCK_RETRIES = 3
# The statement ran past max_statement_time (MariaDB 1969; MySQL's max_execution_time, 3024).
STATEMENT_TIMEOUTS = {1969, 3024}
UNKNOWN_THREAD = 1094  # KILL of a session that has already ended
ROW_IS_REFERENCED = 1451  # a foreign key still points at the row being deleted
NO_REFERENCED_ROW = 1452  # a foreign key points at a missing row
NO_SUCH_TABLE = 1146  # the schema has not been migrated at all (no schema_migrations)
NOT_SUPPORTED_YET = 1235  # GET_LOCK on a Galera node, in MariaDB releases that refuse it
DUPLICATE_ENTRY = 1062  # a unique key already holds the value
# An ALTER TABLE whose change is already there (a migration re-run after a crash): a duplicate
# column or key name, a column or key already dropped, a duplicate CHECK name (MariaDB, MySQL).
ALREADY_ALTERED = frozenset({1060, 1061, 1091, 1826, 3822})
# How much longer than the server's own statement limit the client waits: the server's answer
# (a clean StatementTimeout on a connection that stays pooled) should come first.
STATEMENT_MARGIN_S = 1.0
MAX_DOOMED = 1000  # abandoned sessions remembered for a KILL at most


def _session_init(settings: Settings, *, bounded: bool) -> str:
    # READ COMMITTED: every read sees the latest commit, and inserts take no gap locks.
    # UTC session clock: DATETIME columns hold UTC, and NOW() agrees across processes.
    sql = ("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED; "
           "SET SESSION time_zone = '+00:00'")
    if bounded:
        # What a call may wait for: a row lock (innodb_lock_wait_timeout), a table's metadata
        # lock (lock_wait_timeout, a day by default: a LOCK TABLES or a long ALTER would
        # otherwise hang every call), and any statement as a whole: max_statement_time on
        # MariaDB (an executable comment, so MySQL, which has no such variable for writes,
        # reads it as a comment).
        # A session that sits idle inside a transaction (its process frozen, its link silent)
        # is ended by the server (MariaDB 10.3+; MySQL reads a comment), so its locks stop
        # every other sale for that long at most.
        wait = int(settings.db_lock_wait_timeout_s)
        sql += (f", innodb_lock_wait_timeout = {wait}, lock_wait_timeout = {wait}"
                f" /*M!100108 , max_statement_time = {settings.db_statement_timeout_s:.3f} */"
                f" /*M!100300 , idle_transaction_timeout ="
                f" {int(settings.db_idle_transaction_timeout_s)} */")
    return sql


def client_bound_s(settings: Settings) -> float:
    """How long the client waits for one database answer when no caller's deadline ends the
    wait sooner: SECKILL_DB_CLIENT_TIMEOUT, but never past the server's statement limit plus
    a margin, so a statement the server would still run is not cut short by the client."""
    bound = settings.db_client_timeout_s
    if settings.db_statement_timeout_s > 0:
        bound = min(bound, settings.db_statement_timeout_s + STATEMENT_MARGIN_S)
    return bound


def connect_kwargs(settings: Settings, *, with_db: bool = True,
                   bounded: bool = False) -> dict[str, object]:
    """Arguments of `aiomysql.connect`. `bounded` adds the lock and statement time limits of
    the calls' pool; start-up work (the migrations' named lock, DDL) must not inherit them."""
    target: MySQLTarget = settings.mysql
    kwargs: dict[str, object] = dict(
        host=target.host,
        port=target.port,
        user=target.user,
        password=target.password,
        charset="utf8mb4",
        autocommit=False,
        connect_timeout=settings.db_connect_timeout_s,
        init_command=_session_init(settings, bounded=bounded),
    )
    if with_db:
        kwargs["db"] = target.database
    return kwargs


async def create_pool(settings: Settings) -> aiomysql.Pool:
    # minsize=0: a pool made while the database is down still opens; calls then fail fast.
    bound_pool_connects()  # a connection's whole handshake within the connect timeout
    pool: aiomysql.Pool = await aiomysql.create_pool(
        minsize=0,
        maxsize=settings.db_pool_size,
        pool_recycle=3600,
        **connect_kwargs(settings, bounded=True),
    )
    return pool


def is_connection_error(exc: BaseException) -> bool:
    if isinstance(exc, pymysql.err.OperationalError | pymysql.err.InterfaceError):
        code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else 0
        return code in CONNECTION_ERRORS or isinstance(exc, pymysql.err.InterfaceError)
    return isinstance(exc, ConnectionError | OSError | asyncio.TimeoutError | TimeoutError)


def error_code(exc: BaseException) -> int:
    if isinstance(exc, pymysql.err.MySQLError) and exc.args and isinstance(exc.args[0], int):
        return exc.args[0]
    return 0


class BoundedCursor:
    """A cursor whose every round trip waits at most `bound_s`.

    aiomysql has no read timeout: a link that goes silent mid-statement would hang its caller
    for good. Each statement's result (`execute`, each `nextset` of a pipeline) gets the bound
    on its own, as the server's max_statement_time bounds each statement. Buffered fetches
    read nothing from the socket and pass straight through.
    """

    def __init__(self, cursor: aiomysql.Cursor, bound_s: float) -> None:
        self._cursor = cursor
        self._bound_s = bound_s

    async def execute(self, sql: str, params: object = None) -> int:
        async with asyncio.timeout(self._bound_s):
            count: int = await self._cursor.execute(sql, params)
        return count

    async def nextset(self) -> bool | None:
        async with asyncio.timeout(self._bound_s):
            more: bool | None = await self._cursor.nextset()
        return more

    async def close(self) -> None:
        """Reads any results left unread (a round trip if there are), then forgets them."""
        async with asyncio.timeout(self._bound_s):
            await self._cursor.close()

    def __getattr__(self, name: str) -> Any:
        # fetchone, fetchall, lastrowid, rowcount...: no I/O on a buffered cursor.
        return getattr(self._cursor, name)


class Database:
    """The pool plus a liveness flag that the health monitor and failing calls share.

    With `settings`, the sessions of cancelled transactions are killed on the server over a
    connection of their own (see `_abandon`); without, they are only disconnected.
    `bound_s` is the client's bound on each wait for the database (`client_bound_s`);
    `ping_bound_s` the health ping's, a connect timeout: a ping answers in milliseconds.
    """

    def __init__(self, pool: aiomysql.Pool, settings: Settings | None = None) -> None:
        self.pool = pool
        self.reachable = asyncio.Event()
        self.reachable.set()
        self.waiting = 0  # calls waiting for a pooled connection (a metric)
        self._releases = DropWakingRelease(pool)
        # A span per transaction only when tracing is on: untraced, not even a no-op span.
        self._tracer = tracer()
        self.on_change: list[Callable[[bool], None]] = []
        self._settings = settings
        # Server thread ids of abandoned sessions; bounded: a reaper that cannot reach the
        # server keeps them for the next one, and the oldest go first.
        self._doomed: deque[int] = deque(maxlen=MAX_DOOMED)
        self.bound_s = (client_bound_s(settings) if settings is not None
                        else float(default_of("db_client_timeout_s")))
        self.ping_bound_s = (settings.db_connect_timeout_s if settings is not None
                             else float(default_of("db_connect_timeout_s")))
        self._reaper: asyncio.Task[None] | None = None

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
    async def transaction(self) -> AsyncIterator[Transaction]:
        """`_transaction`, in a span of its own when tracing is on."""
        span = (nullcontext() if self._tracer is None else self._tracer.start_as_current_span(
            "db.transaction", kind=trace.SpanKind.CLIENT, attributes={"db.system": "mysql"}))
        with span:
            async with self._transaction() as transaction:
                yield transaction

    @asynccontextmanager
    async def _transaction(self, bound_s: float | None = None) -> AsyncIterator[Transaction]:
        """One transaction on a pooled connection: commit on success (unless the work's own
        pipeline carried the COMMIT), roll back on error.

        Every wait (a connection, each statement, COMMIT, ROLLBACK) is bounded by `bound_s`
        (default `self.bound_s`). A connection that saw a connection error is closed, one
        whose round trip timed out or was cancelled is abandoned (`_abandon`): neither is
        returned to the pool.
        """
        bound = self.bound_s if bound_s is None else bound_s
        self.waiting += 1
        try:
            # A new connection's handshake has no timeout of its own in aiomysql, and the pool
            # makes it while every other acquire waits: the bound covers both.
            async with asyncio.timeout(bound):
                conn: aiomysql.Connection = await self.pool.acquire()
        except Exception as exc:
            if is_connection_error(exc) or isinstance(exc, pymysql.err.OperationalError):
                self.mark(False)
                raise Unavailable("database unavailable") from exc
            raise
        finally:
            self.waiting -= 1
        try:
            # autocommit is off: the first statement opens the transaction, which saves the
            # round trip of an explicit BEGIN.
            cur = BoundedCursor(await conn.cursor(), bound)
            # The same methods as the cursor it wraps (a duck type: Transaction names aiomysql's).
            transaction = Transaction(cast(aiomysql.Cursor, cur))
            yield transaction
            await transaction.commit()  # through the bounded cursor
            await cur.close()
        except asyncio.CancelledError:
            # The call was cancelled mid-query: the connection's state is unknown, so drop it;
            # the server rolls back whatever the transaction held.
            self._abandon(conn)
            raise
        except BaseException as exc:
            if isinstance(exc, TimeoutError):
                # No answer in time: the session may still be running on the server, and the
                # idle connections may share the silent link.
                self._abandon(conn)
                self._releases.drop_idle()
                self.mark(False)
                raise NoAnswer(bound) from exc
            if is_connection_error(exc):
                conn.close()
                self.mark(False)
                raise Unavailable("database unavailable") from exc
            await self._roll_back(conn, bound)
            if error_code(exc) in STATEMENT_TIMEOUTS:
                raise StatementTimeout() from exc
            raise
        finally:
            self._releases.release(conn)

    async def _roll_back(self, conn: aiomysql.Connection, bound_s: float) -> None:
        """ROLLBACK after a failed unit of work, or drop the connection.

        A ROLLBACK that fails, times out or is cancelled mid-round-trip leaves the server's
        reply unread: pooled, the connection would hand that reply to its next borrower as the
        answer to another statement. So it is abandoned instead (closed, session KILLed), and
        a cancellation goes on up; any other failure leaves the work's own error to be raised.
        """
        try:
            async with asyncio.timeout(bound_s):
                await conn.rollback()
        except Exception as exc:
            self._abandon(conn)
            if isinstance(exc, TimeoutError):  # no answer: as for any other round trip
                self._releases.drop_idle()
                self.mark(False)
        except BaseException:
            self._abandon(conn)
            raise

    def _abandon(self, conn: aiomysql.Connection) -> None:
        """Drops a connection whose transaction was cancelled, and ends its session.

        Closing the socket is not enough: the server notices a gone client only when it next
        talks to it, so a statement waiting for a lock would wait on (for up to the lock wait
        timeout), then take the lock and hold it a moment, for nobody. KILL ends it at once.
        """
        thread_id = conn.thread_id()
        conn.close()
        if self._settings is None or not thread_id:
            return
        self._doomed.append(thread_id)
        if self._reaper is None:
            self._reaper = asyncio.create_task(self._reap(self._settings), name="db-reaper")

    async def _reap(self, settings: Settings) -> None:
        """KILLs the abandoned sessions over one connection, opened for the burst.

        Every wait is a connect timeout: the link that left those sessions may be the one that
        went silent. Sessions not reached are kept for the next reaper; the server ends them
        meanwhile if they sit in a transaction (idle_transaction_timeout).
        """
        try:
            conn = await bounded_connect(**connect_kwargs(settings))
            try:
                async with conn.cursor() as cur:
                    while self._doomed:
                        thread_id = self._doomed[0]
                        try:
                            async with asyncio.timeout(settings.db_connect_timeout_s):
                                await cur.execute("KILL %s", (thread_id,))
                        except pymysql.err.MySQLError as exc:
                            if is_connection_error(exc):
                                raise
                            if error_code(exc) != UNKNOWN_THREAD:  # answered: no retry helps
                                log.warning("KILL %d refused: %s", thread_id, exc)
                        self._doomed.popleft()
            finally:
                conn.close()
        except Exception as exc:
            # The server may be gone (which ends the sessions anyway) or out of reach.
            log.warning("could not end %d abandoned database session(s): %s",
                        len(self._doomed), exc)
        finally:
            self._reaper = None

    async def run(self, work: Callable[[Transaction], Awaitable[T]]) -> T:
        """Run `work` in a transaction, retrying deadlocks; a lock wait timeout is ABORTED."""
        for attempt in range(1, MAX_LOCK_RETRIES + 1):
            try:
                async with self.transaction() as transaction:
                    return await work(transaction)
            except pymysql.err.OperationalError as exc:
                code = error_code(exc)
                if code == LOCK_WAIT_TIMEOUT:
                    raise Aborted("database lock wait timed out, please retry") from exc
                if code != DEADLOCK:
                    raise
                if attempt == MAX_LOCK_RETRIES:
                    raise Aborted("database deadlock persisted, please retry") from exc
                log.info("deadlock, retrying (attempt %d)", attempt)
        raise AssertionError("unreachable")

    async def ping(self) -> bool:
        try:
            # Untraced: a ping a second is noise. Bounded by a connect timeout, so a silent link
            # turns health NOT_SERVING within seconds.
            async with self._transaction(self.ping_bound_s) as transaction:
                await transaction.execute("SELECT 1")
            self.mark(True)
            return True
        except Exception:
            self.mark(False)
            return False

    async def close(self) -> None:
        self.pool.close()
        await self.pool.wait_closed()
        if self._reaper is not None:  # bounded: a connect timeout, then one KILL per session
            await asyncio.wait({self._reaper})


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
