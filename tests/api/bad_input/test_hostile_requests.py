"""Hostile requests beyond single fields: SQL injection strings stored and matched literally,
cursors past the end, the size cap (plain, compressed, and what a refusal echoes), and
grpcurl's malformed or wrongly typed JSON."""

from __future__ import annotations

import asyncio
import json

import grpc
import pytest
from google.protobuf import field_mask_pb2
from seckill.v1 import activity_pb2, order_pb2, product_pb2

from seckill_common.api.pages import encode_page_token
from tests.helpers.bad_input import (
    Prober,
    ServerLog,
    all_methods,
    method_path,
)
from tests.helpers.bad_input_rules import (
    ACTIVITY,
    MAX_DESCRIPTION,
    ORDER,
    PRODUCT,
    refused_with,
    remove,
    row,
    seconds_at,
)
from tests.helpers.hostile_values import (
    INT64_MAX,
    NOW,
    SQL_INJECTIONS,
)
from tests.helpers.stack import ADMIN, ADMIN_TOKEN
from tests.helpers.wire import grpcurl, varint

# A database warning (truncation, overflow) raised in a service becomes an error there, and so
# an INTERNAL answer that fails the test.
pytestmark = pytest.mark.filterwarnings("error::pymysql.err.Warning")



async def test_sql_injection_strings_are_stored_and_matched_literally(prober: Prober) -> None:
    """Every injection string in every string field: stored byte for byte, matched exactly
    as a filter, and the tables all still there with only the rows the OK calls made."""
    stack = prober.stack
    created = await stack.products.CreateProduct(product_pb2.CreateProductRequest(
        product=product_pb2.Product(name="injection target", stock=len(SQL_INJECTIONS))),
        metadata=ADMIN)
    sale = await stack.activities.CreateActivity(activity_pb2.CreateActivityRequest(
        activity=activity_pb2.Activity(product_id=created.id, name="injection sale",
                                       start_time=seconds_at(NOW - 60),
                                       end_time=seconds_at(NOW + 86400))), metadata=ADMIN)
    await prober.resync()
    for text in SQL_INJECTIONS:
        made = await prober.call(method_path(PRODUCT, "CreateProduct"),
                                 product_pb2.CreateProductRequest(product=product_pb2.Product(
                                     name=text, description=text)))
        assert made.code == "OK"
        assert await row(prober, "SELECT name, description FROM products WHERE id = %s",
                         made.response.id) == (text, text)
        await remove(prober, "products", made.response.id)
        renamed = await prober.call(method_path(ACTIVITY, "UpdateActivity"),
                                    activity_pb2.UpdateActivityRequest(
                                        activity=activity_pb2.Activity(id=sale.id, name=text)))
        assert renamed.code == "OK"
        assert await row(prober, "SELECT name FROM activities WHERE id = %s", sale.id) == (text,)
        bought = await prober.call(method_path(ACTIVITY, "Seckill"),
                                   activity_pb2.SeckillRequest(activity_id=sale.id,
                                                               user_id=text))
        assert bought.code == "OK", bought.error and bought.error.details()
        listed = await prober.call(method_path(ORDER, "ListOrders"),
                                   order_pb2.ListOrdersRequest(user_id=text,
                                                               activity_id=sale.id))
        # "' OR '1'='1" would list every order if it were spliced into the SQL.
        assert [o.user_id for o in listed.response.orders] == [text]
        for path, request in [
            (method_path(PRODUCT, "ListProducts"), product_pb2.ListProductsRequest(
                page_token=text)),
            (method_path(ORDER, "ListOrders"), order_pb2.ListOrdersRequest(page_token=text)),
            (method_path(PRODUCT, "UpdateProduct"), product_pb2.UpdateProductRequest(
                product=product_pb2.Product(id=created.id, name="x"),
                update_mask=field_mask_pb2.FieldMask(paths=[text]))),
        ]:
            assert (await prober.call(path, request)).code == "INVALID_ARGUMENT"
    orders = await row(prober, "SELECT COUNT(*) FROM orders WHERE activity_id = %s", sale.id)
    assert orders == (len(SQL_INJECTIONS),)
    async with prober.conn.cursor() as cur:
        await cur.execute("SHOW TABLES")
        assert {"products", "activities", "orders"} <= {name for (name,) in await cur.fetchall()}


@pytest.mark.parametrize("after", [INT64_MAX + 1, 2**64, 10**100])
async def test_a_cursor_past_the_largest_id_is_refused(prober: Prober, after: int) -> None:
    """Regression: a token naming an id past 2^63-1 reached SQL as `id > 1000...0`, which
    MariaDB answered with an overflow warning; no server issues such a token."""
    for path, request_cls, filters in [
        (method_path(PRODUCT, "ListProducts"), product_pb2.ListProductsRequest, {}),
        (method_path(ACTIVITY, "ListActivities"), activity_pb2.ListActivitiesRequest, {}),
        (method_path(ORDER, "ListOrders"), order_pb2.ListOrdersRequest,
         {"user_id": "", "activity_id": 0}),
    ]:
        request = request_cls(page_token=encode_page_token(after, filters))
        refused_with(prober, await prober.call(path, request), {"page_token"})


async def test_a_page_of_the_largest_products_fits_a_default_client(prober: Prober) -> None:
    """Regression: 120 products with 10,000-emoji descriptions (each a valid product, 40 kB)
    made ListProducts(page_size=1000) a 4.8 MB reply, past the 4 MiB a default grpc client
    accepts: it got RESOURCE_EXHAUSTED. Pages now end early, and the token carries on."""
    made = []
    for i in range(120):
        made.append((await prober.stack.products.CreateProduct(
            product_pb2.CreateProductRequest(product=product_pb2.Product(
                name=f"big {i}", description="\U0001f600" * MAX_DESCRIPTION)),
            metadata=ADMIN)).id)
    await prober.resync()
    try:
        seen: list[int] = []
        request = product_pb2.ListProductsRequest(page_size=1000)
        while True:
            outcome = await prober.call(method_path(PRODUCT, "ListProducts"), request)
            assert outcome.code == "OK", outcome.error and outcome.error.details()
            page = outcome.response
            assert page.products and page.ByteSize() < 4 * 1024 * 1024
            seen += [product.id for product in page.products]
            if not page.next_page_token:
                break
            request = product_pb2.ListProductsRequest(
                page_size=1000, page_token=page.next_page_token)
        assert seen == sorted(set(seen)) and set(made) <= set(seen)
    finally:
        async with prober.conn.cursor() as cur:
            await cur.execute("DELETE FROM products WHERE id BETWEEN %s AND %s",
                              (made[0], made[-1]))
        await prober.resync()


def padded(base: bytes, total: int) -> bytes:
    """`base` plus an unknown length-delimited field (number 1000) making `total` bytes; a
    parser keeps unknown fields and the service never looks at them."""
    tag = bytes([0xC2, 0x3E])  # (1000 << 3) | 2 as a varint
    for length_bytes in range(1, 6):
        payload = total - len(base) - len(tag) - length_bytes
        if payload >= 0 and len(varint(payload)) == length_bytes:
            return base + tag + varint(payload) + b"u" * payload
    raise AssertionError(f"cannot pad {len(base)} bytes to {total}")


async def test_requests_over_the_size_cap_are_refused_and_change_nothing(
        prober: Prober) -> None:
    """For every RPC: exactly SECKILL_MAX_MESSAGE_BYTES is handled as the same request
    without padding; one byte more is RESOURCE_EXHAUSTED before any of our code runs."""
    cap = prober.max_message_bytes
    assert cap == 64 * 1024  # the documented default
    for path in all_methods():
        base = prober.request_class(path)().SerializeToString()  # the empty request
        plain = await prober.call(path, base)
        at_cap = await prober.call(path, padded(base, cap))
        assert at_cap.code == plain.code, (path, plain.code, at_cap.code)
        over = await prober.call(path, padded(base, cap + 1))
        assert over.code == "RESOURCE_EXHAUSTED", (path, over.code)


async def test_a_name_just_under_the_cap_is_invalid_argument_and_over_it_exhausted(
        prober: Prober) -> None:
    """One byte under the cap and at it, a 65,000-character name reaches validation."""
    path = method_path(PRODUCT, "CreateProduct")
    cap = prober.max_message_bytes
    for size in (cap - 1, cap):
        request = product_pb2.CreateProductRequest(product=product_pb2.Product(name="n"))
        request.product.name = "n" * (size - request.ByteSize() + 1 - 4)  # 4: longer lengths
        while request.ByteSize() < size:
            request.product.name += "n"
        assert request.ByteSize() == size
        refused_with(prober, await prober.call(path, request), {"product.name"})
    request.product.name += "n"  # one byte over the cap
    assert (await prober.call(path, request)).code == "RESOURCE_EXHAUSTED"


HOSTILE_MASKS = {
    "one 60,000-character path": ["x" * 60_000],
    "one path of 15,000 emoji": ["\U0001f600" * 15_000],
    "6,000 distinct paths": [f"p{i}" for i in range(6_000)],
    "20,000 copies of one path": ["a"] * 20_000,
    "600 paths of 20 emoji": [f"{i}" + "\U0001f600" * 20 for i in range(600)],
}


@pytest.mark.parametrize("paths", HOSTILE_MASKS.values(), ids=HOSTILE_MASKS.keys())
async def test_a_refusal_stays_small_whatever_the_request_echoes(
        prober: Prober, paths: list[str]) -> None:
    """Regression: an UpdateActivity whose mask held a 10 kB path was refused with the path
    quoted in full, and the trailers outgrew the client's metadata limit (16 KiB): the client
    got RESOURCE_EXHAUSTED "received metadata size exceeds hard limit" instead of the answer.
    Now at most 10 violations, each quoting at most 20 characters: well under grpc's 8 KiB."""
    for path, request in [
        (method_path(PRODUCT, "UpdateProduct"), product_pb2.UpdateProductRequest(
            product=product_pb2.Product(id=1, name="x"),
            update_mask=field_mask_pb2.FieldMask(paths=paths))),
        (method_path(ACTIVITY, "UpdateActivity"), activity_pb2.UpdateActivityRequest(
            activity=activity_pb2.Activity(id=1, name="x"),
            update_mask=field_mask_pb2.FieldMask(paths=paths))),
    ]:
        assert request.ByteSize() <= prober.max_message_bytes
        started = asyncio.get_running_loop().time()
        outcome = await prober.call(path, request)
        assert asyncio.get_running_loop().time() - started < 2  # no quadratic work either
        refused_with(prober, outcome, {"update_mask"})
        assert outcome.error is not None
        trailers = sum(len(k) + len(v) for k, v in outcome.error.trailing_metadata() or ())
        assert trailers + len((outcome.error.details() or "").encode()) * 3 < 8 * 1024
        assert len(prober.bad_fields(outcome)) <= 10


async def test_a_compressed_request_is_capped_by_its_decompressed_size(
        prober: Prober) -> None:
    """A gzip request of a few kB that inflates to 10 MB (a zip bomb) is refused
    RESOURCE_EXHAUSTED like a plain one, and creates nothing; at the cap it is handled."""
    base = product_pb2.CreateProductRequest(
        product=product_pb2.Product(name="gzip", stock=1)).SerializeToString()
    async with grpc.aio.insecure_channel(prober.stack.product.address,
                                         compression=grpc.Compression.Gzip) as channel:
        create: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
            method_path(PRODUCT, "CreateProduct"))
        for size in (10_000_000, prober.max_message_bytes + 1):
            await prober.resync()
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await create(padded(base, size), metadata=ADMIN, timeout=30)
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert await prober.snapshot() == prober.last
        made = product_pb2.Product.FromString(
            await create(padded(base, prober.max_message_bytes), metadata=ADMIN, timeout=30))
        assert made.name == "gzip"
        await remove(prober, "products", made.id)


MALFORMED_JSON = [
    ("GetProduct", "{bad"),
    ("GetProduct", "{\"id\": 1,"),
    ("GetProduct", "[1]"),
    ("GetProduct", "{\"nope\": 1}"),
    ("GetProduct", "{\"id\": \"abc\"}"),
    ("GetProduct", "{\"id\": {}}"),
    ("GetProduct", "{\"id\": 1.5}"),
    ("GetProduct", "{\"id\": \"9223372036854775808\"}"),
    ("ListProducts", "{\"page_size\": 3000000000}"),
    ("ListProducts", "{\"page_size\": true}"),
    ("CreateProduct", "{\"product\": \"x\"}"),
    ("CreateProduct", "{\"product\": {\"price_cents\": \"1e100\"}}"),
    ("CreateProduct", "{\"product\": {\"name\": 5}}"),
    ("UpdateProduct", "{\"product\": {\"id\": 1}, \"update_mask\": 7}"),
]


@pytest.mark.parametrize(("rpc", "body"), MALFORMED_JSON)
async def test_grpcurl_malformed_json_is_refused_cleanly(
        prober: Prober, server_log: ServerLog, rpc: str, body: str) -> None:
    """grpcurl refuses JSON it cannot map onto the request message with a message and a
    non-zero exit; nothing reaches the service, and nothing changes."""
    address = prober.stack.product.address
    method = method_path(PRODUCT, rpc)
    calls_before = sum(n for (m, _), n in server_log.codes.items() if m == method)
    await prober.resync()
    code, out, err = await grpcurl("-H", f"authorization: Bearer {ADMIN_TOKEN}", "-d", body,
                                   address, method.lstrip("/"))
    assert code != 0, out
    assert err.strip(), "no explanation on stderr"
    assert "Internal" not in err and "Unknown" not in err, err
    assert sum(n for (m, _), n in server_log.codes.items() if m == method) == calls_before
    assert await prober.snapshot() == prober.last


async def test_grpcurl_well_formed_json_with_bad_values_gets_the_documented_refusal(
        prober: Prober) -> None:
    """JSON that parses reaches validation: INVALID_ARGUMENT with its BadRequest, exit 1."""
    code, _, err = await grpcurl(
        "-H", f"authorization: Bearer {ADMIN_TOKEN}",
        "-d", json.dumps({"product": {"name": "'; DROP TABLE orders; --" * 20}}),
        prober.stack.product.address, "seckill.v1.ProductService/CreateProduct")
    assert code != 0 and "InvalidArgument" in err and "product.name" in err, err
    assert await prober.snapshot() == prober.last
