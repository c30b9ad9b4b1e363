-- Quantities (issue 17): an activity's per-user limit, an order's quantity. Runs on MariaDB
-- 10.11 and MySQL 8.
--
-- Re-runnable after a crash at any statement: each ALTER TABLE is atomic on both servers, and
-- the runner takes "duplicate column" / "duplicate constraint" from one as "this ALTER already
-- committed" (MySQL has no ADD COLUMN IF NOT EXISTS). No UPDATE is needed: the defaults fill
-- the existing rows as the columns are added.
--
-- Existing activities allow 1 unit per user and existing orders are of 1 unit: what they were.
-- The defaults stay (unlike 0002's): code from before this migration, still serving during a
-- rolling upgrade, inserts orders without naming a quantity, and they are 1-unit orders.
-- Stock arithmetic with quantities (a cancel or an expiry gives back `quantity` units) is
-- then the same for old and new orders: remaining stock + the quantities of the active orders
-- = the units added.

ALTER TABLE activities
    ADD COLUMN per_user_limit INT NOT NULL DEFAULT 1,
    ADD CONSTRAINT activities_per_user_limit_in_range CHECK (per_user_limit BETWEEN 1 AND 1000);

ALTER TABLE orders
    ADD COLUMN quantity INT NOT NULL DEFAULT 1,
    ADD CONSTRAINT orders_quantity_in_range CHECK (quantity BETWEEN 1 AND 1000);
