"""Bad input to ProductService's create, get, list and update: hostile values in every field,
each answer checked against the protos' documented errors (tests/api/bad_input/conftest.py)."""

from __future__ import annotations

import pytest
from google.protobuf import field_mask_pb2, timestamp_pb2
from hypothesis import strategies as st
from seckill.v1 import product_pb2

from tests.helpers.bad_input import (
    Prober,
    method_path,
)
from tests.helpers.bad_input_rules import (
    MAX_AMOUNT,
    MAX_DESCRIPTION,
    MAX_NAME,
    PRODUCT,
    mask_paths,
    page_tokens,
    present,
    property_test,
    refused_with,
    remove,
    row,
    text_ok,
    token,
    too_big,
)
from tests.helpers.hostile_values import (
    amounts,
    int32s,
    known_ids,
    masks,
    names,
    set_time,
    timestamps,
)

# A database warning (truncation, overflow) raised in a service becomes an error there, and so
# an INTERNAL answer that fails the test.
pytestmark = pytest.mark.filterwarnings("error::pymysql.err.Warning")

PRODUCT_PATHS = ("name", "description", "price_cents", "stock")


def products_strategy() -> st.SearchStrategy[product_pb2.Product]:
    return st.builds(_product, known_ids, names, names, amounts, amounts, timestamps)


def _product(id_: int, name: str, description: str, price: int, stock: int,
             created: timestamp_pb2.Timestamp | None) -> product_pb2.Product:
    product = product_pb2.Product(id=id_, name=name, description=description,
                                  price_cents=price, stock=stock)
    set_time(product, "create_time", created)  # output only: ignored
    return product


@property_test(1000, has_product=present, product=products_strategy())
async def test_create_product(prober: Prober, has_product: bool,
                              product: product_pb2.Product) -> None:
    request = product_pb2.CreateProductRequest(product=product if has_product else None)
    outcome = await prober.call(method_path(PRODUCT, "CreateProduct"), request)
    if too_big(prober, request):
        return
    bad = set() if has_product else {"product"}
    if has_product:
        if not text_ok(product.name, MAX_NAME, True):
            bad.add("product.name")
        if not text_ok(product.description, MAX_DESCRIPTION, False):
            bad.add("product.description")
        for name in ("price_cents", "stock"):
            if not 0 <= getattr(product, name) <= MAX_AMOUNT:
                bad.add(f"product.{name}")
    if bad:
        refused_with(prober, outcome, bad)
        return
    assert outcome.code == "OK"
    created = outcome.response
    assert created is not None and created.id > 0
    # Stored exactly as sent: values travel as parameters, never as SQL text.
    stored = await row(prober, "SELECT name, description, price_cents, stock FROM products"
                       " WHERE id = %s", created.id)
    assert stored == (product.name, product.description, product.price_cents, product.stock)
    assert (created.name, created.description) == (product.name, product.description)
    await remove(prober, "products", created.id)


@property_test(500, product_id=known_ids)
async def test_get_product(prober: Prober, product_id: int) -> None:
    outcome = await prober.call(method_path(PRODUCT, "GetProduct"),
                                product_pb2.GetProductRequest(id=product_id))
    if product_id <= 0:
        refused_with(prober, outcome, {"id"})
    elif outcome.code == "OK":
        assert outcome.response.id == product_id
    else:
        assert outcome.code == "NOT_FOUND"
        assert await row(prober, "SELECT id FROM products WHERE id = %s", product_id) is None


@property_test(600, size=int32s, spec=page_tokens)
async def test_list_products(prober: Prober, size: int, spec: str | tuple) -> None:
    request = product_pb2.ListProductsRequest(page_size=size, page_token=token(spec, {}))
    outcome = await prober.call(method_path(PRODUCT, "ListProducts"), request)
    if size < 0:
        refused_with(prober, outcome, {"page_size"})
    elif outcome.code == "OK":
        assert len(outcome.response.products) <= min(size or 50, 1000)
    else:
        assert request.page_token and prober.bad_fields(outcome) == {"page_token"}
    if size >= 0 and not request.page_token:
        assert outcome.code == "OK"


@property_test(1000, has_product=present, product=products_strategy(), mask=masks(PRODUCT_PATHS))
async def test_update_product(prober: Prober, has_product: bool, product: product_pb2.Product,
                              mask: field_mask_pb2.FieldMask | None) -> None:
    request = product_pb2.UpdateProductRequest(product=product if has_product else None,
                                               update_mask=mask)
    before = await row(prober, "SELECT name, description, price_cents, stock FROM products"
                       " WHERE id = %s", product.id) if product.id > 0 else None
    outcome = await prober.call(method_path(PRODUCT, "UpdateProduct"), request)
    if too_big(prober, request):
        return
    if not has_product:
        return refused_with(prober, outcome, {"product"})
    if product.id <= 0:
        return refused_with(prober, outcome, {"product.id"})
    paths = mask_paths(mask, product, PRODUCT_PATHS)
    if paths is None:
        return refused_with(prober, outcome, {"update_mask"})
    bad = set()
    if "name" in paths and not text_ok(product.name, MAX_NAME, True):
        bad.add("product.name")
    if "description" in paths and not text_ok(product.description, MAX_DESCRIPTION, False):
        bad.add("product.description")
    for name in ("price_cents", "stock"):
        if name in paths and not 0 <= getattr(product, name) <= MAX_AMOUNT:
            bad.add(f"product.{name}")
    if bad:
        return refused_with(prober, outcome, bad)
    if before is None:
        assert outcome.code == "NOT_FOUND", outcome.code
        return
    assert outcome.code == "OK", (outcome.code, outcome.error and outcome.error.details())
    after = await row(prober, "SELECT name, description, price_cents, stock FROM products"
                      " WHERE id = %s", product.id)
    expected = tuple(getattr(product, name) if name in paths else old
                     for name, old in zip(PRODUCT_PATHS, before, strict=True))
    assert after == expected, (paths, after, expected)
    return None
