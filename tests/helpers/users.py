"""Signed user tokens for a stack started with SECKILL_USER_TOKEN_SECRET=SECRET."""

from __future__ import annotations

from seckill_common.runtime.auth import UserTokens

SECRET = "test-user-token-secret-0123456789abcdef"
TOKENS = UserTokens(SECRET)


def as_user(user: str) -> tuple[tuple[str, str], ...]:
    """Call metadata that acts as `user`."""
    return (("authorization", f"Bearer {TOKENS.issue(user)}"),)
