"""AIP-158 pages: `page_size` bounds and opaque keyset `page_token`s bound to their filters."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Protocol, TypeVar

from seckill_common.api.errors import InvalidArgument
from seckill_common.api.validation import MAX_ID


class _Row(Protocol):
    """A listed row: pages end at an id."""

    @property
    def id(self) -> int: ...


T = TypeVar("T", bound=_Row)
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
# Tokens we issue are under 80 characters; a bound keeps hostile ones (deeply nested JSON) cheap.
MAX_PAGE_TOKEN_CHARS = 200


def page_size(value: int) -> int:
    if value < 0:
        raise InvalidArgument({"page_size": "must not be negative"})
    return min(value or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def _filters_digest(filters: Mapping[str, object]) -> str:
    canonical = json.dumps(filters, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def encode_page_token(after_id: int, filters: Mapping[str, object]) -> str:
    """An opaque keyset cursor: the last id served, bound to the filters it was made for."""
    body = json.dumps({"after": after_id, "f": _filters_digest(filters)}).encode()
    return base64.urlsafe_b64encode(body).decode().rstrip("=")


def decode_page_token(token: str, filters: Mapping[str, object]) -> int:
    """The id to continue after (0 for the first page); INVALID_ARGUMENT for a bad token."""
    if not token:
        return 0
    if len(token) > MAX_PAGE_TOKEN_CHARS:
        raise InvalidArgument({"page_token": "is not a token this server issued"})
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        body = json.loads(raw)
        after = body["after"]
        digest = body["f"]
    except (ValueError, KeyError, TypeError, binascii.Error):
        raise InvalidArgument({"page_token": "is not a token this server issued"}) from None
    # Ids are BIGINTs: a cursor past 2^63-1 was never issued, and in SQL it would overflow.
    if type(after) is not int or not 0 <= after <= MAX_ID:
        raise InvalidArgument({"page_token": "is not a token this server issued"})
    if digest != _filters_digest(filters):
        raise InvalidArgument(
            {"page_token": "does not belong to this list request (filters changed?)"}
        )
    return after


def page_of(rows: Sequence[T], limit: int, filters: Mapping[str, object]) -> tuple[
        Sequence[T], str]:
    """Splits `limit + 1` fetched rows into the page and the next page's token ("" if none)."""
    if len(rows) <= limit:
        return rows, ""
    return rows[:limit], encode_page_token(rows[limit - 1].id, filters)
