"""TLS (SECKILL_TLS_CERT/_KEY) and mutual TLS (SECKILL_TLS_CA), with throwaway certificates
made here: clients must speak TLS, and the activity service reaches its peers over it."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from seckill.v1 import activity_pb2, activity_pb2_grpc, product_pb2, product_pb2_grpc

from seckill_bench import BenchConfig, run_load
from seckill_cli import cli
from seckill_common.client.tls import ClientTLS
from seckill_stack.health import wait_serving
from tests.helpers.factories import timestamp
from tests.helpers.stack import ADMIN, Stack, start_stack


@dataclass
class Pem:
    cert: bytes
    key: bytes


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def issue(common_name: str, issuer: tuple[Pem, ec.EllipticCurvePrivateKey] | None,
          ca: bool = False) -> tuple[Pem, ec.EllipticCurvePrivateKey]:
    """A certificate for 127.0.0.1/localhost, signed by `issuer` (self-signed if None)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    signer_key = issuer[1] if issuer else key
    signer_name = (x509.load_pem_x509_certificate(issuer[0].cert).subject if issuer
                   else _name(common_name))
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(signer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False)
    cert = builder.sign(signer_key, hashes.SHA256())
    pem = Pem(
        cert.public_bytes(serialization.Encoding.PEM),
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                          serialization.NoEncryption()),
    )
    return pem, key


def write(folder: Path, name: str, pem: Pem) -> dict[str, str]:
    (folder / f"{name}.crt").write_bytes(pem.cert)
    (folder / f"{name}.key").write_bytes(pem.key)
    return {"cert": str(folder / f"{name}.crt"), "key": str(folder / f"{name}.key")}


async def sale_over(channel_p: grpc.aio.Channel, channel_a: grpc.aio.Channel) -> None:
    """Creates a product and an activity, then GetActivity (activity -> product over TLS)."""
    product = await product_pb2_grpc.ProductServiceStub(channel_p).CreateProduct(
        product_pb2.CreateProductRequest(product=product_pb2.Product(name="TLS", stock=1)),
        metadata=ADMIN)
    activities = activity_pb2_grpc.ActivityServiceStub(channel_a)
    activity = await activities.CreateActivity(activity_pb2.CreateActivityRequest(
        activity=activity_pb2.Activity(product_id=product.id, name="sale",
                                       start_time=timestamp(-1), end_time=timestamp(60))),
        metadata=ADMIN)
    got = await activities.GetActivity(activity_pb2.GetActivityRequest(id=activity.id))
    assert got.product.name == "TLS"
    won = await activities.Seckill(activity_pb2.SeckillRequest(activity_id=activity.id,
                                                               user_id="tls-user"))
    assert won.order.user_id == "tls-user"


async def refused(channel: grpc.aio.Channel) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await product_pb2_grpc.ProductServiceStub(channel).ListProducts(
            product_pb2.ListProductsRequest(), timeout=5)
    return caught.value.code()


@pytest.fixture
async def tls_stack(db_url: str, tmp_path: Path) -> AsyncIterator[tuple[Stack, Pem]]:
    server, _ = issue("seckill", None)
    files = write(tmp_path, "server", server)
    running = await start_stack(db_url, SECKILL_TLS_CERT=files["cert"],
                                SECKILL_TLS_KEY=files["key"])
    yield running, server
    await running.stop()


async def test_the_tools_dial_tls(tls_stack: tuple[Stack, Pem], tmp_path: Path,
                                  monkeypatch: pytest.MonkeyPatch,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    """seckill-bench (--cacert), the seckill CLI (--cacert, or the services' SECKILL_TLS_*)
    and the health waiter of `make up` and compose all reach a TLS stack."""
    stack, _server = tls_stack
    cacert = str(tmp_path / "server.crt")
    product = await make_product_over(stack, cacert)
    activity = await make_activity_over(stack, cacert, product)
    report = await run_load(BenchConfig(
        call="seckill.v1.ActivityService/Seckill", host=stack.activity.address, total=20,
        concurrency=4, data=json.dumps({"activity_id": activity, "user_id": "u{{.RequestNumber}}"}),
        order_addr=stack.order.address, initial_stock=5, tls=ClientTLS(cacert=cacert)))
    assert report.status_counts == {"OK": 5, "FailedPrecondition": 15}
    assert report.invariants_ok, report.summary_text()

    addrs = ["--product-addr", stack.product.address, "--activity-addr",
             stack.activity.address, "--order-addr", stack.order.address]
    monkeypatch.delenv("SECKILL_TLS_CERT", raising=False)
    assert await cli.run([*addrs, "--timeout", "3", "status"]) == 3  # plaintext: refused
    assert await cli.run([*addrs, "--cacert", cacert, "status"]) == 0
    monkeypatch.setenv("SECKILL_TLS_CERT", cacert)
    monkeypatch.setenv("SECKILL_TLS_KEY", str(tmp_path / "server.key"))
    capsys.readouterr()
    assert await cli.run([*addrs, "--json", "orders", "--activity", str(activity)]) == 0
    assert len(json.loads(capsys.readouterr().out)["orders"]) == 5
    async with asyncio.timeout(10):
        await wait_serving(stack.activity.address, "", {})


async def make_product_over(stack: Stack, cacert: str) -> int:
    async with ClientTLS(cacert=cacert).channel(stack.product.address) as channel:
        product = await product_pb2_grpc.ProductServiceStub(channel).CreateProduct(
            product_pb2.CreateProductRequest(product=product_pb2.Product(name="TLS", stock=5)),
            metadata=ADMIN)
    return product.id


async def make_activity_over(stack: Stack, cacert: str, product_id: int) -> int:
    async with ClientTLS(cacert=cacert).channel(stack.activity.address) as channel:
        activity = await activity_pb2_grpc.ActivityServiceStub(channel).CreateActivity(
            activity_pb2.CreateActivityRequest(activity=activity_pb2.Activity(
                product_id=product_id, name="sale", start_time=timestamp(-1),
                end_time=timestamp(60))), metadata=ADMIN)
    return activity.id


async def test_tls_serves_tls_clients_and_refuses_plaintext(
        tls_stack: tuple[Stack, Pem]) -> None:
    stack, server = tls_stack
    trust = grpc.ssl_channel_credentials(root_certificates=server.cert)
    async with grpc.aio.secure_channel(stack.product.address, trust) as p, \
            grpc.aio.secure_channel(stack.activity.address, trust) as a:
        await sale_over(p, a)
    async with grpc.aio.insecure_channel(stack.product.address) as plain:
        assert await refused(plain) == grpc.StatusCode.UNAVAILABLE
    # A client that does not trust the certificate gives up too.
    other, _ = issue("someone-else", None)
    untrusting = grpc.ssl_channel_credentials(root_certificates=other.cert)
    async with grpc.aio.secure_channel(stack.product.address, untrusting) as wrong:
        assert await refused(wrong) == grpc.StatusCode.UNAVAILABLE


async def test_mutual_tls_needs_a_client_certificate_from_the_ca(
        db_url: str, tmp_path: Path) -> None:
    ca_pem, ca_key = issue("seckill-ca", None, ca=True)
    (tmp_path / "ca.crt").write_bytes(ca_pem.cert)
    service, _ = issue("seckill-service", (ca_pem, ca_key))
    files = write(tmp_path, "service", service)
    stack = await start_stack(db_url, SECKILL_TLS_CERT=files["cert"],
                              SECKILL_TLS_KEY=files["key"],
                              SECKILL_TLS_CA=str(tmp_path / "ca.crt"))
    try:
        client, _ = issue("a-client", (ca_pem, ca_key))
        mutual = grpc.ssl_channel_credentials(root_certificates=ca_pem.cert,
                                              private_key=client.key,
                                              certificate_chain=client.cert)
        # The activity service reaches the product service with its own certificate.
        async with grpc.aio.secure_channel(stack.product.address, mutual) as p, \
                grpc.aio.secure_channel(stack.activity.address, mutual) as a:
            await sale_over(p, a)

        # The CLI with a client certificate; a certificate without its key is a usage error.
        client_files = write(tmp_path, "client", client)
        addrs = ["--product-addr", stack.product.address, "--activity-addr",
                 stack.activity.address, "--order-addr", stack.order.address]
        ca_file = str(tmp_path / "ca.crt")
        assert await cli.run([*addrs, "--cacert", ca_file, "--cert", client_files["cert"],
                              "--key", client_files["key"], "status"]) == 0
        assert await cli.run([*addrs, "--cacert", ca_file, "--cert", client_files["cert"],
                              "status"]) == 2

        no_cert = grpc.ssl_channel_credentials(root_certificates=ca_pem.cert)
        async with grpc.aio.secure_channel(stack.product.address, no_cert) as anonymous:
            assert await refused(anonymous) == grpc.StatusCode.UNAVAILABLE
        stranger, _ = issue("stranger", issue("other-ca", None, ca=True))
        foreign = grpc.ssl_channel_credentials(root_certificates=ca_pem.cert,
                                               private_key=stranger.key,
                                               certificate_chain=stranger.cert)
        async with grpc.aio.secure_channel(stack.product.address, foreign) as outsider:
            assert await refused(outsider) == grpc.StatusCode.UNAVAILABLE
    finally:
        await stack.stop()
