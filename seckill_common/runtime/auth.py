"""Who is calling: the admin token, signed user tokens, and the user a call may act as.

Admin RPCs take `authorization: Bearer <SECKILL_ADMIN_TOKEN>`. When SECKILL_USER_TOKEN_SECRET
is set, the user RPCs (Seckill, ListOrders, GetOrder, PayOrder, CancelOrder, DeleteOrder)
take `authorization: Bearer <JWT>`: HS256, signed with that secret, issuer "seckill", with `sub`
(the user id) and `exp`; the admin token is accepted there too and may act as any user (load
tests, support). Unset, the request's user_id field is trusted (development).

The layer authenticates; servicers ask `acting_user`, `may_see` and `confined_to` what the
caller may do, so the rules for each RPC stay next to that RPC.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Iterable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import jwt
from grpc.aio import ServicerContext

from seckill_common.api.errors import NotFound, PermissionDenied, Unauthenticated
from seckill_common.api.validation import MAX_USER_ID_CHARS
from seckill_common.runtime.answers import Behavior

ISSUER = "seckill"
ALGORITHM = "HS256"
# Clocks of token issuer and service may differ a little.
LEEWAY_S = 5
_VERIFIED_CACHE_MAX = 10_000


@dataclass(frozen=True)
class Caller:
    """An authenticated caller of a user RPC: the admin, or one user."""

    user: str | None  # None: the admin, who may act as any user

    @property
    def is_admin(self) -> bool:
        return self.user is None


ADMIN_CALLER = Caller(user=None)
# Set by the auth layer for the duration of one RPC (each RPC runs in its own task).
_caller: ContextVar[Caller | None] = ContextVar("seckill_caller", default=None)


def acting_user(requested: str, field: str = "user_id") -> str:
    """The user a call acts as: the token's subject, or `requested` where that is allowed.

    With user tokens on, an empty `requested` means "me", and naming anyone else is
    PERMISSION_DENIED (the admin may name anyone). Without tokens, `requested` is trusted.
    """
    caller = _caller.get()
    if caller is None or caller.user is None:  # no user tokens, or the admin
        return requested
    if requested and requested != caller.user:
        raise PermissionDenied(f"{field}: this token is for another user")
    return caller.user


def confined_to() -> str | None:
    """The user whose resources alone the caller may see: a token's user; None for the admin,
    or when user tokens are off."""
    caller = _caller.get()
    return None if caller is None else caller.user


def may_see(owner: str, resource: str, resource_id: int) -> None:
    """NOT_FOUND, not PERMISSION_DENIED, for another user's resource: its existence stays
    private."""
    user = confined_to()
    if user is not None and user != owner:
        raise NotFound(resource, resource_id)


def bearer(metadata: Iterable[tuple[str, str | bytes]] | None, what: str) -> bytes:
    """The credential of `authorization: Bearer <credential>` (scheme case-insensitive).

    UNAUTHENTICATED, saying which, when it is missing or malformed: the caller has not
    authenticated yet, so the fix is the credential's form, not another token.
    """
    values = [v for k, v in (metadata or ()) if k == "authorization"]
    if not values:
        raise Unauthenticated(f"{what}: missing 'authorization: Bearer <token>' metadata")
    value = values[0].encode() if isinstance(values[0], str) else values[0]
    scheme, _, given = value.partition(b" ")
    if scheme.lower() != b"bearer":
        raise Unauthenticated(f"{what}: the authorization metadata must be 'Bearer <token>'; "
                              "it does not start with 'Bearer '")
    if not given.strip():
        raise Unauthenticated(f"{what}: the authorization metadata has no token after "
                              "'Bearer '")
    return given.strip()


class AdminToken:
    """The shared admin secret, compared in constant time."""

    def __init__(self, token: str) -> None:
        self._expected = token.encode()

    def matches(self, given: bytes) -> bool:
        return hmac.compare_digest(given, self._expected)

    def check(self, metadata: Iterable[tuple[str, str | bytes]] | None) -> None:
        if not self.matches(bearer(metadata, "admin RPC")):
            raise PermissionDenied("admin RPC: the bearer token is not the admin token")


class UserTokens:
    """Issues and verifies user tokens; verified tokens are cached until they expire."""

    def __init__(self, secret: str) -> None:
        self._secret = secret
        self._verified: dict[bytes, tuple[str, float]] = {}

    def issue(self, user_id: str, ttl_s: float = 3600.0, now: float | None = None) -> str:
        if not user_id or len(user_id) > MAX_USER_ID_CHARS:
            raise ValueError(f"a user id has 1..{MAX_USER_ID_CHARS} characters")
        issued = int(time.time() if now is None else now)
        claims = {"sub": user_id, "iss": ISSUER, "iat": issued, "exp": issued + int(ttl_s)}
        return jwt.encode(claims, self._secret, algorithm=ALGORITHM)

    def verify(self, token: bytes) -> str:
        """The token's user id; UNAUTHENTICATED (never the token itself) if it is not valid."""
        cached = self._verified.get(token)
        if cached is not None and cached[1] > time.time():
            return cached[0]
        try:
            claims = jwt.decode(token, self._secret, algorithms=[ALGORITHM], issuer=ISSUER,
                                leeway=LEEWAY_S, options={"require": ["sub", "exp", "iss"]})
        except jwt.ExpiredSignatureError:
            raise Unauthenticated("user token expired") from None
        except jwt.InvalidTokenError as exc:
            raise Unauthenticated(f"user token invalid: {exc}") from None
        user = claims["sub"]
        if not isinstance(user, str) or not user or len(user) > MAX_USER_ID_CHARS:
            raise Unauthenticated("user token invalid: its subject is not a user id")
        if len(self._verified) >= _VERIFIED_CACHE_MAX:
            self._verified.clear()
        self._verified[token] = (user, float(claims["exp"]) + LEEWAY_S)
        return user


class Authenticator:
    """The auth layer: which methods need which credential, and checking it.

    - admin methods: the admin token, unless user tokens are on and the method is also a
      user method (PayOrder, CancelOrder, DeleteOrder: the admin, or the order's owner);
    - user methods, with user tokens on: the admin token or a valid user token;
    - everything else: no credential.
    """

    def __init__(self, admin_token: str, user_secret: str,
                 admin_methods: frozenset[str], user_methods: frozenset[str]) -> None:
        self.admin = AdminToken(admin_token)
        self.users = UserTokens(user_secret) if user_secret else None
        self._admin_methods = admin_methods
        self._user_methods = user_methods if user_secret else frozenset()

    def caller(self, metadata: Iterable[tuple[str, str | bytes]] | None) -> Caller:
        given = bearer(metadata, "user RPC")
        if self.admin.matches(given):
            return ADMIN_CALLER
        assert self.users is not None
        return Caller(user=self.users.verify(given))

    def layer(self, method: str, behavior: Behavior) -> Behavior:
        if method in self._user_methods:
            async def as_user(request: Any, context: ServicerContext) -> Any:
                _caller.set(self.caller(context.invocation_metadata()))
                return await behavior(request, context)

            return as_user
        if method in self._admin_methods:
            async def as_admin(request: Any, context: ServicerContext) -> Any:
                self.admin.check(context.invocation_metadata())
                return await behavior(request, context)

            return as_admin
        return behavior


def current_caller() -> Caller | None:
    """The authenticated caller of the current RPC, if its method authenticates one."""
    return _caller.get()
