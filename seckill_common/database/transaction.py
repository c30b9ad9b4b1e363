"""One unit of work's transaction, as `Database.run` hands it to the work: the cursor it runs
on, and whether the work sent the transaction's COMMIT itself.

A hot path saves a round trip by sending its COMMIT in the pipeline of its last statements
(`pipeline(..., commit=True)`, `select_only`); the transaction then knows there is nothing
left to commit, and `Database` asks it (`committed`) rather than committing again.

A pipeline never outlives its transaction. Something outside may end a transaction between two
statements of one round trip (a Galera brute-force abort, a KILL of the transaction, a
timeout); with autocommit off, the statements after that point would open a new transaction
and the pipeline's COMMIT would commit them, half a unit of work. So the first round trip
opens a savepoint (`_GUARD`) and every COMMIT is preceded, in its own round trip, by its
release (`_RELEASE`): a savepoint belongs to the transaction that made it, so in any other
transaction the release fails, the server stops the round trip there, before the COMMIT, and
the work is rolled back and run again (`TransactionEnded`, retried like a deadlock).
docs/DESIGN.md, "A transaction ended from outside".
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import aiomysql
import pymysql

# The transaction's guard: made by its first statement, released just before its COMMIT.
_GUARD = "SAVEPOINT txn_guard"
_RELEASE = "RELEASE SAVEPOINT txn_guard"
_SAVEPOINT_MISSING = 1305  # ER_SP_DOES_NOT_EXIST: this transaction never made the guard
_DEADLOCK = 1213


class TransactionEnded(pymysql.err.OperationalError):
    """The guard was gone at COMMIT: something outside ended the transaction mid-way and a
    new one ran the statements after that point. Nothing was committed (the round trip stopped
    before its COMMIT, and the caller rolls the stray transaction back). Its code is a
    deadlock's, since that is what it is to the caller: rolled back whole, safe to run again."""

    def __init__(self) -> None:
        super().__init__(_DEADLOCK, "transaction ended from outside before its COMMIT"
                                    " (its guard savepoint was gone); nothing committed")


class Transaction:
    """The statements of one transaction, on its pooled connection's cursor."""

    def __init__(self, cursor: aiomysql.Cursor) -> None:
        self._cursor = cursor
        self._committed = False
        self._guarded = False  # the first statement made the guard savepoint

    @property
    def committed(self) -> bool:
        """True once a pipeline carried this transaction's COMMIT: nothing is left to commit."""
        return self._committed

    @property
    def lastrowid(self) -> int:
        """The AUTO_INCREMENT id of the last INSERT."""
        return int(self._cursor.lastrowid)

    @property
    def rowcount(self) -> int:
        """The rows the last statement changed (an UPDATE's, a DELETE's)."""
        return int(self._cursor.rowcount)

    async def execute(self, sql: str, params: Sequence[object] = ()) -> None:
        assert not self._committed, "a statement after the transaction's COMMIT"
        if self._guarded:
            await self._cursor.execute(sql, params)
            return
        self._guarded = True
        await self._cursor.execute(f"{_GUARD}; {sql}", params)
        await self._cursor.nextset()  # past the savepoint's result, to the statement's

    async def fetchone(self) -> tuple[Any, ...] | None:
        row: tuple[Any, ...] | None = await self._cursor.fetchone()
        return row

    async def fetchall(self) -> list[tuple[Any, ...]]:
        return list(await self._cursor.fetchall())

    async def pipeline(self, sql: str, params: Sequence[object], *, commit: bool = False
                       ) -> list[list[tuple[Any, ...]]]:
        """Runs `;`-separated statements in one round trip; returns each one's rows in order.

        The server runs them in order and stops at the first error, which the driver raises.
        `commit`: the transaction's COMMIT follows them in the same round trip (its empty
        result is not returned); once it returned, the transaction is over.
        """
        return await self._pipeline(sql, params, commit=commit, guard=True)

    async def _pipeline(self, sql: str, params: Sequence[object], *, commit: bool, guard: bool
                        ) -> list[list[tuple[Any, ...]]]:
        """`pipeline`; `guard=False` only for a transaction of one statement, which nothing
        can split."""
        assert not self._committed, "a statement after the transaction's COMMIT"
        opens = guard and not self._guarded
        releases = commit and (self._guarded or opens)
        statements = [_GUARD] if opens else []
        statements += [sql] if sql else []
        statements += [_RELEASE] if releases else []
        statements += ["COMMIT"] if commit else []
        self._guarded = self._guarded or opens
        try:
            await self._cursor.execute("; ".join(statements), params)
            results = [list(await self._cursor.fetchall())]
            while await self._cursor.nextset():
                results.append(list(await self._cursor.fetchall()))
        except pymysql.err.OperationalError as exc:
            if releases and exc.args and exc.args[0] == _SAVEPOINT_MISSING:
                raise TransactionEnded() from exc
            raise
        del results[len(results) - releases - commit:]  # the release's and the COMMIT's
        if opens:
            del results[0]  # the savepoint's
        self._committed = self._committed or commit
        return results

    async def ended_from_outside(self) -> bool:
        """After one of its statements failed: whether the transaction had already been ended
        from outside (its guard gone), so that the statement failed in another one (a duplicate
        key against rows the abort let someone else write, say). The guard is released either
        way: the caller rolls back next."""
        if not self._guarded or self._committed:
            return False
        try:
            await self._cursor.execute(_RELEASE)
        except pymysql.err.OperationalError as exc:
            return bool(exc.args) and exc.args[0] == _SAVEPOINT_MISSING
        return False

    async def commit(self) -> None:
        """Commits what the work left uncommitted, its guard released first in the same round
        trip (TransactionEnded: the transaction was not this one's any more)."""
        if not self._committed:
            await self._pipeline("", (), commit=True, guard=False)

    async def select_only(self, sql: str, params: Sequence[object]) -> list[tuple[Any, ...]]:
        """Runs one SELECT as the whole transaction, its COMMIT in the same round trip: a hot
        read (a single-flight load) then costs one round trip, not two."""
        (rows,) = await self._pipeline(sql, params, commit=True, guard=False)
        return rows
