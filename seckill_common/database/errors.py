"""The server's error codes we act on, and how to read them off a driver exception."""

from __future__ import annotations

import asyncio

import pymysql

# Errors after which the connection cannot be trusted and the server may be gone.
# 1047: a Galera node that is not (or no longer) in the primary component: unusable until it
# has rejoined, like a server that is down.
CONNECTION_ERRORS = {2003, 2006, 2013, 2055, 1927, 1053, 1077, 1079, 1080, 1047}
# A deadlock rolls the transaction back at once (Database.run retries the work); a lock wait
# timeout is not retried.
DEADLOCK = 1213
LOCK_WAIT_TIMEOUT = 1205
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


def is_connection_error(exc: BaseException) -> bool:
    if isinstance(exc, pymysql.err.OperationalError | pymysql.err.InterfaceError):
        code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else 0
        return code in CONNECTION_ERRORS or isinstance(exc, pymysql.err.InterfaceError)
    return isinstance(exc, ConnectionError | OSError | asyncio.TimeoutError | TimeoutError)


def error_code(exc: BaseException) -> int:
    if isinstance(exc, pymysql.err.MySQLError) and exc.args and isinstance(exc.args[0], int):
        return exc.args[0]
    return 0
