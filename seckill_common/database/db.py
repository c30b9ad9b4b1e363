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
from prometheus_client import Gauge

from seckill_common.api.errors import Aborted, NoAnswer, StatementTimeout, Unavailable
from seckill_common.config import Settings, default_of
from seckill_common.database.aiomysql_fix import (
    DropWakingRelease,
    bound_pool_connects,
)
from seckill_common.database.aiomysql_fix import (
    connect as bounded_connect,
)
from seckill_common.database.errors import (
    DEADLOCK,
    LOCK_WAIT_TIMEOUT,
    STATEMENT_TIMEOUTS,
    UNKNOWN_THREAD,
    error_code,
    is_connection_error,
)
from seckill_common.database.sessions import client_bound_s, connect_kwargs
from seckill_common.database.transaction import Transaction, TransactionEnded
from seckill_common.tracing import tracer

log = logging.getLogger(__name__)
T = TypeVar("T")

# A deadlock rolls the transaction back at once: the work is retried from the start in a new
# one. A lock wait timeout (row or metadata lock) is not retried: the caller has already waited
# SECKILL_DB_LOCK_WAIT_TIMEOUT, and retrying would multiply the bound.
MAX_LOCK_RETRIES = 3
MAX_DOOMED = 1000  # abandoned sessions remembered for a KILL at most


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
        transaction: Transaction | None = None
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
            ended = await self._ended_from_outside(conn, transaction, exc)
            await self._roll_back(conn, bound)
            if ended:
                raise TransactionEnded() from exc
            if error_code(exc) in STATEMENT_TIMEOUTS:
                raise StatementTimeout() from exc
            raise
        finally:
            self._releases.release(conn)

    async def _ended_from_outside(self, conn: aiomysql.Connection,
                                  transaction: Transaction | None, exc: BaseException) -> bool:
        """Whether the statement that failed with `exc` ran after something outside had ended
        its transaction (docs/DESIGN.md, "A transaction ended from outside"): such work is run
        again, as after a deadlock, whatever the error. One round trip, on a server error only."""
        if (transaction is None or not isinstance(exc, pymysql.err.MySQLError)
                or isinstance(exc, TransactionEnded)):
            return False
        try:
            return await transaction.ended_from_outside()
        except pymysql.err.MySQLError:
            return False
        except BaseException:
            self._abandon(conn)  # no answer, or cancelled: its reply may be unread
            raise

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


# --- metrics: the pool's connections, read at scrape time -------------------------------------

POOL_CONNECTIONS = Gauge("seckill_db_pool_connections",
                         "Database pool connections by state (in_use, idle)",
                         ["service", "state"])
POOL_WAITING = Gauge("seckill_db_pool_waiting", "Calls waiting for a pooled connection",
                     ["service"])
# The pool opens connections as calls need them: in_use against this limit says how close the
# pool is to making calls wait.
POOL_MAX = Gauge("seckill_db_pool_max_connections",
                 "Most connections the pool opens (SECKILL_DB_POOL_SIZE)", ["service"])


def watch_pool(service: str, size: Callable[[], int], free: Callable[[], int],
               waiting: Callable[[], int], limit: int) -> None:
    """Pool gauges, read at scrape time."""
    POOL_CONNECTIONS.labels(service, "in_use").set_function(lambda: size() - free())
    POOL_CONNECTIONS.labels(service, "idle").set_function(free)
    POOL_WAITING.labels(service).set_function(waiting)
    POOL_MAX.labels(service).set(limit)
