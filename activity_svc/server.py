"""Wiring of the activity service: its servicer, the seckill engine and the peer stubs."""

from __future__ import annotations

import logging

import grpc
from seckill.v1 import activity_pb2, activity_pb2_grpc, order_pb2_grpc, product_pb2_grpc

from activity_svc.catalogue import Catalogue
from activity_svc.metrics import QUEUE_WAITING
from activity_svc.passes import Passes
from activity_svc.queue import QueueHub
from activity_svc.queue_mover import QueueMover
from activity_svc.seckill import EngineSettings, SeckillEngine
from activity_svc.servicer import ActivityServicer
from activity_svc.watch import WatchHub
from seckill_common.client.peers import open_channel
from seckill_common.config import Settings
from seckill_common.database.db import Database
from seckill_common.runtime.server import Cleanup, OnStop, ServiceDefinition

log = logging.getLogger(__name__)
SERVICE_NAME = activity_pb2.DESCRIPTOR.services_by_name["ActivityService"].full_name


async def add_servicers(server: grpc.aio.Server, database: Database,
                        settings: Settings) -> list[Cleanup | OnStop]:
    product_channel = open_channel(settings.product_addr, settings)
    order_channel = open_channel(settings.order_addr, settings)
    # The activities this process knows of: one catalogue, filled by the engine's and the
    # servicer's reads alike.
    catalogue = Catalogue(database)
    watches = WatchHub(database, settings.watch)
    # Passes are signed with a key derived from a secret every activity process shares
    # (activity_svc.passes).
    queue = QueueHub(database, settings.queue,
                     Passes(settings.user_token_secret or settings.admin_token))
    QUEUE_WAITING.set_function(lambda: queue.waiting)
    engine = SeckillEngine(
        database,
        EngineSettings(
            mode=settings.commit_mode,
            batch_window_s=settings.batch_window_s,
            batch_max=settings.batch_max,
            events=settings.events.enabled,
        ),
        catalogue=catalogue,
        on_commit=[watches.committed],  # a sale's watchers hear of each batch that sold
    )
    servicer = ActivityServicer(
        database,
        engine,
        catalogue,
        watches,
        queue,
        product_pb2_grpc.ProductServiceStub(product_channel),
        order_pb2_grpc.OrderServiceStub(order_channel),
        settings.peer_timeout_s,
    )
    mover = QueueMover(database, settings.queue)
    mover.start()
    activity_pb2_grpc.add_ActivityServiceServicer_to_server(servicer, server)

    async def report() -> None:
        stats = engine.stats
        log.info("seckill batches", extra={"batches": stats.batches, "attempts": stats.attempts,
                                           "mean": round(stats.mean, 2),
                                           "largest": stats.largest})
        log.info("GetActivity reads", extra={"reads": servicer.reads.loads,
                                             "calls": servicer.reads.gets})
        log.info("WatchActivity", extra={"reads": watches.reads,
                                         "messages": watches.messages})
        log.info("JoinQueue", extra={"reads": queue.reads,
                                     "lookups": queue.lookups,
                                     "messages": queue.messages,
                                     "admitted": mover.admitted})

    return [OnStop(watches.close), OnStop(queue.close), OnStop(mover.stop),
            report, product_channel.close, order_channel.close]


DEFINITION = ServiceDefinition(
    name="activity",
    service_names=[SERVICE_NAME],
    admin_methods=frozenset(
        f"/{SERVICE_NAME}/{method}"
        for method in ("CreateActivity", "UpdateActivity", "DeleteActivity")
    ),
    user_methods=frozenset(f"/{SERVICE_NAME}/{method}" for method in ("Seckill", "JoinQueue")),
    add_servicers=add_servicers,
)
