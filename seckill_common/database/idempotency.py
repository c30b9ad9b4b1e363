"""AIP-155 request ids for creates: the one owner of the create_requests table.

A create that names a request id claims it in the create's own transaction, before it inserts
anything: a retry (or a concurrent twin) then waits on that claim's row and, once the first
commits, finds the id taken and answers the resource the first call created. The request's
fingerprint tells a retry from a different request that reuses the id, which is refused as
INVALID_ARGUMENT: the client's bug, never retryable, and not ALREADY_EXISTS, which clients
read as "what I asked for is there".
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Awaitable, Callable
from typing import NamedTuple, Protocol, TypeVar

import pymysql
from google.protobuf.message import Message

from seckill_common.api.errors import InvalidArgument
from seckill_common.api.validation import Violations
from seckill_common.database.db import Database
from seckill_common.database.errors import DUPLICATE_ENTRY, error_code
from seckill_common.database.transaction import Transaction

FIELD = "request_id"


class _HasId(Protocol):
    @property
    def id(self) -> int: ...


R = TypeVar("R", bound=_HasId)


class _Taken(Exception):
    """The request id was claimed by an earlier (committed) call."""


class _Claim(NamedTuple):
    """A create_requests row: the claiming request's fingerprint and what it created."""

    fingerprint: str
    resource_id: int


def check(violations: Violations, request_id: str) -> None:
    """An empty request id (no idempotency) or a UUID, in any of its usual spellings."""
    if request_id:
        try:
            uuid.UUID(request_id)
        except ValueError:
            violations.add(FIELD, "must be a UUID, such as 123e4567-e89b-12d3-a456-426614174000")


def fingerprint(request: Message) -> str:
    """Hex SHA-256 of the request without its request id (deterministic serialisation)."""
    copy = type(request)()
    copy.CopyFrom(request)
    copy.ClearField(FIELD)
    return hashlib.sha256(copy.SerializeToString(deterministic=True)).hexdigest()


async def create_once(database: Database, method: str, request: Message,
                      create: Callable[[Transaction], Awaitable[R]],
                      replay: Callable[[Transaction, int], Awaitable[R]]) -> R:
    """Runs `create` once per request id: a repeat answers `replay` of the first's resource."""
    request_id: str = getattr(request, FIELD)
    if not request_id:
        return await database.run(create)
    key = str(uuid.UUID(request_id))  # one spelling per id
    digest = fingerprint(request)

    async def first(tx: Transaction) -> R:
        try:
            await tx.execute(
                "INSERT INTO create_requests (method, request_id, fingerprint, resource_id,"
                " create_time) VALUES (%s, %s, %s, 0, UTC_TIMESTAMP(6))",
                (method, key, digest))
        except pymysql.err.IntegrityError as exc:
            if error_code(exc) != DUPLICATE_ENTRY:
                raise
            raise _Taken() from exc
        created = await create(tx)
        await tx.execute(
            "UPDATE create_requests SET resource_id = %s WHERE method = %s AND request_id = %s",
            (created.id, method, key))
        return created

    async def again(tx: Transaction) -> R:
        await tx.execute(
            "SELECT fingerprint, resource_id FROM create_requests"
            " WHERE method = %s AND request_id = %s", (method, key))
        (claim,) = map(_Claim._make, await tx.fetchall())
        if claim.fingerprint != digest:
            raise InvalidArgument({FIELD: f"was already used for a different {method} request"})
        return await replay(tx, int(claim.resource_id))

    try:
        return await database.run(first)
    except _Taken:
        return await database.run(again)
