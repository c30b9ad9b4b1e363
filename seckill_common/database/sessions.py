"""How a connection is opened: its session's settings (isolation, clock, the server-side
bounds on waits), `aiomysql.connect`'s arguments, and the client's own bound on each wait."""

from __future__ import annotations

from seckill_common.config import MySQLTarget, Settings

# How much longer than the server's own statement limit the client waits: the server's answer
# (a clean StatementTimeout on a connection that stays pooled) should come first.
STATEMENT_MARGIN_S = 1.0


def session_init(settings: Settings, *, bounded: bool) -> str:
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
        init_command=session_init(settings, bounded=bounded),
    )
    if with_db:
        kwargs["db"] = target.database
    return kwargs
