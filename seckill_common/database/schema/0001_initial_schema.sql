-- Products, activities and orders. Runs on MariaDB 10.11 and MySQL 8.
-- Times are DATETIME(6) in UTC (every session sets time_zone = '+00:00').

CREATE TABLE IF NOT EXISTS products (
    id          BIGINT       NOT NULL AUTO_INCREMENT,
    name        VARCHAR(200) NOT NULL,
    description TEXT         NOT NULL,
    price_cents BIGINT       NOT NULL,
    stock       BIGINT       NOT NULL,
    create_time DATETIME(6)  NOT NULL,
    update_time DATETIME(6)  NOT NULL,
    PRIMARY KEY (id),
    -- The last line of defence against overselling: no transaction can commit negative stock.
    CONSTRAINT products_stock_not_negative CHECK (stock >= 0),
    CONSTRAINT products_price_in_range CHECK (price_cents BETWEEN 0 AND 1000000000000)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;

CREATE TABLE IF NOT EXISTS activities (
    id          BIGINT       NOT NULL AUTO_INCREMENT,
    product_id  BIGINT       NOT NULL,
    name        VARCHAR(200) NOT NULL,
    start_time  DATETIME(6)  NOT NULL,
    end_time    DATETIME(6)  NOT NULL,
    create_time DATETIME(6)  NOT NULL,
    PRIMARY KEY (id),
    KEY activities_product (product_id),
    CONSTRAINT activities_window_ordered CHECK (end_time > start_time),
    -- A product cannot be deleted while an activity sells it.
    CONSTRAINT activities_product_fk FOREIGN KEY (product_id) REFERENCES products (id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;

CREATE TABLE IF NOT EXISTS orders (
    id          BIGINT         NOT NULL AUTO_INCREMENT,
    activity_id BIGINT         NOT NULL,
    product_id  BIGINT         NOT NULL,
    -- Binary: user ids compare byte for byte, so 'a' and 'a ' are different users.
    user_id     VARBINARY(256) NOT NULL,
    create_time DATETIME(6)    NOT NULL,
    PRIMARY KEY (id),
    -- At most one order per user per activity, whatever the code above does.
    UNIQUE KEY orders_one_per_user (activity_id, user_id),
    KEY orders_by_activity (activity_id, id),
    KEY orders_by_user (user_id, id),
    KEY orders_product (product_id),
    -- An activity cannot be deleted while it has orders.
    CONSTRAINT orders_activity_fk FOREIGN KEY (activity_id) REFERENCES activities (id),
    CONSTRAINT orders_product_fk FOREIGN KEY (product_id) REFERENCES products (id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;
