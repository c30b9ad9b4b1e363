"""`seckill`: run a flash sale from the shell, against the three services.

    seckill product create --name Tea --price-cents 350 --stock 100
    seckill activity create --product 1 --name "Tea rush" --start now --end +1h
    seckill buy --activity 1 --user alice
    seckill orders --user alice
    seckill status
    seckill sale simulate --users 2000 --stock 200

Tables for people by default, `--json` for scripts. Each failure is one sentence on stderr
saying what went wrong and what to do, and a distinct exit code (see the epilog).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from seckill_cli.client import (
    SERVICES,
    CliError,
    Exit,
    Session,
)
from seckill_cli.commands import (
    STATES,
    Handler,
    activity_create,
    activity_delete,
    activity_get,
    activity_list,
    activity_update,
    buy,
    cancel,
    migrate,
    orders,
    parse_time,
    pay,
    product_create,
    product_delete,
    product_get,
    product_list,
    product_update,
    status,
    user_token,
)
from seckill_cli.follow_events import add_arguments as events_arguments
from seckill_cli.follow_events import events
from seckill_cli.render import Output
from seckill_cli.simulate import simulate
from seckill_cli.watch_sale import add_arguments as watch_arguments
from seckill_cli.watch_sale import watch
from seckill_common.client.tls import ClientTLS
from seckill_common.config import ADDRESSES, ClientSettings, ConfigError

EPILOG = """\
environment:
  SECKILL_PRODUCT_ADDR, SECKILL_ACTIVITY_ADDR, SECKILL_ORDER_ADDR
                        the services (default 127.0.0.1:50051, :50052, :50053)
  SECKILL_ADMIN_TOKEN   sent as `authorization: Bearer <token>` on admin calls (create, update,
                        delete, pay, cancel, sale simulate) and on user calls when no user token is
                        given; `. .run/stack.env` sets it for the stack of `make up`
  SECKILL_USER_TOKEN    the user token for buy, orders, pay and cancel, when the services run with
                        SECKILL_USER_TOKEN_SECRET (--user-token wins)
  SECKILL_MYSQL_URL     `migrate`: the database, as the services read it

times: ISO-8601 (2026-06-01T12:00:00Z; without an offset it is UTC), `now`, or relative to now:
  +10m, -30s, +2h, +1d

exit codes:
  0  done
  1  the service refused the call (not found, invalid argument, already exists, sold out,
     not authorised, ...)
  2  usage error: bad flags or values, or a setting missing
  3  a service could not be reached or did not answer in time (`status`: one is not SERVING)
  4  `sale simulate`: an invariant check FAILED
"""

COMMON_NOTE = ("The options of `seckill --help` (--json, --timeout, --*-addr, --user-token) "
               "work here too.")
def positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, not {text}")
    return value


def add_common(parser: argparse.ArgumentParser, client: ClientSettings, *, top: bool) -> None:
    """The options every command takes, before or after the command's name.

    The commands' copies default to SUPPRESS, so they set a value only when given there and
    otherwise leave the top-level parser's; their help is `seckill --help`'s.
    """
    def default(value: object) -> object:
        return value if top else argparse.SUPPRESS

    def text(words: str) -> str:
        return words if top else argparse.SUPPRESS

    parser.add_argument("--json", action="store_true", default=default(False),
                        help=text("print one JSON document (protobuf JSON) instead of tables"))
    parser.add_argument("--timeout", type=positive_float, default=default(10.0), metavar="S",
                        help=text("deadline of each call in seconds (default 10)"))
    for service in SERVICES:
        address = ADDRESSES[service]  # the default, and the setting that changes it
        parser.add_argument(f"--{service}-addr", metavar="TARGET",
                            default=default(getattr(client, f"{service}_addr")),
                            help=text(f"the {service} service: host:port, or a gRPC target "
                                      "naming several hosts (ipv4:a:p,b:p, dns:///name:p; "
                                      f"round_robin) (default ${address.target_setting} or "
                                      f"{address.target})"))
    parser.add_argument("--user-token", metavar="JWT",
                        default=default(client.user_token.get_secret_value()),
                        help=text("user token for buy, orders, cancel "
                                  "(default $SECKILL_USER_TOKEN)"))
    parser.add_argument("--cacert", metavar="PEM", default=default(""),
                        help=text("dial with TLS, trusting this CA or certificate (default: "
                                  "the services' own SECKILL_TLS_CA or SECKILL_TLS_CERT when "
                                  "set, else plaintext)"))
    parser.add_argument("--cert", metavar="PEM", default=default(""),
                        help=text("client certificate, for mutual TLS"))
    parser.add_argument("--key", metavar="PEM", default=default(""),
                        help=text("client private key, for mutual TLS"))


def sale_term_options(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("--price-cents", type=int, metavar="N",
                     help="the sale price (default at creation: the product's price)")
    sub.add_argument("--payment-window", type=positive_float, metavar="S",
                     help="seconds a buyer has to pay (default at creation: 900)")
    sub.add_argument("--per-user-limit", type=int, metavar="N",
                     help="the most units one user may buy, 1 to 1000 (default at creation: 1)")


def build_parser(client: ClientSettings | None = None) -> argparse.ArgumentParser:
    """The parser; its defaults are `client`'s (default: the environment's)."""
    client = ClientSettings.from_env() if client is None else client
    parser = argparse.ArgumentParser(
        prog="seckill", description="\n\n".join(__doc__.split("\n\n")[:2]),
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common(parser, client, top=True)
    common = argparse.ArgumentParser(add_help=False)
    add_common(common, client, top=False)
    commands = parser.add_subparsers(title="commands", required=True, metavar="COMMAND")

    def command(group: Any, name: str, handler: Handler, help_text: str
                ) -> argparse.ArgumentParser:
        sub: argparse.ArgumentParser = group.add_parser(
            name, parents=[common], help=help_text, description=help_text, epilog=COMMON_NOTE)
        sub.set_defaults(handler=handler)
        return sub

    def resource(name: str, help_text: str) -> Any:
        return commands.add_parser(name, help=help_text).add_subparsers(
            title="commands", required=True, metavar="COMMAND")

    def limit_option(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--limit", type=int, default=0, metavar="N",
                         help="at most N (default: every page)")

    products = resource("product", "create, list, show, change and delete products")
    sub = command(products, "create", product_create, "create a product (admin)")
    sub.add_argument("--name", required=True)
    sub.add_argument("--description", default="")
    sub.add_argument("--price-cents", type=int, default=0, metavar="N")
    sub.add_argument("--stock", type=int, default=0, metavar="N", help="units to sell")
    limit_option(command(products, "list", product_list, "list products"))
    command(products, "get", product_get, "show a product and its stock").add_argument(
        "id", type=int, metavar="ID")
    sub = command(products, "update", product_update,
                  "change the fields given, and only those (admin)")
    sub.add_argument("id", type=int, metavar="ID")
    sub.add_argument("--name")
    sub.add_argument("--description")
    sub.add_argument("--price-cents", type=int, metavar="N")
    sub.add_argument("--stock", type=int, metavar="N")
    command(products, "delete", product_delete, "delete a product (admin)").add_argument(
        "id", type=int, metavar="ID")

    activities = resource("activity", "create, list, show, change and delete sales")
    sub = command(activities, "create", activity_create,
                  "create a sale of one product in a time window (admin)")
    sub.add_argument("--product", type=int, required=True, metavar="ID")
    sub.add_argument("--name", required=True)
    sub.add_argument("--start", type=parse_time, default="now", metavar="TIME",
                     help="when the sale opens (default now)")
    sub.add_argument("--end", type=parse_time, required=True, metavar="TIME",
                     help="when it closes, e.g. +1h")
    sale_term_options(sub)
    limit_option(command(activities, "list", activity_list, "list activities"))
    command(activities, "get", activity_get,
            "show an activity with its product's stock").add_argument("id", type=int, metavar="ID")
    sub = command(activities, "update", activity_update,
                  "change the fields given, and only those (admin)")
    sub.add_argument("id", type=int, metavar="ID")
    sub.add_argument("--name")
    sub.add_argument("--start", type=parse_time, metavar="TIME")
    sub.add_argument("--end", type=parse_time, metavar="TIME")
    sale_term_options(sub)
    command(activities, "delete", activity_delete,
            "delete an activity without orders (admin)").add_argument("id", type=int, metavar="ID")

    sub = command(commands, "buy", buy, "buy units in a sale, all or nothing (Seckill)")
    sub.add_argument("--activity", type=int, required=True, metavar="ID")
    sub.add_argument("--user", default="", help="the buyer (with a user token: its user)")
    sub.add_argument("--quantity", type=int, default=1, metavar="Q",
                     help="units to buy, at most the activity's per-user limit (default 1)")
    watch_arguments(command(
        commands, "watch", watch,
        "a live line of a sale: state, units left and a countdown by the server's clock "
        "(WatchActivity)"))
    events_arguments(command(
        commands, "events", events,
        "order events after a revision; --follow: then as they commit (admin; "
        "ListOrderEvents, WatchOrderEvents)"))
    sub = command(commands, "orders", orders, "list orders, by user, activity and/or state")
    sub.add_argument("--user", default="")
    sub.add_argument("--activity", type=int, default=0, metavar="ID")
    sub.add_argument("--state", action="append", choices=list(STATES),
                     help="only orders in this state (repeatable; default every state)")
    limit_option(sub)
    command(commands, "pay", pay,
            "pay a pending order before its deadline (admin or its owner)"
            ).add_argument("order", type=int, metavar="ORDER")
    command(commands, "cancel", cancel,
            "cancel a pending or paid order; its units go back to the stock "
            "(admin or its owner)").add_argument("order", type=int, metavar="ORDER")
    command(commands, "status", status,
            "health of every service (NOT_SERVING: its database is down)")
    sub = command(commands, "token", user_token,
                  "print a user token signed with SECKILL_USER_TOKEN_SECRET")
    sub.add_argument("user_id", metavar="USER")
    sub.add_argument("--ttl", type=positive_float, default=3600.0, metavar="S",
                     help="seconds until it expires (default 3600)")

    sub = commands.add_parser(
        "migrate", help="apply the database migrations (SECKILL_MYSQL_URL)",
        description="Apply the database migrations that SECKILL_MYSQL_URL's database lacks, "
                    "as a deployment step before the services start (they then run with "
                    "SECKILL_MIGRATE_ON_START=false and need no DDL rights). Exit 1 if any "
                    "stays pending.")
    sub.add_argument("--check", action="store_true",
                     help="change nothing: report pending migrations (exit 1 if any)")
    sub.set_defaults(handler=migrate)

    sale = commands.add_parser("sale", help="run a simulated flash sale").add_subparsers(
        title="commands", required=True, metavar="COMMAND")
    sub = command(sale, "simulate", simulate,
                  "create a product and an open sale, let N users race for the stock, "
                  "then check the invariants through the API (admin)")
    sub.add_argument("--users", type=int, default=500, metavar="N",
                     help="simulated users (default 500)")
    sub.add_argument("--stock", type=int, default=None, metavar="S",
                     help="units on sale (default users/10)")
    sub.add_argument("--tries", type=int, default=2, metavar="T",
                     help="Seckill calls per user, sent at once: a double click (default 2)")
    sub.add_argument("--concurrency", type=int, default=200, metavar="C",
                     help="calls in flight at most (default 200)")
    sub.add_argument("--pay-share", type=float, default=1.0, metavar="F",
                     help="share of the orders paid, 0 to 1 (default 1)")
    sub.add_argument("--payment-window", type=positive_float, default=None, metavar="S",
                     help="seconds to pay (default the service's 15 minutes); with a short "
                          "one the unpaid orders' expiry is awaited and checked")
    sub.add_argument("--max-quantity", type=int, default=1, metavar="Q",
                     help="each user asks for 1 to Q units (a fixed mix by user number), "
                          "and the activity allows Q per user (default 1)")
    return parser


async def run(argv: list[str] | None = None) -> int:
    """The CLI inside a running event loop (the tests call this)."""
    try:
        client = ClientSettings.from_env()
    except ConfigError as exc:
        Output(False).error(str(exc))
        return Exit.USAGE
    try:
        args = build_parser(client).parse_args(argv)
    except SystemExit as exc:  # argparse printed the usage error (or the help)
        return exc.code if isinstance(exc.code, int) else Exit.USAGE
    out = Output(args.json)
    try:
        tls = (ClientTLS(cacert=args.cacert, cert=args.cert, key=args.key)
               if args.cacert or args.cert or args.key else ClientTLS.of_files(client.tls_files))
    except ValueError as exc:
        out.error(str(exc))
        return Exit.USAGE
    session = Session(
        addrs={s: getattr(args, f"{s}_addr") for s in SERVICES}, timeout_s=args.timeout,
        admin_token=client.admin_token, user_token=args.user_token, tls=tls)
    try:
        code: int = await args.handler(args, session, out)
        return code
    except CliError as err:
        out.error(err.message)
        if out.as_json:
            out.document({"error": err.document})
        return err.exit_code
    finally:
        await session.close()


def main(argv: list[str] | None = None) -> int:
    return asyncio.run(run(argv))


if __name__ == "__main__":
    sys.exit(main())
