"""The seckill path between the servicer and the repository's seckill transaction.

Why buyers are batched, and what that promises: docs/DESIGN.md ("Coalescing", "Exact
refusals"); this module is how. In `coalesced` mode (the default) the buyers of one product
that arrive while its transaction is in flight, or within a short gathering window after it,
are decided together by the next single transaction, first come first served; each caller
then gets its own answer. A transaction is two round trips and a decision between them
(`_transact`): the repository reads the facts under the stock row's lock, `decide` picks the
winners, the repository records their orders and commits. An idle product commits at once.
`per_request` mode keeps one transaction per call, for comparison. The batching itself is
generic (seckill_common/concurrency/coalescer.py): callers that leave (deadline, cancel) are
skipped by batches not yet started; a batch whose callers have all left is abandoned, and its
transaction ended on the server (Database.transaction), so no lock wait or connection
outlives the callers it was for. Should that cancel come after its COMMIT left, the orders
stand, and a retry is told ALREADY_EXISTS.

Refusals are exact: a call is refused only on facts read after it arrived. Once a product's
last look (a committed batch or a read) showed fewer units than a call asks for (none left,
or none any of its callers would win), that call goes first to a single-flight read of the
facts it needs (repository.read_facts: stock, windows, limits, their orders; one non-locking
statement shared by every call that arrived before it started) and `decide` refuses it on
them; a call the read cannot refuse goes on to a transaction. With quantities the state is a
number, not a flag: 2 units seen left send a 3-unit call to the read and a 1-unit call
straight on, so a small request is never held up, let alone refused, by a large one.

A quantity above the activity's per-user limit is refused before any of this, on the limit
known from an earlier read of the activity when it allows the quantity, else on a fresh read
without locks (activity_svc/catalogue.py): never after waiting for the stock row.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from opentelemetry.context import get_current

from activity_svc import repository
from activity_svc.catalogue import Catalogue
from activity_svc.decision import (
    Facts,
    Outcome,
    Refused,
    SeckillAttempt,
    Win,
    Won,
    decide,
    outcomes,
    reached_stock,
)
from activity_svc.metrics import BATCH_SIZE, STOCK_REMAINING
from seckill_common.concurrency.coalescer import Coalescer, Waiter
from seckill_common.concurrency.loader import HOT_READ_GATHER_S, BatchLoader
from seckill_common.config import CommitMode, default_of
from seckill_common.database.db import Database
from seckill_common.database.order_events import Outbox
from seckill_common.database.transaction import Transaction
from seckill_common.tracing import batch_span, tracer

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


# Called with the product id after each committed batch that sold units (WatchActivity's feeds).
CommitHook = Callable[[int], None]


class SeckillEngine:
    """Seckill's path from a validated call to its order or refusal.

    Its collaborators come in through the constructor: the activities it knows of (`catalogue`,
    shared with the servicer's reads; a private one when not given) and the hooks told of each
    committed batch (`on_commit`).
    """

    def __init__(self, database: Database, settings: EngineSettings | None = None, *,
                 catalogue: Catalogue | None = None,
                 on_commit: Sequence[CommitHook] = ()) -> None:
        self._db = database
        self.settings = settings or EngineSettings()
        self._outbox = Outbox(enabled=self.settings.events)
        self.catalogue = catalogue or Catalogue(database)
        self._on_commit = tuple(on_commit)
        self._tracer = tracer()
        # The buyers of one product, batched: one transaction per batch (`_run_batch`).
        self._batches: Coalescer[int, SeckillAttempt, Won] = Coalescer(
            self._run_waiters, window_s=self.settings.batch_window_s,
            max_size=self.settings.batch_max, name="seckill-commit",
            context=None if self._tracer is None else get_current)
        # product id -> units its last look showed that calls could take (0: none, or no
        # caller won); a call asking for more is read before a transaction (see the module's
        # docstring). A product not here has not been looked at: its calls go straight on.
        self._units_seen: dict[int, int] = {}
        self._readers: dict[int, BatchLoader[SeckillAttempt, Refused | None]] = {}
        self.stats = BatchStats()

    async def product_of(self, activity_id: int) -> int:
        """The activity's product (the catalogue's; read when not known yet)."""
        return await self.catalogue.product_of(activity_id)

    async def buy(self, activity_id: int, user_id: str, quantity: int = 1) -> Won:
        """The committed order of `quantity` units, or raises the refusal (a
        `ServiceError`)."""
        product_id = self.catalogue.known_product_of(activity_id)
        if product_id is None:
            product_id = await self.catalogue.product_of(activity_id)
        if quantity > 1:  # every activity allows 1
            await self.catalogue.check_limit(activity_id, quantity)
        attempt = SeckillAttempt(activity_id=activity_id, user_id=user_id, quantity=quantity)
        if quantity > self._units_seen.get(product_id, quantity):
            refusal = await self._reader(product_id).get(attempt)
            if refusal is not None:
                raise refusal.error
        if self.settings.mode == "per_request":
            return await self._commit_one(product_id, attempt)
        return await self._batches.submit(product_id, attempt)

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
        if self._on_commit and any(isinstance(o, Won) for o in result.outcomes):
            for hook in self._on_commit:  # the batch committed orders: the stock changed
                hook(product_id)
        BATCH_SIZE.observe(len(attempts))
        if result.stock_left is not None:
            for activity_id in {attempt.activity_id for attempt in attempts}:
                STOCK_REMAINING.labels(str(activity_id)).set(result.stock_left)
        self._looked(product_id, units_left=result.stock_left,
                     stock_decided=any(map(reached_stock, result.outcomes)))

    async def _run_waiters(self, product_id: int,
                           batch: list[Waiter[SeckillAttempt, Won]]
                           ) -> list[Won | BaseException]:
        """The coalescer's run: one batch's transaction, each refusal as its caller's error.

        The batch's span (when tracing) is current in this task: its transaction's span is
        the batch's child, and the batch the first caller's."""
        attempts = [w.item for w in batch]
        if self._tracer is None:
            outcomes = await self._run_batch(product_id, attempts)
        else:
            with batch_span(self._tracer, product_id, [w.context for w in batch]):
                outcomes = await self._run_batch(product_id, attempts)
        return [o.error if isinstance(o, Refused) else o for o in outcomes]

    async def _commit_one(self, product_id: int, attempt: SeckillAttempt) -> Won:
        (outcome,) = await self._run_batch(product_id, [attempt])
        if isinstance(outcome, Refused):
            raise outcome.error
        return outcome


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
