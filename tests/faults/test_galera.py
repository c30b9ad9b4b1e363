"""The Kubernetes manifests run MariaDB as a Galera cluster: the migration step and a sale work
on a Galera node (wsrep on), through the primary as the services reach it there. A one-node
cluster on loopback; the replication itself is the operator's and Galera's business."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from seckill.v1 import activity_pb2, product_pb2

from seckill_common.database import migrations
from seckill_common.database.startup import wait_for_server
from tests.helpers.factories import make_activity, make_product
from tests.helpers.stack import PrivateMariaDB, free_port, query, settings_for, start_stack

pytestmark = pytest.mark.slow
PROVIDER = Path("/usr/lib/galera/libgalera_smm.so")


@pytest.fixture(scope="module")
def galera(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if not PROVIDER.exists() or shutil.which("mariadbd") is None:
        pytest.skip("the Galera provider (package galera-4) is not installed")
    group_port = free_port()
    server = PrivateMariaDB(tmp_path_factory.mktemp("galera"), extra_args=(
        "--wsrep-on=ON", f"--wsrep-provider={PROVIDER}", "--wsrep-cluster-address=gcomm://",
        "--wsrep-node-address=127.0.0.1", "--binlog-format=ROW",
        "--innodb-autoinc-lock-mode=2",
        f"--wsrep-provider-options=gmcast.listen_addr=tcp://127.0.0.1:{group_port};"
        f"base_port={group_port}"))
    server.install()
    server.start()
    yield server.url_base
    server.stop()


async def test_migrations_and_a_sale_on_a_galera_node(galera: str) -> None:
    db_url = f"{galera}/seckill"
    # The node takes connections before it has joined its (one-node) cluster: until then it
    # answers 1047, which the start-up wait treats as "not there yet".
    await wait_for_server(settings_for(db_url))
    assert await query(db_url, "SELECT @@wsrep_on") == [(1,)]
    applied = await migrations.migrate(settings_for(db_url))
    assert applied == [name for _version, name, _sql in migrations.available()]
    # Galera replicates InnoDB tables with primary keys only.
    without_key = await query(db_url, """
        SELECT t.table_name FROM information_schema.tables t
        WHERE t.table_schema = DATABASE() AND (t.engine <> 'InnoDB' OR NOT EXISTS (
            SELECT 1 FROM information_schema.table_constraints c
            WHERE c.table_schema = t.table_schema AND c.table_name = t.table_name
              AND c.constraint_type = 'PRIMARY KEY'))""")
    assert without_key == []

    # On Galera the migration is a step of its own (applied above); the services check it.
    stack = await start_stack(db_url, SECKILL_MIGRATE_ON_START="false")
    try:
        product = await make_product(stack, stock=3)
        activity = await make_activity(stack, product.id)
        for user in ("a", "b", "c"):
            await stack.activities.Seckill(activity_pb2.SeckillRequest(
                activity_id=activity.id, user_id=user))
        left = await stack.products.GetProduct(product_pb2.GetProductRequest(id=product.id))
        assert left.stock == 0
    finally:
        await stack.stop()
