"""ProductService end to end: CRUD, update masks, pagination and every error with its details."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from google.protobuf import field_mask_pb2
from seckill.v1 import product_pb2

from tests.helpers.factories import make_activity, make_product
from tests.helpers.rpc import DEEP_TOKEN, bad_fields, not_found, refused, walk
from tests.helpers.stack import ADMIN, Stack, query

MAX = 10**12
PRODUCT_ROW = "SELECT name, description, price_cents, stock FROM products WHERE id = %s"


async def product_row(stack: Stack, product_id: int) -> tuple | None:
    rows = await query(stack.db_url, PRODUCT_ROW, (product_id,))
    return rows[0] if rows else None


async def update(stack: Stack, paths: list[str] | None = None,
                 **fields: Any) -> product_pb2.Product:
    return await stack.products.UpdateProduct(product_pb2.UpdateProductRequest(
        product=product_pb2.Product(**fields),
        update_mask=field_mask_pb2.FieldMask(paths=paths or [])), metadata=ADMIN)


async def seed_products(stack: Stack, count: int) -> None:
    """`count` products inserted straight into the table (faster than `count` RPCs)."""
    values = ", ".join(
        f"('p{i}', '', 1, 1, UTC_TIMESTAMP(6), UTC_TIMESTAMP(6))" for i in range(count))
    await query(stack.db_url, "INSERT INTO products (name, description, price_cents, stock,"
                f" create_time, update_time) VALUES {values}")


async def test_create_get_and_list_a_product(stack: Stack) -> None:
    created = await stack.products.CreateProduct(product_pb2.CreateProductRequest(
        product=product_pb2.Product(id=55, name="Kettle", description="Boils",
                                    price_cents=MAX, stock=7)), metadata=ADMIN)
    assert created.id > 0
    assert (created.name, created.description, created.price_cents, created.stock) == (
        "Kettle", "Boils", MAX, 7)
    assert created.create_time.seconds > 0 and created.update_time == created.create_time
    assert await product_row(stack, created.id) == ("Kettle", "Boils", MAX, 7)
    got = await stack.products.GetProduct(product_pb2.GetProductRequest(id=created.id))
    assert got == created
    listed = await stack.products.ListProducts(product_pb2.ListProductsRequest())
    assert list(listed.products) == [created] and listed.next_page_token == ""


@pytest.mark.parametrize("fields", [
    {"name": "n" * 200, "description": "d" * 10_000, "price_cents": MAX, "stock": MAX},
    {"name": "Free", "description": "", "price_cents": 0, "stock": 0},
], ids=["upper-bounds", "lower-bounds"])
async def test_create_product_accepts_the_bounds(stack: Stack, fields: dict) -> None:
    created = await stack.products.CreateProduct(
        product_pb2.CreateProductRequest(product=product_pb2.Product(**fields)), metadata=ADMIN)
    assert await product_row(stack, created.id) == (
        fields["name"], fields["description"], fields["price_cents"], fields["stock"])


@pytest.mark.parametrize(("fields", "expected"), [
    (None, {"product"}),
    ({"name": ""}, {"product.name"}),
    ({"name": "   "}, {"product.name"}),
    ({"name": "n" * 201}, {"product.name"}),
    ({"description": "d" * 10_001}, {"product.description"}),
    ({"price_cents": -1}, {"product.price_cents"}),
    ({"price_cents": MAX + 1}, {"product.price_cents"}),
    ({"stock": -1}, {"product.stock"}),
    ({"stock": MAX + 1}, {"product.stock"}),
    ({"name": "", "price_cents": -5, "stock": -5},
     {"product.name", "product.price_cents", "product.stock"}),
])
async def test_create_product_rejects_bad_fields(stack: Stack, fields: dict | None,
                                                 expected: set[str]) -> None:
    request = product_pb2.CreateProductRequest()
    if fields is not None:
        request.product.CopyFrom(product_pb2.Product(**{"name": "Phone", **fields}))
    assert await bad_fields(stack.products.CreateProduct(request, metadata=ADMIN)) == expected
    assert await query(stack.db_url, "SELECT id FROM products") == []


@pytest.mark.parametrize("bad_id", [0, -1])
@pytest.mark.parametrize("rpc", ["GetProduct", "DeleteProduct", "UpdateProduct"])
async def test_ids_must_be_positive(stack: Stack, rpc: str, bad_id: int) -> None:
    if rpc == "UpdateProduct":
        call, field = update(stack, ["name"], id=bad_id, name="x"), "product.id"
    else:
        request = getattr(product_pb2, f"{rpc}Request")(id=bad_id)
        call, field = getattr(stack.products, rpc)(request, metadata=ADMIN), "id"
    assert await bad_fields(call) == {field}


@pytest.mark.parametrize("rpc", ["GetProduct", "DeleteProduct", "UpdateProduct"])
async def test_unknown_product_is_not_found(stack: Stack, rpc: str) -> None:
    if rpc == "UpdateProduct":
        call = update(stack, ["name"], id=999, name="x")
    else:
        request = getattr(product_pb2, f"{rpc}Request")(id=999)
        call = getattr(stack.products, rpc)(request, metadata=ADMIN)
    assert await not_found(call) == ("seckill.v1.Product", "products/999")


async def test_delete_product_removes_it(stack: Stack) -> None:
    product = await make_product(stack)
    await stack.products.DeleteProduct(product_pb2.DeleteProductRequest(id=product.id),
                                       metadata=ADMIN)
    assert await product_row(stack, product.id) is None
    assert await not_found(stack.products.GetProduct(
        product_pb2.GetProductRequest(id=product.id))) == (
        "seckill.v1.Product", f"products/{product.id}")


async def test_delete_product_in_use_is_failed_precondition(stack: Stack) -> None:
    product = await make_product(stack)
    await make_activity(stack, product.id)
    reason, metadata = await refused(
        stack.products.DeleteProduct(product_pb2.DeleteProductRequest(id=product.id),
                                     metadata=ADMIN),
        grpc.StatusCode.FAILED_PRECONDITION)
    assert (reason, metadata) == ("PRODUCT_IN_USE", {"product_id": str(product.id)})
    assert await product_row(stack, product.id) is not None


# --- update masks (AIP-134) ------------------------------------------------------------------

@pytest.mark.parametrize(("paths", "fields", "expected"), [
    # An empty mask updates every populated field, and only those.
    ([], {"name": "Renamed"}, ("Renamed", "A phone", 9900, 10)),
    ([], {"description": "New", "price_cents": 1}, ("Phone", "New", 1, 10)),
    # An empty mask cannot zero a field: stock 0 is "not populated".
    ([], {"name": "Renamed", "stock": 0}, ("Renamed", "A phone", 9900, 10)),
    ([], {}, ("Phone", "A phone", 9900, 10)),
    # Explicit paths update only those, even when more fields are populated.
    (["price_cents"], {"name": "Ignored", "price_cents": 5, "stock": 3},
     ("Phone", "A phone", 5, 10)),
    (["stock"], {"stock": 42}, ("Phone", "A phone", 9900, 42)),
    (["stock"], {"stock": 0}, ("Phone", "A phone", 9900, 0)),
    (["description", "stock"], {}, ("Phone", "", 9900, 0)),
    (["stock", "stock"], {"stock": MAX}, ("Phone", "A phone", 9900, MAX)),
    # "*" replaces every updatable field, zero values included.
    (["*"], {"name": "Only name"}, ("Only name", "", 0, 0)),
])
async def test_update_product_applies_the_mask(stack: Stack, paths: list[str], fields: dict,
                                               expected: tuple) -> None:
    product = await make_product(stack)
    updated = await update(stack, paths, id=product.id, **fields)
    assert (updated.name, updated.description, updated.price_cents, updated.stock) == expected
    assert await product_row(stack, product.id) == expected
    assert updated.create_time == product.create_time
    assert updated.update_time.ToDatetime() >= product.update_time.ToDatetime()
    got = await stack.products.GetProduct(product_pb2.GetProductRequest(id=product.id))
    assert got == updated


@pytest.mark.parametrize(("paths", "fields", "expected"), [
    (["colour"], {}, {"update_mask"}),
    (["id"], {}, {"update_mask"}),
    (["create_time"], {}, {"update_mask"}),
    (["update_time"], {}, {"update_mask"}),
    (["product.name"], {"name": "x"}, {"update_mask"}),
    (["name", "nope"], {"name": "x"}, {"update_mask"}),
    (["name"], {}, {"product.name"}),
    (["name"], {"name": "n" * 201}, {"product.name"}),
    (["description"], {"description": "d" * 10_001}, {"product.description"}),
    (["price_cents"], {"price_cents": -1}, {"product.price_cents"}),
    (["stock"], {"stock": -1}, {"product.stock"}),
    (["stock"], {"stock": MAX + 1}, {"product.stock"}),
    ([], {"price_cents": MAX + 1, "stock": -1}, {"product.price_cents", "product.stock"}),
])
async def test_update_product_rejects_bad_masks_and_values(
        stack: Stack, paths: list[str], fields: dict, expected: set[str]) -> None:
    product = await make_product(stack)
    before = await product_row(stack, product.id)
    assert await bad_fields(update(stack, paths, id=product.id, **fields)) == expected
    assert await product_row(stack, product.id) == before


async def test_update_product_needs_a_product(stack: Stack) -> None:
    assert await bad_fields(stack.products.UpdateProduct(
        product_pb2.UpdateProductRequest(), metadata=ADMIN)) == {"product"}


# --- pagination --------------------------------------------------------------------------------

@pytest.mark.parametrize("count", [0, 1, 6, 7])
async def test_list_products_walks_every_row_once(stack: Stack, count: int) -> None:
    ids = [(await make_product(stack)).id for _ in range(count)]
    pages = await walk(stack.products.ListProducts,
                       product_pb2.ListProductsRequest(page_size=3), "products")
    # Each row once, ascending, in full pages; no empty page after the last row.
    assert pages == [ids[i:i + 3] for i in range(0, count, 3)] or (count, pages) == (0, [[]])


@pytest.mark.parametrize(("page_size", "served"), [
    (0, 50), (1, 1), (999, 999), (1000, 1000), (1001, 1000), (2**31 - 1, 1000)])
async def test_list_products_page_size_defaults_to_50_and_caps_at_1000(
        stack: Stack, page_size: int, served: int) -> None:
    await seed_products(stack, 1001)
    ids = [row[0] for row in await query(stack.db_url, "SELECT id FROM products ORDER BY id")]
    first = await stack.products.ListProducts(product_pb2.ListProductsRequest(
        page_size=page_size))
    assert [p.id for p in first.products] == ids[:served] and first.next_page_token
    second = await stack.products.ListProducts(product_pb2.ListProductsRequest(
        page_size=page_size, page_token=first.next_page_token))
    assert [p.id for p in second.products] == ids[served:2 * served]
    assert bool(second.next_page_token) == (2 * served < len(ids))


@pytest.mark.parametrize(("request_fields", "field"), [
    ({"page_size": -1}, "page_size"),
    ({"page_token": "garbage"}, "page_token"),
    ({"page_token": "!!!"}, "page_token"),
    ({"page_token": "W10"}, "page_token"),  # base64 of "[]"
    ({"page_token": "eyJhZnRlciI6IC0xfQ"}, "page_token"),  # base64 of '{"after": -1}'
    ({"page_token": DEEP_TOKEN}, "page_token"),
])
async def test_list_products_rejects_bad_page_requests(stack: Stack, request_fields: dict,
                                                       field: str) -> None:
    await make_product(stack)
    assert await bad_fields(stack.products.ListProducts(
        product_pb2.ListProductsRequest(**request_fields))) == {field}
