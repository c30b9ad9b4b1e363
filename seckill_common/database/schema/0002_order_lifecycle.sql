-- The order lifecycle: an activity's sale price and payment window; an order's state, price,
-- pay deadline and update time; at most one active (pending or paid) order per user and
-- activity; the request ids of idempotent creates. Runs on MariaDB 10.11 and MySQL 8.
--
-- Re-runnable after a crash at any statement: each ALTER TABLE is atomic on both servers, and
-- the runner takes "duplicate column" (and the like) from one as "this ALTER already committed"
-- (MySQL has no ADD COLUMN IF NOT EXISTS); the UPDATEs fill only what is still unset; MODIFY
-- and CREATE TABLE IF NOT EXISTS are idempotent as they stand.
--
-- Orders states are stored as the OrderState enum's numbers: 1 PENDING_PAYMENT, 2 PAID,
-- 3 CANCELLED, 4 EXPIRED.
--
-- Existing orders become PAID (pay_deadline = create_time, price = the activity's price, which
-- is the product's current price). They were made when winning a seckill meant owning the
-- unit: nobody was told to pay, so making them PENDING_PAYMENT with a deadline from now would
-- take units from buyers who believe they own them, and would expire every one of them in the
-- same instant, one stampede of give-backs on each product's stock row.

ALTER TABLE activities
    ADD COLUMN price_cents BIGINT NULL,
    ADD COLUMN payment_window_ms BIGINT NOT NULL DEFAULT 900000,
    ADD CONSTRAINT activities_price_in_range CHECK (price_cents BETWEEN 0 AND 1000000000000),
    ADD CONSTRAINT activities_payment_window_in_range
        CHECK (payment_window_ms BETWEEN 1000 AND 604800000);

UPDATE activities a JOIN products p ON p.id = a.product_id
    SET a.price_cents = p.price_cents
    WHERE a.price_cents IS NULL;

-- The code always names both values; the defaults served only the rows above.
ALTER TABLE activities
    MODIFY price_cents BIGINT NOT NULL,
    ALTER COLUMN payment_window_ms DROP DEFAULT;

ALTER TABLE orders
    ADD COLUMN state TINYINT NOT NULL DEFAULT 2,
    ADD COLUMN price_cents BIGINT NULL,
    ADD COLUMN pay_deadline DATETIME(6) NULL,
    ADD COLUMN update_time DATETIME(6) NULL,
    -- 1 while the order holds its unit (pending or paid), NULL after: the unique key below
    -- then allows one active order per user and activity, and any number of finished ones
    -- (NULLs never collide). The CHECK keeps it in step with state. Not a generated column:
    -- MariaDB 10.11's CHECKSUM TABLE of a table with one varies under concurrent readers,
    -- and checksums are how operators (and our tests) compare tables.
    ADD COLUMN active TINYINT NULL DEFAULT 1,
    ADD CONSTRAINT orders_state_known CHECK (state BETWEEN 1 AND 4),
    ADD CONSTRAINT orders_active_follows_state CHECK (active <=> IF(state IN (1, 2), 1, NULL)),
    ADD UNIQUE KEY orders_one_active (activity_id, user_id, active),
    -- Expiry finds the due orders (state 1, pay_deadline passed) on this index alone.
    ADD KEY orders_due (state, pay_deadline),
    DROP KEY orders_one_per_user;

UPDATE orders o JOIN activities a ON a.id = o.activity_id
    SET o.price_cents = a.price_cents, o.pay_deadline = o.create_time,
        o.update_time = o.create_time
    WHERE o.price_cents IS NULL;

ALTER TABLE orders
    MODIFY price_cents BIGINT NOT NULL,
    MODIFY pay_deadline DATETIME(6) NOT NULL,
    MODIFY update_time DATETIME(6) NOT NULL,
    ALTER COLUMN state DROP DEFAULT,
    ALTER COLUMN active SET DEFAULT NULL;

-- AIP-155 request ids of CreateProduct and CreateActivity: a retry finds the resource the
-- first call created; the fingerprint (hex SHA-256 of the request) tells a retry from a
-- different request that reuses the id.
CREATE TABLE IF NOT EXISTS create_requests (
    method      VARCHAR(64)  NOT NULL,
    request_id  CHAR(36)     NOT NULL,
    fingerprint CHAR(64)     NOT NULL,
    resource_id BIGINT       NOT NULL,
    create_time DATETIME(6)  NOT NULL,
    PRIMARY KEY (method, request_id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;
