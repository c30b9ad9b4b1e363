"""seckill-bench: templates, reports, and small real runs against the in-process stack."""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from pathlib import Path

import pytest
from seckill.v1 import activity_pb2, order_pb2

from seckill_bench import BenchConfig, BenchError, parse_duration, run_load
from seckill_bench.__main__ import main
from seckill_bench.methods import MethodError, resolve, split_call
from seckill_bench.report import histogram
from seckill_bench.template import Template, TemplateError, static_values
from seckill_stack.invariants import percentile
from tests.helpers.factories import make_activity, make_product
from tests.helpers.stack import ADMIN, Stack, start_stack

SECKILL = "seckill.v1.ActivityService/Seckill"
GHZ_KEYS = {"date", "options", "count", "total", "average", "fastest", "slowest", "rps",
            "histogram", "latencyDistribution", "statusCodeDistribution", "errorDistribution",
            "reasonDistribution"}


# --- templates, methods, statistics: no server ---------------------------------------------

def test_template_renders_every_placeholder() -> None:
    template = Template.compile(
        '{"n": {{.RequestNumber}}, "w": "{{ .WorkerID }}", "u": "{{.UUID}}", '
        '"s": {{.TimestampUnix}}, "ms": {{.TimestampUnixMilli}}, "f": "{{.FullyQualifiedName}}", '
        '"m": "{{.MethodName}}", "svc": "{{.ServiceName}}", "again": {{.RequestNumber}}}')
    bound = template.bind(static_values(SECKILL, "g3c1"))
    assert set(bound.dynamic) == {"RequestNumber", "UUID", "TimestampUnix",
                                  "TimestampUnixMilli"}
    value = json.loads(bound.render(41))
    assert value["n"] == value["again"] == 41
    assert value["w"] == "g3c1"
    assert uuid.UUID(value["u"])
    assert value["ms"] // 1000 in (value["s"], value["s"] + 1)
    assert value["f"] == "seckill.v1.ActivityService.Seckill"
    assert value["m"] == "Seckill"
    assert value["svc"] == "seckill.v1.ActivityService"


def test_template_fast_paths() -> None:
    only_number = Template.compile('{"user_id": "user-{{.RequestNumber}}"}').bind({})
    assert only_number.render(7) == '{"user_id": "user-7"}'
    twice = Template.compile('"{{.RequestNumber}}-{{.RequestNumber}}"').bind({})
    assert twice.render(12) == '"12-12"'
    halves = Template.compile('"u{{div .RequestNumber 2}}/{{ mod .RequestNumber 3 }}"').bind({})
    assert [halves.render(n) for n in (4, 5)] == ['"u2/1"', '"u2/2"']
    same_uuid = Template.compile('["{{.UUID}}", "{{.UUID}}", {{.RequestNumber}}]').bind({})
    first, second, _ = json.loads(same_uuid.render(1))
    assert first == second  # one value per request, as in ghz
    static_only = Template.compile('{"w": "{{.WorkerID}}"}').bind({"WorkerID": "g0c0"})
    assert static_only.is_constant and static_only.render(5) == '{"w": "g0c0"}'
    plain = Template.compile('{"a": {"b": {}}}')
    assert plain.is_constant and plain.bind({}).render(0) == '{"a": {"b": {}}}'


@pytest.mark.parametrize("text", ['{"a": "{{.Nope}}"}', '{"a": "{{RequestNumber}}"}',
                                  '{"a": "{{newUUID}}"}', '{"a": {{div .RequestNumber 0}}}'])
def test_unknown_placeholders_are_refused(text: str) -> None:
    with pytest.raises(TemplateError, match="unknown template placeholder"):
        Template.compile(text)


def test_method_resolution() -> None:
    assert split_call("seckill.v1.ActivityService.Seckill") == ("seckill.v1.ActivityService",
                                                                "Seckill")
    assert split_call("/seckill.v1.ActivityService/Seckill")[1] == "Seckill"
    method = resolve("seckill.v1.ActivityService.Seckill")
    assert method.path == "/seckill.v1.ActivityService/Seckill" and method.is_seckill
    assert method.request_class.DESCRIPTOR.full_name == "seckill.v1.SeckillRequest"
    assert resolve("grpc.health.v1.Health/Check").response_class.DESCRIPTOR.name == (
        "HealthCheckResponse")
    with pytest.raises(MethodError, match="streaming"):
        resolve("grpc.health.v1.Health/Watch")
    with pytest.raises(MethodError, match="unknown service"):
        resolve("nope.Service/Call")


def test_durations_and_statistics() -> None:
    assert parse_duration("10s") == 10.0
    assert parse_duration("1m30s") == 90.0
    assert parse_duration("250ms") == pytest.approx(0.25)
    assert parse_duration("2") == 2.0
    values = [i / 1000 for i in range(1, 101)]  # 1..100 ms
    assert percentile(values, 50) == pytest.approx(0.050)
    assert percentile(values, 99) == pytest.approx(0.099)
    buckets = histogram(values)
    assert len(buckets) == 11 and sum(b.count for b in buckets) == 100
    assert buckets[0].mark_s == 0.001 and buckets[-1].mark_s == 0.1


# --- real runs -------------------------------------------------------------------------------

def assert_seckill_answers(statuses: dict[str, int], reasons: dict[str, int], *, ok: int,
                           total: int, stock: int = 20) -> None:
    """`ok` orders; every refusal is ALREADY_PURCHASED or SOLD_OUT, with its ErrorInfo.

    Each user calls twice, so the users who got none of the `stock` units sent at least
    `total - 2 * stock` calls, all SOLD_OUT.
    """
    assert statuses.get("OK", 0) == ok
    assert set(statuses) <= {"OK", "AlreadyExists", "FailedPrecondition"}
    assert sum(statuses.values()) == total
    assert reasons == {k: v for k, v in {
        "ALREADY_EXISTS/ALREADY_PURCHASED": statuses.get("AlreadyExists", 0),
        "FAILED_PRECONDITION/SOLD_OUT": statuses.get("FailedPrecondition", 0)}.items() if v}
    assert statuses["FailedPrecondition"] >= total - 2 * stock


async def test_seckill_runs_count_statuses_and_hold_the_invariants(
        stack: Stack, tmp_path: Path) -> None:
    product = await make_product(stack, stock=20)
    activity = await make_activity(stack, product.id)
    # Request numbers 2k and 2k+1 are the same user: every user buys twice, nearly at once.
    data = json.dumps({"activity_id": activity.id,
                       "user_id": "user-{{div .RequestNumber 2}}"})

    # 30 users, 60 calls, 20 units; in this process.
    first = await run_load(BenchConfig(
        call=SECKILL, host=stack.activity.address, data=data, total=60, concurrency=8,
        connections=2, order_addr=stack.order.address, initial_stock=20))
    assert first.count == 60
    # 20 winners; every other call is ALREADY_PURCHASED (a winner's second call) or
    # SOLD_OUT.
    assert_seckill_answers(first.status_counts, first.reason_counts, ok=20, total=60)
    assert first.error_counts == {
        "rpc error: code = AlreadyExists desc = you already hold an order for this activity":
            first.status_counts.get("AlreadyExists", 0),
        "rpc error: code = FailedPrecondition desc = sold out":
            first.status_counts["FailedPrecondition"]}
    assert first.invariants and first.invariants_ok, first.summary_text()
    assert first.latency_ms["min"] <= first.latency_ms["p50"] <= first.latency_ms["max"]

    # The same 60 calls again, through the CLI, from two processes: the 20 winners are told
    # ALREADY_PURCHASED (twice each), the others SOLD_OUT, and nobody gets a second order.
    out, page = tmp_path / "report.json", tmp_path / "report.html"
    code = await asyncio.to_thread(main, [
        "--call", "seckill.v1.ActivityService.Seckill", "-d", data, "-n", "60", "-c", "6",
        "--connections", "2", "--procs", "2", "--insecure", "--format", "json",
        "-o", str(out), "--html", str(page), "--no-progress", "--order-addr",
        stack.order.address, "--initial-stock", "20", stack.activity.address])
    assert code == 0
    report = json.loads(out.read_text())
    assert report.keys() >= GHZ_KEYS
    assert report["count"] == 60
    assert_seckill_answers(report["statusCodeDistribution"], report["reasonDistribution"],
                           ok=0, total=60)
    assert report["errorDistribution"][
        "rpc error: code = FailedPrecondition desc = sold out"] >= 20
    assert report["options"]["procs"] == 2 and report["options"]["connections"] == 2
    assert [d["percentage"] for d in report["latencyDistribution"]] == [10, 25, 50, 75, 90,
                                                                         95, 99]
    assert sum(b["count"] for b in report["histogram"]) == 60
    assert report["fastest"] <= report["average"] <= report["slowest"] <= report["total"]
    assert all(i["ok"] for i in report["invariants"]) and len(report["invariants"]) == 9
    html_text = page.read_text()
    assert "id=histogram" in html_text and "AlreadyExists" in html_text
    assert "<script" not in html_text and "http" not in html_text.replace(
        "http-equiv", "")  # self-contained

    got = await stack.activities.GetActivity(activity_pb2.GetActivityRequest(id=activity.id))
    assert got.product.stock == 0


async def test_a_failed_invariant_exits_1(stack: Stack, capsys: pytest.CaptureFixture) -> None:
    product = await make_product(stack, stock=3)
    activity = await make_activity(stack, product.id)
    code = await asyncio.to_thread(main, [
        "--call", SECKILL, "-d", f'{{"activity_id": {activity.id}, "user_id": "u{{{{.UUID}}}}"}}',
        "-n", "5", "-c", "2", "--no-progress", "--order-addr", stack.order.address,
        "--initial-stock", "4", stack.activity.address])  # wrong on purpose: it was 3
    assert code == 1
    out = capsys.readouterr().out
    assert "[OK]" in out and "[FailedPrecondition]" in out
    assert "[FAILED] units of active orders == initial stock - remaining stock" in out
    assert "[ok]     no user holds two active orders" in out


async def test_templates_take_a_quantity_and_the_invariants_count_units(stack: Stack) -> None:
    product = await make_product(stack, stock=20)
    activity = await make_activity(stack, product.id, per_user_limit=3)
    # Quantities 0 (= 1), 1, 2, 3 in turn; every user twice at once, with two quantities.
    data = json.dumps({"activity_id": activity.id, "user_id": "u{{div .RequestNumber 2}}",
                       "quantity": "QUANTITY"}).replace('"QUANTITY"', "{{mod .RequestNumber 4}}")
    report = await run_load(BenchConfig(
        call=SECKILL, host=stack.activity.address, data=data, total=40, concurrency=6,
        order_addr=stack.order.address, initial_stock=20))
    assert report.invariants_ok, report.summary_text()
    names = {i.name: i.detail for i in report.invariants}
    assert "units of the orders listed == units of OK answers" in names
    got = await stack.activities.GetActivity(activity_pb2.GetActivityRequest(id=activity.id))
    orders = await stack.orders.ListOrders(order_pb2.ListOrdersRequest(
        activity_id=activity.id, page_size=100))
    assert got.product.stock + sum(o.quantity for o in orders.orders) == 20
    assert {o.quantity for o in orders.orders} <= {1, 2, 3}
    assert len(orders.orders) == report.ok_answers


async def test_health_check_run_and_duration_mode(stack: Stack) -> None:
    counted = await run_load(BenchConfig(
        call="grpc.health.v1.Health/Check", host=stack.product.address, data="{}", total=40,
        concurrency=4, skip_first=10))
    assert counted.count == 30 and counted.status_counts == {"OK": 30}
    assert not counted.invariants and counted.end_reason == "normal"
    text = counted.summary_text()
    for heading in ("Count:", "Requests/sec:", "Response time histogram:", "99 % in",
                    "[OK]"):
        assert heading in text
    assert re.search(r"∎", text)

    timed = await run_load(BenchConfig(
        call="grpc.health.v1.Health.Check", host=stack.product.address, duration_s=0.3,
        concurrency=2))
    assert timed.end_reason == "timeout" and timed.count > 0
    assert 0.3 <= timed.total_s < 2.0


async def test_setup_errors_come_before_the_run(stack: Stack) -> None:
    with pytest.raises(BenchError, match=r"not make a valid seckill\.v1\.SeckillRequest"):
        await run_load(BenchConfig(call=SECKILL, host=stack.activity.address,
                                   data='{"activity_id": "x{{.RequestNumber}}"}'))
    with pytest.raises(BenchError, match="cannot list orders"):
        await run_load(BenchConfig(call=SECKILL, host=stack.activity.address,
                                   data='{"activity_id": 1, "user_id": "a"}',
                                   order_addr="127.0.0.1:1"))
    with pytest.raises(BenchError, match="concurrency"):
        await run_load(BenchConfig(call=SECKILL, host=stack.activity.address, procs=4,
                                   concurrency=2))


async def test_with_user_tokens_the_admin_token_buys_and_checks(db_url: str) -> None:
    """Services that take user tokens: the load carries the admin token (which may act as
    any user), and the invariant check lists the orders with it too."""
    secured = await start_stack(db_url, SECKILL_USER_TOKEN_SECRET="s" * 40)
    try:
        product = await make_product(secured, stock=10)
        activity = await make_activity(secured, product.id)
        report = await run_load(BenchConfig(
            call=SECKILL, host=secured.activity.address, total=30, concurrency=6,
            data=json.dumps({"activity_id": activity.id, "user_id": "u{{.RequestNumber}}"}),
            metadata=dict(ADMIN), order_addr=secured.order.address, initial_stock=10))
        assert report.status_counts == {"OK": 10, "FailedPrecondition": 20}
        assert report.invariants and report.invariants_ok, report.summary_text()
    finally:
        await secured.stop()
