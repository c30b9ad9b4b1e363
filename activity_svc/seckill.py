"""The seckill path between the servicer and the repository's seckill transaction.

Why buyers are batched, and what that promises: docs/DESIGN.md ("Coalescing", "Exact
refusals"); this module is how. In `coalesced` mode (the default) the buyers of one product
that arrive while its transaction is in flight, or within a short gathering window after it,
are decided together by the next single transaction, first come first served; each caller
then gets its own answer. A transaction is two round trips and a decision between them
(`_transact`): the repository reads the facts under the stock row's lock, `decide` picks the
winners, the repository records their orders and commits. An idle product commits at once.
`per_request` mode keeps one transaction per call, for comparison.

Callers that leave (deadline, cancel) are skipped by batches not yet started; a batch whose
callers have all left is abandoned, and its transaction ended on the server, so no lock wait
or connection outlives the callers it was for.

Refusals are exact: a call is refused only on facts read after it arrived. Once a product's
last look (a committed batch or a read) showed fewer units than a call asks for (none left,
or none any of its callers would win), that call goes first to a single-flight read of the
facts it needs (repository.read_facts: stock, windows, limits, their orders; one non-locking
statement shared by every call that arrived before it started) and `decide` refuses it on
them; a call the read cannot refuse goes on to a transaction. With quantities the state is a
number, not a flag: 2 units seen left send a 3-unit call to the read and a 1-unit call
straight on, so a small request is never held up, let alone refused, by a large one.

A quantity above the activity's per-user limit is refused before any of this, on the limit
cached from an earlier read of the activity when it allows the quantity, else on a fresh
read without locks (`_check_limit`): never after waiting for the stock row.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from opentelemetry.context import Context, get_current

from activity_svc import repository
from activity_svc.decision import (
    Facts,
    Outcome,
    Refused,
    SeckillAttempt,
    Win,
    Won,
    decide,
    outcomes,
    over_limit,
    reached_stock,
)
from seckill_common.config import CommitMode, default_of
from seckill_common.database.db import Database
from seckill_common.database.order_events import Outbox
from seckill_common.database.singleflight import HOT_READ_GATHER_S, BatchLoader
from seckill_common.database.transaction import Transaction
from seckill_common.runtime.telemetry import BATCH_SIZE, STOCK_REMAINING, batch_span, tracer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EngineSettings:
    # SECKILL_COMMIT_MODE, SECKILL_BATCH_WINDOW_MS and SECKILL_BATCH_MAX; defaults as served.
    mode: CommitMode = default_of("commit_mode")  # noqa: RUF009 (a constant, read once)
    batch_window_s: float = default_of("batch_window_s")
    batch_max: int = default_of("batch_max")
    # SECKILL_EVENTS_ENABLED: the batch writes its winners' CREATED events.
    events: bool = default_of("events").enabled


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


@dataclass(frozen=True)
class BatchResult:
    """What one seckill transaction did."""

    outcomes: list[Outcome]  # one per attempt, in order
    stock_left: int | None  # committed stock after this batch; None: the product is gone
    sold: int  # units taken (the quantities of the orders inserted)


@dataclass
class _Pending:
    attempt: SeckillAttempt
    future: asyncio.Future[Won]
    trace_context: Context | None = None  # the caller's, when tracing is on


class SeckillEngine:
    def __init__(self, database: Database, settings: EngineSettings | None = None) -> None:
        self._db = database
        self.settings = settings or EngineSettings()
        self._outbox = Outbox(enabled=self.settings.events)
        # activity id -> product id; safe to cache because an activity's product never changes.
        self._product_of_activity: dict[int, int] = {}
        # activity id -> per-user limit as last read: a hint (an admin may change it), used
        # only to let quantities it allows through; the transaction checks the limit itself.
        self._limit_of_activity: dict[int, int] = {}
        self._queues: dict[int, deque[_Pending]] = {}
        self._arrived: dict[int, asyncio.Event] = {}
        # Strong references: the event loop keeps only weak ones to tasks.
        self._committers: dict[int, asyncio.Task[None]] = {}
        # product id -> units its last look showed that calls could take (0: none, or no
        # caller won); a call asking for more is read before a transaction (see the module's
        # docstring). A product not here has not been looked at: its calls go straight on.
        self._units_seen: dict[int, int] = {}
        self._readers: dict[int, BatchLoader[SeckillAttempt, Refused | None]] = {}
        self.stats = BatchStats()
        self._tracer = tracer()
        # Called with the product id after each committed batch (WatchActivity's feeds).
        self.on_commit: list[Callable[[int], None]] = []

    async def product_of(self, activity_id: int) -> int:
        product_id = self._product_of_activity.get(activity_id)
        if product_id is None:
            product_id = (await self._read_sale_of(activity_id)).product_id
        return product_id

    async def _read_sale_of(self, activity_id: int) -> repository.SaleOf:
        sale = await self._db.run(lambda tx: repository.sale_of(tx, activity_id))
        self.learn_product_of(activity_id, sale.product_id, sale.per_user_limit)
        return sale

    def known_product_of(self, activity_id: int) -> int | None:
        """The activity's product if already known (no I/O), else None."""
        return self._product_of_activity.get(activity_id)

    def learn_product_of(self, activity_id: int, product_id: int, per_user_limit: int) -> None:
        """Remembers an activity's product, read elsewhere (an activity read): it never
        changes, so it is cached for good; and its per-user limit as read, a hint."""
        self._product_of_activity[activity_id] = product_id
        self._limit_of_activity[activity_id] = per_user_limit

    async def _check_limit(self, activity_id: int, quantity: int) -> None:
        """Refuses a quantity above the activity's per-user limit, before any lock.

        The cached limit lets through what it allows (should the limit have been lowered
        since, the transaction refuses); a quantity above it is judged on a fresh read, since
        the limit may have been raised in another process.
        """
        if quantity <= self._limit_of_activity.get(activity_id, 0):
            return
        limit = (await self._read_sale_of(activity_id)).per_user_limit
        if quantity > limit:
            raise over_limit(activity_id, quantity, limit).error

    async def buy(self, activity_id: int, user_id: str, quantity: int = 1) -> Won:
        """The committed order of `quantity` units, or raises the refusal (a
        `ServiceError`)."""
        product_id = await self.product_of(activity_id)
        if quantity > 1:  # every activity allows 1
            await self._check_limit(activity_id, quantity)
        attempt = SeckillAttempt(activity_id=activity_id, user_id=user_id, quantity=quantity)
        if quantity > self._units_seen.get(product_id, quantity):
            refusal = await self._reader(product_id).get(attempt)
            if refusal is not None:
                raise refusal.error
        if self.settings.mode == "per_request":
            return await self._commit_one(product_id, attempt)
        future: asyncio.Future[Won] = asyncio.get_running_loop().create_future()
        queue = self._queues.get(product_id)
        if queue is None:
            queue = self._queues[product_id] = deque()
            self._arrived[product_id] = asyncio.Event()
        queue.append(_Pending(attempt, future, None if self._tracer is None else get_current()))
        if len(queue) >= self.settings.batch_max:
            # Only a full batch ends the gathering early: waking the committer at every
            # arrival cost each call a wake-up, a timer and a task for nothing.
            self._arrived[product_id].set()
        if product_id not in self._committers:
            self._committers[product_id] = asyncio.create_task(
                self._commit_loop(product_id), name=f"seckill-commit-{product_id}")
        return await future

    # --- exact refusals ------------------------------------------------------------------

    def _reader(self, product_id: int) -> BatchLoader[SeckillAttempt, Refused | None]:
        reader = self._readers.get(product_id)
        if reader is None:
            async def load(attempts: list[SeckillAttempt]
                           ) -> dict[SeckillAttempt, Refused | None]:
                facts = await self._db.run(
                    lambda tx: repository.read_facts(tx, product_id, attempts))
                return self._refusals(product_id, attempts, facts)

            reader = self._readers[product_id] = BatchLoader(load, gather_s=HOT_READ_GATHER_S)
        return reader

    def _refusals(self, product_id: int, attempts: list[SeckillAttempt], facts: Facts
                  ) -> dict[SeckillAttempt, Refused | None]:
        """Each attempt's refusal on `facts`, or None: a transaction must decide it.

        Each is decided alone: another caller of this read may not take the unit it would
        leave, so only a refusal that holds whatever the others do is given from a read.
        """
        decisions = {a: decide([a], facts)[0] for a in attempts}
        self._looked(product_id, units_left=facts.stock,
                     stock_decided=any(map(reached_stock, decisions.values())))
        return {a: d if isinstance(d, Refused) else None for a, d in decisions.items()}

    def _looked(self, product_id: int, *, units_left: int | None, stock_decided: bool) -> None:
        """The one rule of the refusing state, after each look at a product (a committed
        batch, or a read): a call goes to a read first while the last look showed fewer
        units than it asks for; as none, when the stock decided none of that look's callers
        (the window, say, refused them all, so the units left may not be for sale)."""
        self._units_seen[product_id] = units_left if units_left and stock_decided else 0

    # --- committing ---------------------------------------------------------------------

    async def _run_batch(self, product_id: int, attempts: list[SeckillAttempt]
                         ) -> list[Outcome]:
        """One transaction, then its bookkeeping: its outcomes, one per attempt."""
        result = await self._db.run(
            lambda tx: _transact(tx, product_id, attempts, self._outbox))
        self._observe(product_id, attempts, result)
        return result.outcomes

    def _observe(self, product_id: int, attempts: list[SeckillAttempt],
                 result: BatchResult) -> None:
        """Everything a committed batch is counted in: stats, metrics, the refusing state."""
        self.stats.add(len(attempts))
        if self.on_commit and any(isinstance(o, Won) for o in result.outcomes):
            for hook in self.on_commit:  # the batch committed orders: the stock changed
                hook(product_id)
        BATCH_SIZE.observe(len(attempts))
        if result.stock_left is not None:
            for activity_id in {attempt.activity_id for attempt in attempts}:
                STOCK_REMAINING.labels(str(activity_id)).set(result.stock_left)
        self._looked(product_id, units_left=result.stock_left,
                     stock_decided=any(map(reached_stock, result.outcomes)))

    async def _run_traced_batch(self, product_id: int, batch: list[_Pending]
                                ) -> list[Outcome]:
        # The batch's span (when tracing) is current in this task: its transaction's span is
        # the batch's child, and the batch the first caller's.
        with batch_span(self._tracer, product_id, [p.trace_context for p in batch]):
            return await self._run_batch(product_id, [p.attempt for p in batch])

    async def _commit_one(self, product_id: int, attempt: SeckillAttempt) -> Won:
        (outcome,) = await self._run_batch(product_id, [attempt])
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
        """Waits up to the gathering window for the batch to fill (`buy` sets `arrived` once
        the queue holds a full batch)."""
        window = self.settings.batch_window_s
        if window <= 0 or len(queue) >= self.settings.batch_max:
            return
        arrived.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(window):
                await arrived.wait()

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
        left = _cancel_when_all_leave(work, [p.future for p in batch])
        try:
            outcomes = await work
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
                pending.future.remove_done_callback(left)
                if not pending.future.done():
                    pending.future.set_exception(exc)
            return
        for pending, outcome in zip(batch, outcomes, strict=True):
            # The batch is over: its callers' answers need not run `left` (one callback each).
            pending.future.remove_done_callback(left)
            if pending.future.done():
                continue  # the caller left; a retry will find its order (ALREADY_EXISTS)
            if isinstance(outcome, Refused):
                pending.future.set_exception(outcome.error)
            else:
                pending.future.set_result(outcome)


async def _transact(tx: Transaction, product_id: int, attempts: list[SeckillAttempt],
                    outbox: Outbox) -> BatchResult:
    """The seckill transaction: read the facts under the stock row's lock, decide, record the
    winners (their orders, their units, the COMMIT). A batch without winners wrote nothing;
    the transaction ends it."""
    sale = await repository.lock_sale(tx, product_id, attempts)
    decisions = decide(attempts, sale.facts)
    winners = [a for a, d in zip(attempts, decisions, strict=True) if isinstance(d, Win)]
    won = await repository.record_winners(tx, sale, winners, outbox) if winners else {}
    sold = repository.units_of(winners)
    stock_left = None if sale.facts.stock is None else sale.facts.stock - sold
    return BatchResult(outcomes=outcomes(attempts, decisions, won), stock_left=stock_left,
                       sold=sold)


def _cancel_when_all_leave(work: asyncio.Future[Any], callers: list[asyncio.Future[Won]]
                           ) -> Callable[[asyncio.Future[Won]], None]:
    """Cancels a batch's transaction once every caller in it has gone (deadline, cancel).

    Nobody would hear its outcome, and it may be waiting for a lock: cancelling it frees its
    connection and ends its session on the server (Database.transaction). Should the
    cancel come after its COMMIT left, the orders stand, and a retry is told ALREADY_EXISTS.
    Returns the callback, for the batch to remove once it is over.
    """
    waiting = len(callers)

    def left(_: asyncio.Future[Won]) -> None:
        nonlocal waiting
        waiting -= 1
        if waiting == 0:
            work.cancel()  # a no-op once the batch is done

    for future in callers:
        future.add_done_callback(left)
    return left
