"""Prints a signed user token, for demos and load tests.

    SECKILL_USER_TOKEN_SECRET=... python -m seckill_cli.token alice [--ttl 3600]

The services accept it as `authorization: Bearer <token>` on Seckill, ListOrders, GetOrder,
PayOrder, CancelOrder and DeleteOrder when they run with the same SECKILL_USER_TOKEN_SECRET.
"""

from __future__ import annotations

import argparse
import sys

from seckill_common.config import SharedSettings
from seckill_common.runtime.auth import UserTokens


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="seckill-token",
        description="Print a user token signed with SECKILL_USER_TOKEN_SECRET (HS256).")
    parser.add_argument("user_id", help="the user the token is for (its subject)")
    parser.add_argument("--ttl", type=float, default=3600.0,
                        help="seconds until the token expires (default 3600)")
    args = parser.parse_args(argv)
    try:
        print(issue(args.user_id, args.ttl))
    except ValueError as exc:
        print(f"seckill-token: {exc}", file=sys.stderr)
        return 2
    return 0


def issue(user_id: str, ttl_s: float) -> str:
    """A token for `user_id` signed with SECKILL_USER_TOKEN_SECRET; ValueError says what is
    wrong (no secret, a secret the services would refuse, a bad ttl). Also `seckill token`."""
    # The same checks as the services apply (length of the secret). ConfigError is a ValueError.
    secret = SharedSettings.from_env().user_token_secret
    if not secret:
        raise ValueError("set SECKILL_USER_TOKEN_SECRET (the services' secret)")
    return UserTokens(secret).issue(user_id, ttl_s=ttl_s)


if __name__ == "__main__":
    raise SystemExit(main())
