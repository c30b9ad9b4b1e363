"""The rows an independent client measures: h2load (nghttp2's HTTP/2 load generator, in C),
beside seckill-bench's rows, which need distinct users.

h2load knows HTTP/2, not gRPC. Each row sends one fixed body, a gRPC frame (a 0 byte, the
message's length in 4 bytes, the serialized request), with gRPC's headers (content-type
application/grpc, te: trailers, and grpc-timeout for a deadline). It sees HTTP status 200 for
every gRPC answer, refusals included, because the gRPC status travels in the trailers; so the
answer a row measures is checked with a Python gRPC client sending the same bytes, before and
after the run, and a row whose answer is not the intended one fails. Per-call times come from
h2load's --log-file.

Rows (each against an activity service of its own, on the suite's database and peers, with the
shipped settings except SECKILL_RATE_LIMIT_USER=0, since one body is one user):
- (g1-g4) Health/Check, GetActivity, Seckill refused SOLD_OUT, Seckill refused ALREADY_EXISTS:
  64 in flight, three alternating rounds, the median round's rate; each against Health/Check.
- (h) overload: 2,000 / 5,000 / 10,000 Seckills (SOLD_OUT) in flight with 1 s deadlines: the
  share of calls answered within the deadline (an answer or a RetryInfo refusal; the gRPC
  codes of a sample of calls sent alongside are listed), and answers/s against (g3)'s rate.
- (i) scaling: (g3)'s load on 1 worker, then each worker count up to the CPUs: calls/s per
  worker.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health_pb2
from seckill.v1 import activity_pb2

from seckill_bench.suite.h2load_client import (
    CodeSampler,
    H2Run,
    grpc_answer,
    grpc_frame,
    install_h2load,
    run_h2load,
)
from seckill_bench.suite.scenarios import Results, Row, Suite
from seckill_bench.suite.stack import log
from seckill_stack.launcher import StackError
from seckill_stack.sale import open_sale
from seckill_stack.services import ServiceProcess

HEALTH = "/grpc.health.v1.Health/Check"
GET_ACTIVITY = "/seckill.v1.ActivityService/GetActivity"
SECKILL = "/seckill.v1.ActivityService/Seckill"
ROUNDS = 3
CLIENTS = 4  # connections; streams per connection make up the calls in flight
IN_FLIGHT = 64
OVERLOAD_IN_FLIGHT = (2_000, 5_000, 10_000)
OVERLOAD_CONNECTIONS = 50
OVERLOAD_SECONDS = 5.0
DEADLINE_S = 1.0
TARGET_RATIO = 0.8  # refusals and GetActivity against Health/Check
TARGET_ANSWERED = 0.9  # overload: within the deadline
TARGET_GOODPUT = 0.9  # overload: answers/s against the 64-in-flight rate
TARGET_WINNER_P99_MS = 25.0  # all-winner Seckill at 64 in flight
SERVING_TIMEOUT_S = 60.0


# --- the activity service these rows load --------------------------------------------------

@contextlib.contextmanager
def activity_service(suite: Suite, workers: int, name: str) -> Iterator[ServiceProcess]:
    """An activity service of the rows' own: the suite's database and peers, the shipped
    settings (logs at INFO: the access log's default sampling) but no per-user limit."""
    stack = suite.stack
    base = {k: v for k, v in stack.services["product"].env.items()
            if not k.startswith(("SECKILL_PRODUCT_ADDR", "SECKILL_LOG_LEVEL"))}
    env = {**base, "SECKILL_PRODUCT_ADDR": stack.addr("product"),
           "SECKILL_ORDER_ADDR": stack.addr("order"), "SECKILL_ACTIVITY_ADDR": "127.0.0.1:0",
           "SECKILL_RATE_LIMIT_USER": "0"}
    service = stack.services.add(name, "activity_svc", env, argv=("--workers", str(workers)))
    try:
        stack.services.spawn()
        stack.services.wait_serving(SERVING_TIMEOUT_S, [service])
        yield service
    finally:
        stack.services.remove(name)


@dataclass
class Bodies:
    health: bytes
    get_activity: bytes
    sold_out: bytes
    already_exists: bytes


def open_sold_out_sale(suite: Suite, address: str) -> Bodies:
    """A sale of one unit, bought by `holder`: the bodies of the fixed-body rows."""
    stack = suite.stack
    activity_id = open_sale(stack.addr("product"), address, stack.token, "h2load sold out", 1)
    with grpc.insecure_channel(address) as channel:
        from seckill.v1 import activity_pb2_grpc
        activity_pb2_grpc.ActivityServiceStub(channel).Seckill(
            activity_pb2.SeckillRequest(activity_id=activity_id, user_id="holder"), timeout=30)
    return Bodies(
        health=grpc_frame(health_pb2.HealthCheckRequest()),
        get_activity=grpc_frame(activity_pb2.GetActivityRequest(id=activity_id)),
        sold_out=grpc_frame(activity_pb2.SeckillRequest(activity_id=activity_id,
                                                        user_id="late")),
        already_exists=grpc_frame(activity_pb2.SeckillRequest(activity_id=activity_id,
                                                              user_id="holder")))


def _checked(address: str, path: str, body: bytes, expected: str) -> None:
    answer = grpc_answer(address, path, body)
    if answer != expected:
        raise StackError(f"{path} answered {answer}, not {expected}: the row would measure "
                         "something else")


@dataclass
class OverloadRow(Row):
    """A row (h): its rate is the answers within the deadline per second."""

    answered_share: float = 0.0

    @classmethod
    def of(cls, row: Row, share: float) -> OverloadRow:
        return cls(**{f.name: getattr(row, f.name) for f in dataclasses.fields(Row)},
                   answered_share=share)


def targets(results: Results) -> list[tuple[str, str, bool | None]]:
    """The h2load rows' targets, from this run's rows: (target, measured, met or None)."""
    found: list[tuple[str, str, bool | None]] = []

    def ratio(name: str, top_key: str, bottom_key: str, target: float) -> None:
        top, bottom = results.row(top_key), results.row(bottom_key)
        if top is None or bottom is None or not top.rps or not bottom.rps:
            found.append((f"{name} ≥ {target:g}", "—", None))
            return
        value = top.rps / bottom.rps
        found.append((f"{name} ≥ {target:g}",
                      f"{value:.2f} ({top.rps:,.0f} / {bottom.rps:,.0f} calls/s)",
                      value >= target))

    ratio("h2load SOLD_OUT refusal (g3) / Health/Check (g1)", "g3", "g1", TARGET_RATIO)
    ratio("h2load ALREADY_EXISTS refusal (g4) / Health/Check (g1)", "g4", "g1", TARGET_RATIO)
    ratio("h2load GetActivity (g2) / Health/Check (g1)", "g2", "g1", TARGET_RATIO)
    ratio("all-winner Seckill, seckill-bench (e) / Health/Check (a)", "e", "a", TARGET_RATIO)
    soak = results.row("e")
    p99 = soak.p99 if soak is not None else None
    found.append((f"p99 of all-winner Seckill (e) ≤ {TARGET_WINNER_P99_MS:g} ms",
                  "—" if p99 is None else f"{p99:.1f} ms",
                  None if p99 is None else p99 <= TARGET_WINNER_P99_MS))
    worst = results.row(f"h{OVERLOAD_IN_FLIGHT[-1]}")
    name = (f"{OVERLOAD_IN_FLIGHT[-1]:,} in flight, {DEADLINE_S:g} s deadlines: answered in "
            f"time ≥ {TARGET_ANSWERED:.0%}")
    if isinstance(worst, OverloadRow):
        found.append((name, f"{worst.answered_share:.0%}",
                      worst.answered_share >= TARGET_ANSWERED))
    else:
        found.append((name, "—", None))
    ratio(f"{OVERLOAD_IN_FLIGHT[-1]:,} in flight: answers/s / the 64-in-flight rate (g3)",
          f"h{OVERLOAD_IN_FLIGHT[-1]}", "g3", TARGET_GOODPUT)
    return found


def _row(key: str, title: str, run: H2Run, outcome: str) -> Row:
    return Row(key, title, run.requests, run.seconds, run.rps, run.percentile_ms(0.5),
               run.percentile_ms(0.9), run.percentile_ms(0.99),
               max(run.latencies_s) * 1000 if run.latencies_s else None, outcome)


# --- the rows ------------------------------------------------------------------------------

FIXED = (  # key, title, path, body attribute, the expected gRPC answer
    ("g1", "Health/Check", HEALTH, "health", "OK"),
    ("g2", "GetActivity (+ ProductService.GetProduct)", GET_ACTIVITY, "get_activity", "OK"),
    ("g3", "Seckill refused SOLD_OUT", SECKILL, "sold_out", "FAILED_PRECONDITION/SOLD_OUT"),
    ("g4", "Seckill refused ALREADY_EXISTS", SECKILL, "already_exists",
     "ALREADY_EXISTS/ALREADY_PURCHASED"),
)


def run_rows(suite: Suite) -> None:
    """The h2load rows, after seckill-bench's; a failure is the row's outcome."""
    state: dict[str, float] = {}
    try:
        binary = install_h2load()
    except StackError as exc:
        suite.results.rows.append(Row("g", "h2load rows", outcome=f"failed: {exc}",
                                      failed=True))
        log(f"(g) failed: {exc}")
        return
    suite.row("g", f"h2load, {IN_FLIGHT} in flight, {ROUNDS} alternating rounds",
              lambda: fixed_rows(suite, binary, state))
    for in_flight in OVERLOAD_IN_FLIGHT:
        suite.row(f"h{in_flight}", f"h2load overload, {in_flight:,} in flight",
                  functools.partial(overload_row, suite, binary, in_flight, state))
    for workers in range(1, len(os.sched_getaffinity(0)) + 1):
        suite.row(f"i{workers}", f"h2load scaling, {workers} worker(s)",
                  functools.partial(scaling_row, suite, binary, workers))


def fixed_rows(suite: Suite, binary: str, state: dict[str, float]) -> Row:
    """(g1)-(g4): rounds alternate between the rows so that the machine's drift is shared;
    each row is its median round. Rows g1-g4 are appended; the returned row sums them up."""
    workers = suite.settings.workers
    calls = suite.settings.calls
    with activity_service(suite, workers, "h2load-activity") as service:
        bodies = open_sold_out_sale(suite, service.address)
        for _key, _title, path, attr, expected in FIXED:
            _checked(service.address, path, getattr(bodies, attr), expected)
            run_h2load(binary, service.address, path, getattr(bodies, attr),
                       in_flight=IN_FLIGHT, clients=CLIENTS, requests=max(calls // 10, 500))
        rounds: dict[str, list[H2Run]] = {key: [] for key, *_ in FIXED}
        for _ in range(ROUNDS):
            for key, _title, path, attr, _expected in FIXED:
                rounds[key].append(run_h2load(binary, service.address, path,
                                              getattr(bodies, attr), in_flight=IN_FLIGHT,
                                              clients=CLIENTS, requests=calls))
        for _key, _title, path, attr, expected in FIXED:
            _checked(service.address, path, getattr(bodies, attr), expected)
    medians = {key: sorted(runs, key=lambda r: r.rps)[len(runs) // 2]
               for key, runs in rounds.items()}
    health = medians["g1"].rps
    state["f3_rps"] = medians["g3"].rps
    for key, title, _path, _attr, expected in FIXED:
        run = medians[key]
        spread = ", ".join(f"{r.rps:,.0f}" for r in rounds[key])
        outcome = f"{expected}; rounds {spread} calls/s"
        if key != "g1":
            ratio = run.rps / health if health else 0.0
            verdict = "met" if ratio >= TARGET_RATIO else "not met"
            outcome += f"; {ratio:.2f}x Health/Check (target ≥ {TARGET_RATIO}: {verdict})"
        if run.failed or run.errored:
            outcome += f"; h2load: {run.failed} failed, {run.errored} errored"
        suite.results.rows.append(_row(key, f"h2load {title}, {IN_FLIGHT} in flight, "
                                            f"--workers {workers}", run, outcome))
    return Row("g", f"h2load rows g1-g4 (median of {ROUNDS} alternating rounds of "
                    f"{calls:,} calls each)", outcome="see g1-g4")


def overload_row(suite: Suite, binary: str, in_flight: int, state: dict[str, float]) -> Row:
    """(h): Seckills refused SOLD_OUT, `in_flight` at once, 1 s deadlines."""
    workers = suite.settings.workers
    with activity_service(suite, workers, f"h2load-overload-{in_flight}") as service:
        bodies = open_sold_out_sale(suite, service.address)
        _checked(service.address, SECKILL, bodies.sold_out, "FAILED_PRECONDITION/SOLD_OUT")
        with CodeSampler(service.address, SECKILL, bodies.sold_out, DEADLINE_S) as sampler:
            run = run_h2load(binary, service.address, SECKILL, bodies.sold_out,
                             in_flight=in_flight, clients=OVERLOAD_CONNECTIONS,
                             duration_s=OVERLOAD_SECONDS, warm_up_s=1.0,
                             deadline_s=DEADLINE_S)
    started = max(run.requests, len(run.latencies_s), 1)
    answered = run.within(DEADLINE_S)
    share = answered / started
    goodput = answered / run.seconds if run.seconds else 0.0
    base = state.get("f3_rps")
    codes = ", ".join(f"{code} {n}" for code, n in sampler.codes.most_common())
    outcome = (f"{share:.0%} of {started:,} calls answered within {DEADLINE_S:g} s (target ≥ "
               f"{TARGET_ANSWERED:.0%}: {'met' if share >= TARGET_ANSWERED else 'not met'}); "
               f"{goodput:,.0f} answers/s")
    if base:
        ratio = goodput / base
        outcome += (f" = {ratio:.2f}x the {IN_FLIGHT}-in-flight rate (target ≥ "
                    f"{TARGET_GOODPUT}: {'met' if ratio >= TARGET_GOODPUT else 'not met'})")
    outcome += f"; sampled gRPC codes: {codes or 'none'}"
    row = OverloadRow.of(_row(f"h{in_flight}", f"h2load overload: {in_flight:,} Seckills "
                                               f"(SOLD_OUT) in flight, {DEADLINE_S:g} s "
                                               f"deadlines, {OVERLOAD_SECONDS:g} s, --workers "
                                               f"{workers}", run, outcome), share)
    row.rps = goodput
    return row


def scaling_row(suite: Suite, binary: str, workers: int) -> Row:
    """(i): (g3)'s load on `workers` processes: calls/s per worker."""
    calls = suite.settings.calls
    with activity_service(suite, workers, f"h2load-scaling-{workers}") as service:
        bodies = open_sold_out_sale(suite, service.address)
        _checked(service.address, SECKILL, bodies.sold_out, "FAILED_PRECONDITION/SOLD_OUT")
        run_h2load(binary, service.address, SECKILL, bodies.sold_out, in_flight=IN_FLIGHT,
                   clients=CLIENTS, requests=max(calls // 10, 500))
        runs = [run_h2load(binary, service.address, SECKILL, bodies.sold_out,
                           in_flight=IN_FLIGHT, clients=CLIENTS, requests=calls)
                for _ in range(2)]
    run = max(runs, key=lambda r: r.rps)
    rates = ", ".join(f"{r.rps:,.0f}" for r in runs)
    return _row(f"i{workers}", f"h2load scaling: Seckill SOLD_OUT, {IN_FLIGHT} in flight, "
                               f"--workers {workers}", run,
                f"{run.rps / workers:,.0f} calls/s per worker (runs {rates}; the better)")

