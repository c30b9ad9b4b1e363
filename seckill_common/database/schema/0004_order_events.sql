-- Order events: the transactional outbox (docs/EVENTS.md). Runs on MariaDB 10.11 and MySQL 8;
-- every statement is idempotent (CREATE TABLE IF NOT EXISTS, INSERT IGNORE), so the file can be
-- re-run after a crash at any statement.
--
-- order_events: one row per order state change, written in the change's own transaction by
-- seckill_common/database/order_events.py. `revision` is the feed's position: an
-- AUTO_INCREMENT taken at insert, so transactions may commit out of revision order; readers
-- serve only up to a watermark that no open writer can fall below (the `gate` mark below).
-- `type` is the OrderEvent.Type number (1 CREATED, 2 PAID, 3 CANCELLED, 4 EXPIRED); `payload`
-- the order after the change in protobuf's JSON mapping of seckill.v1.Order, built by the
-- database from the row it just wrote.

CREATE TABLE IF NOT EXISTS order_events (
    revision    BIGINT       NOT NULL AUTO_INCREMENT,
    event_id    CHAR(36)     NOT NULL,
    type        TINYINT      NOT NULL,
    order_id    BIGINT       NOT NULL,
    payload     LONGTEXT     NOT NULL,
    create_time DATETIME(6)  NOT NULL,
    PRIMARY KEY (revision),
    UNIQUE KEY order_events_id (event_id),
    KEY order_events_by_order (order_id, revision),
    KEY order_events_age (create_time)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;

-- Named marks of the feed, one row each:
--   gate    never changes: every writer of events holds it in share mode from before its
--           INSERT takes a revision until its COMMIT; a reader that takes it exclusively
--           therefore sees every revision below the newest committed one resolved;
--   pruned  the highest revision deleted by retention (a reader behind it must list again);
--   relayed the highest revision JetStream acknowledged, all below it too (the relay's
--           checkpoint).
CREATE TABLE IF NOT EXISTS order_event_marks (
    name     VARCHAR(16) NOT NULL,
    revision BIGINT      NOT NULL,
    PRIMARY KEY (name)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;

INSERT IGNORE INTO order_event_marks (name, revision) VALUES ('gate', 0), ('pruned', 0),
    ('relayed', 0);
