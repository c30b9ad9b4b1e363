"""Admission passes: what JoinQueue hands a buyer at their turn, and Seckill checks.

A pass is `v1.<payload>.<mac>` (base64url): the payload names the activity, the pass's expire
time (milliseconds since the epoch, by the database's clock when it was given) and the user;
the mac is an HMAC-SHA256 of it. Every activity process derives the same key from a secret they
already share (SECKILL_USER_TOKEN_SECRET when set, else SECKILL_ADMIN_TOKEN), under a label of
its own, so a pass is never a user token nor the other way round. So a Seckill's pass is judged
by a hash, without the database: a bot hammering Seckill without one costs what any refusal
costs. The expire time is compared with this process's clock (the services' clocks are
assumed synchronised, as the user tokens' are).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from datetime import datetime

from seckill_common.api.errors import FailedPrecondition, Reason

_LABEL = b"seckill.v1 admission pass"
_VERSION = "v1"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Passes:
    """Signs and checks admission passes with a key derived from `secret`."""

    def __init__(self, secret: str) -> None:
        self._key = hmac.new(secret.encode(), _LABEL, hashlib.sha256).digest()

    def _mac(self, payload: bytes) -> bytes:
        return hmac.new(self._key, payload, hashlib.sha256).digest()[:16]

    def issue(self, activity_id: int, user_id: str, expire_time: datetime) -> str:
        expire_ms = int(expire_time.timestamp() * 1000)
        payload = f"{activity_id}:{expire_ms}:{user_id}".encode()
        return f"{_VERSION}.{_b64(payload)}.{_b64(self._mac(payload))}"

    def check(self, admission_pass: str, activity_id: int, user_id: str,
              now: float | None = None) -> None:
        """Returns when the pass admits `user_id` to `activity_id` now; else raises
        FAILED_PRECONDITION NOT_ADMITTED (none, forged, another user's or activity's) or
        PASS_EXPIRED."""
        payload = self._payload(admission_pass)
        if payload is None:
            raise refusal(Reason.NOT_ADMITTED, activity_id)
        pass_activity, _, rest = payload.partition(":")
        expire_ms, _, pass_user = rest.partition(":")
        if pass_activity != str(activity_id) or pass_user != user_id:
            raise refusal(Reason.NOT_ADMITTED, activity_id)
        if int(expire_ms) <= (time.time() if now is None else now) * 1000:
            raise refusal(Reason.PASS_EXPIRED, activity_id)

    def _payload(self, admission_pass: str) -> str | None:
        """The pass's payload if its mac is ours, else None."""
        version, _, rest = admission_pass.partition(".")
        encoded, _, mac = rest.partition(".")
        if version != _VERSION or not encoded or not mac:
            return None
        try:
            payload, given = _unb64(encoded), _unb64(mac)
        except (binascii.Error, ValueError):
            return None
        if not hmac.compare_digest(self._mac(payload), given):
            return None
        try:
            return payload.decode()
        except UnicodeDecodeError:
            return None


def refusal(reason: Reason, activity_id: int) -> FailedPrecondition:
    message = ("this activity has a waiting room: join it (JoinQueue) and buy with the "
               "admission pass it gives at your turn"
               if reason is Reason.NOT_ADMITTED
               else "the admission pass expired: join the waiting room again")
    return FailedPrecondition(reason, message, {"activity_id": str(activity_id)})
