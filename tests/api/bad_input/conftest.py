"""Bad input: hostile values in every field of every RPC's request.

Each property test drives one RPC with hypothesis (derandomized, so CI repeats the same
examples) through `Prober.call`, which checks every answer against the protos' documented
errors, the google.rpc detail each refusal carries, and that a refused call (or any read) left
the tables unchanged. The tests then model the documented validation rules, so a value the
contract says is bad must be INVALID_ARGUMENT and one it allows must get past validation.

Every test has its own database and stack, seeded alike (`prober`), so any test runs alone and
in any order. Within a property test, calls that succeed may change the data later examples see
(an update, a seckill, a delete): every outcome they lead to is documented, so the checks hold
whatever the order of the examples. test_totals.py checks the folder's totals, running first
any property test this session has not run."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.helpers.bad_input import (
    Prober,
    ServerLog,
    Tally,
)
from tests.helpers.bad_input_rules import (
    seeded_prober,
)


@pytest.fixture(scope="package")
def tally() -> Tally:
    return Tally()


@pytest.fixture(scope="package")
async def server_log() -> AsyncIterator[ServerLog]:
    with ServerLog() as log:
        yield log


@pytest.fixture
async def prober(mariadb: str, server_log: ServerLog, tally: Tally) -> AsyncIterator[Prober]:
    """The test's own seeded stack (see `seeded_prober`); `server_log` hears its services, and
    the tally counts what it answered."""
    async with seeded_prober(mariadb) as p:
        yield p
    tally.add(p)
