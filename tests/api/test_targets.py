"""Address settings as gRPC target strings, and client-side round_robin over their hosts."""

from __future__ import annotations

import subprocess
import sys

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from seckill_common.client.tls import ClientTLS
from seckill_common.config import ConfigError, Settings
from tests.helpers.stack import REPO, free_port

BASE = {"SECKILL_ADMIN_TOKEN": "t"}
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.mark.parametrize("target", [
    "127.0.0.1:50052", "[::1]:50052", "app1:50052", "ipv4:10.0.0.1:50052,10.0.0.2:50052",
    "ipv6:[::1]:50052", "dns:///activity:50052", "dns://8.8.8.8/activity:50052",
    "unix:/run/seckill.sock",
])
def test_peer_addresses_accept_grpc_targets(target: str) -> None:
    settings = Settings.from_env({**BASE, "SECKILL_ORDER_ADDR": target,
                                  "SECKILL_ORDER_LISTEN_ADDR": "0.0.0.0:50053"})
    assert settings.order_addr == target
    assert settings.listen_addr("order") == "0.0.0.0:50053"


@pytest.mark.parametrize("target", ["ipv4:", "dns:///", "10.0.0.1", "a b:1", "host:port"])
def test_a_malformed_target_is_one_clear_line(target: str) -> None:
    with pytest.raises(ConfigError, match="SECKILL_PRODUCT_ADDR must be host:port or a gRPC"):
        Settings.from_env({**BASE, "SECKILL_PRODUCT_ADDR": target})


def test_a_service_listens_on_its_address_when_it_is_host_port() -> None:
    settings = Settings.from_env({**BASE, "SECKILL_ACTIVITY_ADDR": "127.0.0.1:6000"})
    assert settings.listen_addr("activity") == "127.0.0.1:6000"


def test_a_target_naming_several_hosts_needs_a_listen_address() -> None:
    settings = Settings.from_env(
        {**BASE, "SECKILL_ACTIVITY_ADDR": "ipv4:10.0.0.1:50052,10.0.0.2:50052"})
    assert settings.listen_addr("product") == "127.0.0.1:50051"  # the others are unaffected
    with pytest.raises(ConfigError, match="set SECKILL_ACTIVITY_LISTEN_ADDR"):
        settings.listen_addr("activity")
    with pytest.raises(ConfigError, match="SECKILL_ACTIVITY_LISTEN_ADDR must be host:port"):
        Settings.from_env({**BASE, "SECKILL_ACTIVITY_LISTEN_ADDR": "dns:///x:1"})


def test_the_service_exits_with_one_line_when_it_cannot_listen_on_its_target() -> None:
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": f"{REPO}:{REPO / 'gen'}", **BASE,
           "SECKILL_ORDER_ADDR": "ipv4:10.0.0.1:50053,10.0.0.2:50053"}
    done = subprocess.run([sys.executable, "-m", "order_svc"], env=env, capture_output=True,
                          text=True, timeout=60, cwd=REPO)
    assert done.returncode == 2
    assert "set SECKILL_ORDER_LISTEN_ADDR" in done.stdout + done.stderr


async def test_calls_take_turns_over_every_host_and_skip_a_dead_one() -> None:
    """Two servers behind one ipv4: target; each answers its own health status, so the
    answers show which one served each call."""
    servers = []
    ports = [free_port(), free_port()]
    for port, status in zip(ports, (SERVING, NOT_SERVING), strict=True):
        server = grpc.aio.server()
        servicer = health.aio.HealthServicer()
        await servicer.set("", status)
        health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        servers.append(server)
    target = "ipv4:" + ",".join(f"127.0.0.1:{p}" for p in ports)
    try:
        async with ClientTLS().channel(target) as channel:
            stub = health_pb2_grpc.HealthStub(channel)

            async def answers(n: int) -> list[int]:
                return [(await stub.Check(health_pb2.HealthCheckRequest(), timeout=5,
                                          wait_for_ready=True)).status for _ in range(n)]

            await channel.channel_ready()
            seen = await answers(20)
            assert {SERVING, NOT_SERVING} == set(seen), seen  # pick_first would use one
            await servers[1].stop(None)
            for _ in range(3):  # calls on the connection that just closed may fail once
                try:
                    await answers(1)
                except grpc.aio.AioRpcError as exc:
                    assert exc.code() == grpc.StatusCode.UNAVAILABLE
            assert set(await answers(20)) == {SERVING}
    finally:
        for server in servers:
            await server.stop(None)
