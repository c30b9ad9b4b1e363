"""`seckill-bench`: the command line, with ghz's option names where they exist.

    seckill-bench --call seckill.v1.ActivityService/Seckill \\
        -d '{"activity_id": 1, "user_id": "user-{{.RequestNumber}}"}' \\
        -n 20000 -c 64 --connections 4 --procs 2 127.0.0.1:50052

A crowd on one sale, every buyer a coroutine (seckill_bench/crowd.py): each waits in the
waiting room's line and buys with its pass, or each calls Seckill at the sale's start:

    seckill-bench --queued-sale 7 -n 2000 --procs 2 127.0.0.1:50052
    seckill-bench --direct-sale 8 -n 2000 --procs 2 127.0.0.1:50052

Exit codes: 0 done, 1 an invariant failed, 2 the run could not be done (bad options, unknown
method, unreachable target).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from seckill_bench import crowd
from seckill_bench.config import BenchConfig, ConfigError, parse_duration
from seckill_bench.runner import BenchError, run
from seckill_common.client.tls import ClientTLS

FORMATS = ("summary", "json", "pretty", "html")


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _metadata(text: str) -> dict[str, str]:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"metadata is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError('metadata must be a JSON object, e.g. {"key": "value"}')
    return {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in value.items()}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="seckill-bench",
        description="Load-test a unary gRPC method of the seckill services (ghz-like).",
        epilog="Template placeholders: {{.RequestNumber}} {{.WorkerID}} {{.UUID}} "
               "{{.TimestampUnix}} {{.TimestampUnixMilli}} {{.TimestampUnixNano}} "
               "{{.FullyQualifiedName}} {{.MethodName}} {{.ServiceName}}",
    )
    p.add_argument("host", help="target address, e.g. 127.0.0.1:50052, or a gRPC target "
                                "naming several hosts (ipv4:a:p,b:p, dns:///name:p), which "
                                "the calls take turns over (round_robin)")
    p.add_argument("--call",
                   help="package.Service/Method (or package.Service.Method); required "
                        "unless --queued-sale or --direct-sale")
    data = p.add_mutually_exclusive_group()
    data.add_argument("-d", "--data", default="{}", help="request as a JSON template")
    data.add_argument("-D", "--data-file", type=Path, help="file holding the JSON template")
    p.add_argument("-n", "--total", type=int, help="number of calls (default 200 without -z)")
    p.add_argument("-z", "--duration", type=_duration,
                   help="send calls for this long, e.g. 10s (with -n: whichever comes first)")
    p.add_argument("-c", "--concurrency", type=int, default=50,
                   help="calls in flight, in total over all processes (default 50)")
    p.add_argument("--connections", type=int,
                   help="channels (TCP connections) in total (default: one per process)")
    p.add_argument("--procs", type=int, default=1, help="client processes (default 1)")
    p.add_argument("-m", "--metadata", type=_metadata, default={},
                   help='call metadata as JSON, e.g. \'{"authorization": "Bearer x"}\'')
    p.add_argument("-t", "--timeout", type=_duration, default=20.0,
                   help="deadline of each call (default 20s)")
    p.add_argument("--connect-timeout", type=_duration, default=10.0,
                   help="time to wait for the connections (default 10s)")
    p.add_argument("-O", "--format", choices=FORMATS, default="summary",
                   help="output format (default summary)")
    p.add_argument("-o", "--output", type=Path, help="write the output to this file")
    p.add_argument("--html", type=Path, metavar="FILE", help="also write an HTML report")
    p.add_argument("--insecure", action="store_true",
                   help="plaintext (the default unless --cacert; accepted for ghz compatibility)")
    p.add_argument("--cacert", default="",
                   help="PEM file of the CA (or self-signed certificate) to trust: TLS")
    p.add_argument("--cert", default="", help="client certificate PEM, for mutual TLS")
    p.add_argument("--key", default="", help="client private key PEM, for mutual TLS")
    p.add_argument("--skip-first", type=int, default=0,
                   help="leave the first N request numbers out of the statistics")
    p.add_argument("--name", default="", help="a name for the report")
    p.add_argument("--no-progress", action="store_true", help="no progress on stderr")
    sale = p.add_argument_group(
        "A crowd on one sale (-n buyers, --procs, -m, TLS as above; a buyer per coroutine)")
    modes = sale.add_mutually_exclusive_group()
    modes.add_argument("--queued-sale", type=int, metavar="ACTIVITY_ID",
                       help="each buyer joins the activity's waiting room (JoinQueue), waits "
                            "for ADMITTED, then calls Seckill with the pass")
    modes.add_argument("--direct-sale", type=int, metavar="ACTIVITY_ID",
                       help="each buyer calls Seckill at the activity's start, retrying as "
                            "the shipped clients do")
    sale.add_argument("--user-prefix", default="buyer-",
                      help="buyers' user ids: this prefix and their number (buyer-)")
    sale.add_argument("--join-rate", type=float, default=0.0,
                      help="buyers joining a second, in total (default 0: all at once)")
    sale.add_argument("--streams-per-channel", type=int, default=crowd.STREAMS_PER_CHANNEL,
                      help="buyers per channel (HTTP/2 connection) "
                           f"({crowd.STREAMS_PER_CHANNEL})")
    sale.add_argument("--buyer-timeout", type=_duration, default=300.0,
                      help="a buyer's whole budget, line and retries included (300s)")
    check = p.add_argument_group("Seckill invariants (checked after a Seckill run)")
    check.add_argument("--no-check", action="store_true", help="skip the invariant check")
    check.add_argument("--order-addr",
                       help="OrderService address or target (default $SECKILL_ORDER_ADDR "
                            "or 127.0.0.1:50053)")
    check.add_argument("--product-addr",
                       help="read the stock from ProductService here instead of GetActivity")
    check.add_argument("--initial-stock", type=int,
                       help="the product's stock before the sale: also check orders == "
                            "initial stock - remaining stock")
    return p


def client_tls(args: argparse.Namespace) -> ClientTLS:
    if args.insecure and args.cacert:
        raise ConfigError("--insecure and --cacert contradict each other")
    try:
        return ClientTLS(cacert=args.cacert, cert=args.cert, key=args.key)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    data = args.data_file.read_text() if args.data_file else args.data
    return BenchConfig(
        call=args.call, host=args.host, data=data, total=args.total,
        duration_s=args.duration, concurrency=args.concurrency, connections=args.connections,
        procs=args.procs, metadata=args.metadata, timeout_s=args.timeout,
        connect_timeout_s=args.connect_timeout, skip_first=args.skip_first, name=args.name,
        progress=not args.no_progress, check=not args.no_check, order_addr=args.order_addr,
        product_addr=args.product_addr, initial_stock=args.initial_stock, handle_sigint=True,
        tls=client_tls(args),
    )


def crowd_main(args: argparse.Namespace) -> int:
    """--queued-sale / --direct-sale."""
    queued = args.queued_sale is not None
    try:
        config = crowd.CrowdConfig(
            mode=crowd.QUEUED if queued else crowd.DIRECT, host=args.host,
            activity_id=args.queued_sale if queued else args.direct_sale,
            buyers=args.total or 200, procs=args.procs, user_prefix=args.user_prefix,
            join_rate=args.join_rate, streams_per_channel=args.streams_per_channel,
            timeout_s=args.buyer_timeout, connect_timeout_s=args.connect_timeout,
            metadata=tuple(args.metadata.items()), tls=client_tls(args),
            progress=not args.no_progress)
        report = crowd.run_crowd(config)
    except (crowd.CrowdError, ConfigError, OSError) as exc:
        print(f"seckill-bench: error: {exc}", file=sys.stderr)
        return 2
    text = (report.summary_text() if args.format == "summary" else
            crowd.report_json(report, 2 if args.format == "pretty" else None) + "\n")
    if args.output:
        args.output.write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.queued_sale is not None or args.direct_sale is not None:
        return crowd_main(args)
    if not args.call:
        parser.error("--call is required (or --queued-sale / --direct-sale)")
    try:
        config = config_from_args(args)
        report = run(config)
    except (BenchError, ConfigError, OSError) as exc:
        print(f"seckill-bench: error: {exc}", file=sys.stderr)
        return 2
    if args.format == "summary":
        text = report.summary_text()
    elif args.format == "html":
        text = report.to_html()
    else:
        text = report.to_json(indent=2 if args.format == "pretty" else None) + "\n"
    if args.output:
        args.output.write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    if args.html:
        args.html.write_text(report.to_html(), encoding="utf-8")
    if not report.invariants_ok:
        failed = [i.name for i in report.invariants if not i.ok]
        print(f"seckill-bench: invariant(s) FAILED: {'; '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
