"""The totals over every bad-input property test of this folder: every RPC tried, each with
some INVALID_ARGUMENT, enough examples in all, and no server error logged."""

from __future__ import annotations

import pytest

from tests.api.bad_input import test_activity_rpcs, test_deletes, test_order_rpcs, test_product_rpcs
from tests.helpers.bad_input import (
    SCALE,
    Property,
    ServerLog,
    Tally,
    all_methods,
)
from tests.helpers.bad_input_rules import (
    seeded_prober,
)

# A database warning (truncation, overflow) raised in a service becomes an error there, and so
# an INTERNAL answer that fails the test.
pytestmark = pytest.mark.filterwarnings("error::pymysql.err.Warning")

# Read from the modules (not imported by name, which would collect them here a second time).
PROPERTY_TESTS = (
    test_product_rpcs.test_create_product, test_product_rpcs.test_get_product,
    test_product_rpcs.test_list_products, test_product_rpcs.test_update_product,
    test_activity_rpcs.test_create_activity, test_activity_rpcs.test_get_activity,
    test_activity_rpcs.test_list_activities, test_activity_rpcs.test_seckill,
    test_activity_rpcs.test_update_activity, test_order_rpcs.test_get_order,
    test_order_rpcs.test_list_orders, test_order_rpcs.test_pay_order,
    test_deletes.test_cancel_order, test_deletes.test_delete_order,
    test_deletes.test_delete_activity, test_deletes.test_delete_product,
)


async def test_every_rpc_was_tried_and_no_server_error_was_logged(
        mariadb: str, tally: Tally, server_log: ServerLog) -> None:
    """The folder's totals over every property test: those this session did not run (under
    -k, or ordered after this test) run here first, each on its own fresh stack."""
    for test in PROPERTY_TESTS:
        prop: Property = test.property
        if prop.name not in tally.ran:
            async with seeded_prober(mariadb) as prober:
                await tally.check(prop, prober)
    print("\n" + tally.table())
    assert set(tally.seen) == set(all_methods())
    for path, counts in tally.seen.items():
        assert counts["INVALID_ARGUMENT"] > 0, (path, counts)
    print("examples per property test:", dict(sorted(tally.ran.items())), "total",
          tally.ran.total())
    assert tally.ran.total() >= 10_000 * SCALE
    assert not server_log.server_errors(), server_log.server_errors()
