"""One unit of work's transaction, as `Database.run` hands it to the work: the cursor it runs
on, and whether the work sent the transaction's COMMIT itself.

A hot path saves a round trip by sending its COMMIT in the pipeline of its last statements
(`pipeline(..., commit=True)`, `select_only`); the transaction then knows there is nothing
left to commit, and `Database` asks it (`committed`) rather than committing again.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import aiomysql


class Transaction:
    """The statements of one transaction, on its pooled connection's cursor."""

    def __init__(self, cursor: aiomysql.Cursor) -> None:
        self._cursor = cursor
        self._committed = False

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
        await self._cursor.execute(sql, params)

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
        await self._cursor.execute(sql + "; COMMIT" if commit else sql, params)
        results = [list(await self._cursor.fetchall())]
        while await self._cursor.nextset():
            results.append(list(await self._cursor.fetchall()))
        if commit:
            results.pop()  # the COMMIT's
            self._committed = True
        return results

    async def select_only(self, sql: str, params: Sequence[object]) -> list[tuple[Any, ...]]:
        """Runs one SELECT as the whole transaction, its COMMIT in the same round trip: a hot
        read (a single-flight load) then costs one round trip, not two."""
        (rows,) = await self.pipeline(sql, params, commit=True)
        return rows
