"""ProductService: protobuf in, repository calls, protobuf out."""

from __future__ import annotations

from google.protobuf import empty_pb2
from grpc.aio import ServicerContext
from seckill.v1 import product_pb2, product_pb2_grpc

from product_svc import repository
from seckill_common.api.errors import NotFound
from seckill_common.api.messages import product_message
from seckill_common.api.pages import decode_page_token, encode_page_token, page_of, page_size
from seckill_common.api.validation import (
    MAX_DESCRIPTION_CHARS,
    MAX_NAME_CHARS,
    Violations,
    require_id,
    update_paths,
)
from seckill_common.concurrency.loader import HOT_READ_GATHER_S, BatchLoader
from seckill_common.database import idempotency
from seckill_common.database.db import Database

# A page of 1,000 products with 10,000-character descriptions (up to 4 bytes a character) would
# be 40 MB: past grpc's default 4 MiB that clients accept, and past our 16 MiB send limit. So a
# page ends early, with a next_page_token, once it holds this many bytes.
MAX_PAGE_BYTES = 2 * 1024 * 1024


def _check_fields(violations: Violations, product: product_pb2.Product, paths: list[str]
) -> None:
    if "name" in paths:
        violations.text("product.name", product.name, max_chars=MAX_NAME_CHARS, required=True)
    if "description" in paths:
        violations.text("product.description", product.description,
                        max_chars=MAX_DESCRIPTION_CHARS, required=False)
    if "price_cents" in paths:
        violations.bounded("product.price_cents", product.price_cents)
    if "stock" in paths:
        violations.bounded("product.stock", product.stock)


class ProductServicer(product_pb2_grpc.ProductServiceServicer):
    def __init__(self, database: Database) -> None:
        self._db = database
        # A storefront's polling (and every GetActivity) reads the same few products: the
        # calls that arrive while a read is in flight share the next one.
        self._reads: BatchLoader[int, product_pb2.Product] = BatchLoader(
            self._read, gather_s=HOT_READ_GATHER_S)

    async def _read(self, ids: list[int]) -> dict[int, product_pb2.Product | BaseException]:
        rows = await self._db.run(lambda cur: repository.get_many(cur, ids))
        return {i: product_message(rows[i]) if i in rows else NotFound("Product", i) for i in ids}

    async def CreateProduct(self, request: product_pb2.CreateProductRequest,
                            context: ServicerContext) -> product_pb2.Product:
        violations = Violations()
        violations.present(request, "product")
        product = request.product
        _check_fields(violations, product, list(repository.UPDATABLE))
        idempotency.check(violations, request.request_id)
        violations.check()
        row = await idempotency.create_once(
            self._db, "CreateProduct", request,
            lambda cur: repository.create(
                cur, name=product.name, description=product.description,
                price_cents=product.price_cents, stock=product.stock),
            repository.get)
        return product_message(row)

    async def GetProduct(self, request: product_pb2.GetProductRequest,
                         context: ServicerContext) -> product_pb2.Product:
        require_id(request.id)
        return await self._reads.get(request.id)

    async def ListProducts(self, request: product_pb2.ListProductsRequest,
                           context: ServicerContext) -> product_pb2.ListProductsResponse:
        limit = page_size(request.page_size)
        after = decode_page_token(request.page_token, {})
        # One row more than asked tells whether another page exists.
        rows = await self._db.run(lambda cur: repository.list_page(cur, after, limit + 1))
        page, token = page_of(rows, limit, {})
        products: list[product_pb2.Product] = []
        size = 0
        for row in page:
            product = product_message(row)
            size += product.ByteSize() + 8  # the field's tag and length
            if size > MAX_PAGE_BYTES and products:
                # A short page (AIP-158 allows it): the rest follows the token.
                token = encode_page_token(products[-1].id, {})
                break
            products.append(product)
        return product_pb2.ListProductsResponse(products=products, next_page_token=token)

    async def UpdateProduct(self, request: product_pb2.UpdateProductRequest,
                            context: ServicerContext) -> product_pb2.Product:
        violations = Violations()
        violations.present(request, "product")
        product = request.product
        violations.positive_id("product.id", product.id)
        violations.check()
        paths = update_paths(request.update_mask, product, updatable=repository.UPDATABLE,
                             field_prefix="product")
        _check_fields(violations, product, paths)
        violations.check()
        changes = {path: getattr(product, path) for path in paths}
        row = await self._db.run(lambda cur: repository.update(cur, product.id, changes))
        return product_message(row)

    async def DeleteProduct(self, request: product_pb2.DeleteProductRequest,
                            context: ServicerContext) -> empty_pb2.Empty:
        require_id(request.id)
        await self._db.run(lambda cur: repository.delete(cur, request.id))
        return empty_pb2.Empty()
