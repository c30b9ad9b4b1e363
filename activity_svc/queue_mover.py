"""The waiting rooms' mover: one process at a time (a database lease) moves every open line
every SECKILL_QUEUE_MOVE_INTERVAL_MS: hands out tickets (the pre-queue shuffled at the start,
then arrivals in order), frees the slots of passes used or expired, and admits the next in
line while fewer than SECKILL_QUEUE_MAX_ACTIVE admitted buyers have not bought and units are
left for them (queue_repository.move, queue_line.admissions). Every activity process runs
one; the others wait for the lease. Every wait is bounded: a move that outlasts the lease's
acting time is abandoned (the next holder redoes it: a move is one transaction). Every move is
fenced by the lease's epoch in its own transaction (queue_repository.move): a mover frozen
mid-move whose lease was taken over commits nothing when it wakes.
"""

from __future__ import annotations

import asyncio
import functools
import logging

from activity_svc import queue_repository
from activity_svc.metrics import count_move
from seckill_common.config import QueueSettings
from seckill_common.database import lease as leases
from seckill_common.database.db import Database
from seckill_common.database.lease import Lease, LeaseLost, LeaseTimes
from seckill_common.runtime.background import Background

log = logging.getLogger(__name__)

LEASE_NAME = "queue-mover"
# A holder that stops renewing (a frozen process, a lost database) is replaced after this.
LEASE_TTL_S = 3.0
# While no sale with a waiting room is open (the usual case of a process whose sales have
# none), the holder looks for lines this often instead of every move interval: an idle
# process then costs one cheap statement a second, not ten. A line can only open in a sale
# with a waiting room, and any such sale that has not ended (its pre-queue opens minutes
# before its start by default) brings back the move interval, so only a sale created (or
# given its room) already open waits up to this long for its first move.
IDLE_INTERVAL_S = 1.0


class QueueMover:
    def __init__(self, database: Database, settings: QueueSettings) -> None:
        self._db = database
        self.settings = settings
        self.holder = leases.holder_id()
        self.times = LeaseTimes(LEASE_TTL_S)
        self.lease: Lease | None = None  # while this process holds it
        self.admitted = 0  # by this process's moves (statistics, metrics)
        self.used = 0
        self._background = Background("queue-mover", self._run)

    def start(self) -> None:
        self._background.start()

    async def stop(self) -> None:
        await self._background.stop()
        if self.lease is not None:
            await self.lease.release()  # best effort: an unreleased lease lapses by itself

    async def _run(self) -> None:
        while True:
            try:
                taken = await leases.acquire(self._db, LEASE_NAME, self.holder, self.times)
            except Exception as exc:  # the database is away: try again in a while
                log.info("could not take the queue mover's lease: %r", exc)
                taken = self.times.renew_every_s
            if isinstance(taken, Lease):
                await self._lead(taken)
            else:  # held elsewhere until then, unless renewed
                await asyncio.sleep(min(taken, self.times.ttl_s))

    async def _lead(self, lease: Lease) -> None:
        """Moves every line each interval while `lease` is valid, renewing it beside."""
        loop = asyncio.get_running_loop()
        self.lease = lease
        keeper = asyncio.create_task(lease.keep(), name="queue-mover-lease")
        failing = False  # logged once per outage, not at every move
        try:
            while lease.valid():
                began = loop.time()
                interval = self.settings.move_interval_s
                try:
                    async with asyncio.timeout(self.times.ttl_s / 2):
                        if not await self.move_all(lease):
                            interval = max(interval, IDLE_INTERVAL_S)
                    if failing:
                        log.info("the queue mover moves the lines again")
                    failing = False
                except LeaseLost as exc:  # taken over (this process was frozen): stand by
                    log.warning("the queue mover stops: %s", exc)
                    lease.lost.set()
                    break
                except Exception as exc:  # the database is away, or slow: try again
                    if not failing:
                        log.warning("the queue mover could not move the lines: %r", exc)
                    failing = True
                await asyncio.sleep(max(0.0, began + interval - loop.time()))
        finally:
            keeper.cancel()
            self.lease = None

    async def move_all(self, lease: Lease) -> bool:
        """One move of every open line, each fenced by `lease` (LeaseLost once it is not held:
        that move and those after it are not made). Returns whether any sale with a waiting
        room is open (False: the mover may idle)."""
        lines = await self._db.run(queue_repository.lines_to_move)
        for activity_id in lines.to_move:
            lease.check()
            moved = await self._db.run(functools.partial(
                queue_repository.move, activity_id=activity_id,
                max_active=self.settings.max_active, fence=lease.fence))
            self.admitted += moved.admitted
            self.used += moved.used
            count_move(activity_id, moved.admitted, moved.used, moved.expired, moved.rate)
        return lines.rooms_open
