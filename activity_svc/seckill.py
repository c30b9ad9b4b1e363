"""The seckill path between the servicer and the repository's seckill transaction.

A flash sale is a stampede on one row: every buyer of a product needs its stock row's lock, so
one transaction per buyer serialises them all behind it, and the driver's fixed cost per
transaction caps the rate. In `coalesced` mode (the default) the buyers of one product that
arrive while its transaction is in flight, or within a short gathering window after it, are
decided together by the next single transaction (repository.seckill), first come first
served; each caller then gets its own answer. An idle product commits at once.
`per_request` mode keeps one transaction per call, for comparison.

Callers that leave (deadline, cancel) are skipped by batches not yet started; a batch whose
callers have all left is abandoned, and its transaction ended on the server, so no lock wait
or connection outlives the callers it was for.

Sold-out fast path: once a committed transaction shows a product's stock at 0, later calls
for it are answered from memory (SOLD_OUT, or ALREADY_EXISTS for users who hold an order)
without touching the database, for `soldout_recheck_s` at most; the next call after that
goes to the database again, which confirms the flag or clears it. So a buyer is never refused
for longer than that delay (plus one commit) after stock comes back (a cancel, an admin
update), whichever process made it.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.context import Context, get_current

from activity_svc import repository
from activity_svc.repository import Refused, SeckillAttempt, Won
from seckill_common.config import CommitMode
from seckill_common.db import Database
from seckill_common.telemetry import BATCH_SIZE, STOCK_REMAINING, batch_span, tracer

log = logging.getLogger(__name__)

# Past this many orders, a sold-out product is not mirrored in memory (the fast path is off).
MAX_MIRRORED_ORDERS = 1_000_000
MIRROR_PAGE = 1000


@dataclass(frozen=True)
class EngineSettings:
    mode: CommitMode = "coalesced"
    batch_window_s: float = 0.002
    batch_max: int = 500
    soldout_recheck_s: float = 0.1


@dataclass
class BatchStats:
    """Running totals of committed batches (bounded memory, however long the sale)."""

    batches: int = 0
    attempts: int = 0
    largest: int = 0

    def add(self, size: int) -> None:
        self.batches += 1
        self.attempts += size
        self.largest = max(self.largest, size)

    @property
    def mean(self) -> float:
        return self.attempts / self.batches if self.batches else 0.0


@dataclass
class _Pending:
    attempt: SeckillAttempt
    future: asyncio.Future[Won]
    trace_context: Context | None = None  # the caller's, when tracing is on


@dataclass
class _SoldOut:
    """A product seen with stock 0 by a committed transaction, and who holds its orders."""

    confirmed_at: float  # monotonic time of the transaction start that saw stock 0
    holders: dict[tuple[int, str], int] = field(default_factory=dict)  # -> order id
    last_order_id: int = 0


class SeckillEngine:
    def __init__(self, database: Database, settings: EngineSettings | None = None) -> None:
        self._db = database
        self.settings = settings or EngineSettings()
        # activity id -> product id; safe to cache because an activity's product never changes.
        self._product_of: dict[int, int] = {}
        self._queues: dict[int, deque[_Pending]] = {}
        self._arrived: dict[int, asyncio.Event] = {}
        # Strong references: the event loop keeps only weak ones to tasks.
        self._committers: dict[int, asyncio.Task[None]] = {}
        self._sold_out: dict[int, _SoldOut] = {}
        # Per product, the newest transaction's look at the stock: (when it started, stock left).
        self._stock_seen: dict[int, tuple[float, int | None]] = {}
        self._mirroring: set[int] = set()  # products whose orders are being loaded
        self.stats = BatchStats()
        self._tracer = tracer()

    async def product_of(self, activity_id: int) -> int:
        product_id = self._product_of.get(activity_id)
        if product_id is None:
            product_id = await self._db.run(lambda cur: repository.product_of(cur, activity_id))
            self._product_of[activity_id] = product_id
        return product_id

    async def buy(self, activity_id: int, user_id: str) -> Won:
        """The committed order, or raises the refusal (a `ServiceError`)."""
        product_id = await self.product_of(activity_id)
        attempt = SeckillAttempt(activity_id, user_id)
        self._refuse_if_sold_out(product_id, attempt)
        if self.settings.mode == "per_request":
            return await self._commit_one(product_id, attempt)
        future: asyncio.Future[Won] = asyncio.get_running_loop().create_future()
        self._queues.setdefault(product_id, deque()).append(
            _Pending(attempt, future, None if self._tracer is None else get_current()))
        self._arrived.setdefault(product_id, asyncio.Event()).set()
        if product_id not in self._committers:
            self._committers[product_id] = asyncio.create_task(
                self._commit_loop(product_id), name=f"seckill-commit-{product_id}")
        return await future

    async def wait_idle(self) -> None:
        """Returns once no batch is queued or committing (its follow-up work included)."""
        while self._committers:
            await asyncio.gather(*self._committers.values(), return_exceptions=True)

    # --- sold-out fast path -------------------------------------------------------------

    def _refuse_if_sold_out(self, product_id: int, attempt: SeckillAttempt) -> None:
        entry = self._sold_out.get(product_id)
        if entry is None:
            return
        if time.monotonic() - entry.confirmed_at >= self.settings.soldout_recheck_s:
            return  # stale: let the database decide (and confirm or clear the flag)
        order_id = entry.holders.get((attempt.activity_id, attempt.user_id))
        refusal = (repository.sold_out(attempt.activity_id) if order_id is None
                   else repository.already_purchased(order_id))
        raise refusal.error

    async def _note_stock(self, product_id: int, stock_left: int | None, seen_at: float) -> None:
        """Records what a committed transaction (started at `seen_at`) saw of the stock."""
        if self.settings.soldout_recheck_s <= 0:
            return
        latest, _ = self._stock_seen.get(product_id, (float("-inf"), None))
        if seen_at < latest:
            return  # a newer transaction already told us more
        self._stock_seen[product_id] = (seen_at, stock_left)
        if stock_left != 0:
            self._sold_out.pop(product_id, None)
            return
        if product_id in self._mirroring:
            return  # one load at a time per product (per_request mode sees stock 0 per call)
        self._mirroring.add(product_id)
        try:
            await self._mirror(product_id)
        finally:
            self._mirroring.discard(product_id)

    async def _mirror(self, product_id: int) -> None:
        # Mirror the orders committed since the last look before the flag is published, so
        # repeat buyers learn their order id (ALREADY_EXISTS) from the fast path. In pages,
        # yielding between them: parsing 10,000 rows at once would stall every call in this
        # process for ~100 ms at the moment a sale sells out.
        entry = self._sold_out.get(product_id)
        after = entry.last_order_id if entry else 0
        newer: list[tuple[int, int, str]] = []
        while len(newer) <= MAX_MIRRORED_ORDERS:
            page = await self._db.run(functools.partial(
                repository.orders_of_product, product_id=product_id, after_id=after,
                limit=MIRROR_PAGE))
            newer += page
            if len(page) < MIRROR_PAGE:
                break
            after = page[-1][0]  # pages come in id order
            await asyncio.sleep(0)
        seen_at, stock_left = self._stock_seen[product_id]
        if stock_left != 0:
            return  # stock came back meanwhile: that newer observation decides
        entry = self._sold_out.get(product_id) or _SoldOut(seen_at)
        entry.holders.update(((activity_id, user_id), order_id)
                             for order_id, activity_id, user_id in newer)
        if newer:
            entry.last_order_id = newer[-1][0]
        entry.confirmed_at = max(entry.confirmed_at, seen_at)
        if len(entry.holders) > MAX_MIRRORED_ORDERS:
            self._sold_out.pop(product_id, None)
        else:
            self._sold_out[product_id] = entry

    # --- committing ---------------------------------------------------------------------

    async def _run_batch(self, product_id: int, attempts: list[SeckillAttempt]
                         ) -> tuple[list[repository.Outcome], int | None, float]:
        """One transaction: (outcomes, stock left, when it started)."""
        started = time.monotonic()
        result = await self._db.run(lambda cur: repository.seckill(cur, product_id, attempts))
        self.stats.add(len(attempts))
        BATCH_SIZE.observe(len(attempts))
        if result.stock_left is not None:
            for activity_id in {attempt.activity_id for attempt in attempts}:
                STOCK_REMAINING.labels(str(activity_id)).set(result.stock_left)
        return result.outcomes, result.stock_left, started

    async def _run_traced_batch(self, product_id: int, batch: list[_Pending]
                                ) -> tuple[list[repository.Outcome], int | None, float]:
        # The batch's span (when tracing) is current in this task: its transaction's span is
        # the batch's child, and the batch the first caller's.
        with batch_span(self._tracer, product_id, [p.trace_context for p in batch]):
            return await self._run_batch(product_id, [p.attempt for p in batch])

    async def _after_batch(self, product_id: int, stock_left: int | None,
                           started: float) -> None:
        # After the callers have their answers: the fast path is an optimisation, and must
        # neither delay nor fail a committed batch.
        try:
            await self._note_stock(product_id, stock_left, started)
        except Exception:
            log.warning("could not refresh the sold-out state of product %s", product_id,
                        exc_info=True)
            self._sold_out.pop(product_id, None)

    async def _commit_one(self, product_id: int, attempt: SeckillAttempt) -> Won:
        (outcome,), stock_left, started = await self._run_batch(product_id, [attempt])
        await self._after_batch(product_id, stock_left, started)
        if isinstance(outcome, Refused):
            raise outcome.error
        return outcome

    async def _commit_loop(self, product_id: int) -> None:
        """Commits the product's queue batch by batch, then ends once a window passes idle.

        The first batch of an idle product commits at once. After each commit the loop
        gathers for up to the window (or until the batch is full): under load the calls that
        arrive meanwhile then share one transaction instead of paying for one each.
        """
        queue = self._queues[product_id]
        arrived = self._arrived[product_id]
        try:
            while queue:
                batch = self._take_batch(queue)
                if batch:
                    await self._commit_batch(product_id, batch)
                await self._gather(queue, arrived)
        except asyncio.CancelledError:
            while queue:  # shutting down: nobody will commit these
                queue.popleft().future.cancel()
            raise
        finally:
            del self._committers[product_id]

    async def _gather(self, queue: deque[_Pending], arrived: asyncio.Event) -> None:
        """Waits up to the gathering window for the batch to fill."""
        window = self.settings.batch_window_s
        if window <= 0:
            return
        deadline = time.monotonic() + window
        while len(queue) < self.settings.batch_max:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            arrived.clear()
            try:
                await asyncio.wait_for(arrived.wait(), remaining)
            except TimeoutError:
                return

    def _take_batch(self, queue: deque[_Pending]) -> list[_Pending]:
        batch: list[_Pending] = []
        while queue and len(batch) < self.settings.batch_max:
            pending = queue.popleft()
            if not pending.future.done():  # skip callers that gave up (deadline, cancel)
                batch.append(pending)
        return batch

    async def _commit_batch(self, product_id: int, batch: list[_Pending]) -> None:
        work = asyncio.ensure_future(
            self._run_batch(product_id, [p.attempt for p in batch]) if self._tracer is None
            else self._run_traced_batch(product_id, batch))
        _cancel_when_all_leave(work, [p.future for p in batch])
        try:
            outcomes, stock_left, started = await work
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():  # shutting down
                for pending in batch:
                    pending.future.cancel()
                raise
            return  # every caller left (deadline, cancel): the transaction was abandoned
        except Exception as exc:
            # The transaction rolled back as a whole: every caller in it gets the error.
            for pending in batch:
                if not pending.future.done():
                    pending.future.set_exception(exc)
            return
        for pending, outcome in zip(batch, outcomes, strict=True):
            if pending.future.done():
                continue  # the caller left; a retry will find its order (ALREADY_EXISTS)
            if isinstance(outcome, Refused):
                pending.future.set_exception(outcome.error)
            else:
                pending.future.set_result(outcome)
        await self._after_batch(product_id, stock_left, started)


def _cancel_when_all_leave(work: asyncio.Future[Any], callers: list[asyncio.Future[Won]]
                           ) -> None:
    """Cancels a batch's transaction once every caller in it has gone (deadline, cancel).

    Nobody would hear its outcome, and it may be waiting for a lock: cancelling it frees its
    connection and ends its session on the server (Database.transaction). Should the
    cancel come after its COMMIT left, the orders stand, and a retry is told ALREADY_EXISTS.
    """
    waiting = len(callers)

    def left(_: asyncio.Future[Won]) -> None:
        nonlocal waiting
        waiting -= 1
        if waiting == 0:
            work.cancel()  # a no-op once the batch is done

    for future in callers:
        future.add_done_callback(left)
