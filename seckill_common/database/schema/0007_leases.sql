-- Named leases: one holder at a time for work that must not run twice at once (the order events'
-- relay to NATS), owned by seckill_common/database/lease.py. Runs on MariaDB 10.11 and MySQL 8;
-- CREATE TABLE IF NOT EXISTS makes the file safe to run again.
--
-- A lease is held by `holder` while `expires` (the database's clock, UTC_TIMESTAMP(6)) is in the
-- future; its holder renews it well before then. `epoch` grows by one at every acquisition: it
-- is the fencing token that a holder's writes check in their own transaction, so a holder that
-- lost the lease (frozen, cut off) cannot write once another has taken it. A row is created by
-- its first acquirer.

CREATE TABLE IF NOT EXISTS leases (
    name    VARCHAR(64)  NOT NULL,
    holder  VARCHAR(64)  NOT NULL,
    epoch   BIGINT       NOT NULL,
    expires DATETIME(6)  NOT NULL,
    PRIMARY KEY (name)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;
