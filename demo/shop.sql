-- The demo source: a small online shop. Deterministic (no random()), so every
-- run of the demo and every test starts from the same rows. Used as is by the
-- local stack and by docker-compose's Postgres init.

CREATE TABLE customers (
    id          serial PRIMARY KEY,
    email       text NOT NULL UNIQUE,
    full_name   text NOT NULL,
    country     char(2) NOT NULL,
    created_at  timestamptz NOT NULL
);

CREATE TABLE products (
    id          serial PRIMARY KEY,
    sku         varchar(32) NOT NULL UNIQUE,
    name        text NOT NULL,
    price       numeric(10, 2) NOT NULL,
    stock       integer NOT NULL,
    attributes  jsonb NOT NULL DEFAULT '{}'
);

CREATE TABLE orders (
    id           bigserial PRIMARY KEY,
    customer_id  integer NOT NULL REFERENCES customers (id),
    product_id   integer NOT NULL REFERENCES products (id),
    quantity     integer NOT NULL,
    total        numeric(12, 2) NOT NULL,
    status       text NOT NULL,
    order_date   date NOT NULL,
    updated_at   timestamptz NOT NULL
);

INSERT INTO customers (email, full_name, country, created_at)
SELECT 'customer' || i || '@example.com',
       (ARRAY['Ada', 'Grace', 'Alan', 'Edsger', 'Barbara', 'Donald', 'Frances', 'John'])[1 + i % 8]
         || ' ' || (ARRAY['Lovelace', 'Hopper', 'Turing', 'Dijkstra', 'Liskov', 'Knuth', 'Allen'])[1 + i % 7],
       (ARRAY['DE', 'FR', 'US', 'GB', 'NL', 'JP', 'BR', 'IN'])[1 + (i * 7) % 8],
       timestamptz '2024-01-01 00:00:00+00' + (i * 3137 % 600) * interval '1 day' + (i * 977 % 86400) * interval '1 second'
FROM generate_series(1, 2000) AS i;

INSERT INTO products (sku, name, price, stock, attributes)
SELECT 'SKU-' || lpad(i::text, 5, '0'),
       (ARRAY['Mug', 'Lamp', 'Chair', 'Desk', 'Notebook', 'Kettle', 'Plant', 'Rug'])[1 + i % 8] || ' #' || i,
       round((3 + (i * 7919 % 49700) / 100.0)::numeric, 2),
       (i * 31) % 250,
       jsonb_build_object('color', (ARRAY['red', 'green', 'blue', 'black'])[1 + i % 4], 'weight_g', 100 + (i * 13) % 4900)
FROM generate_series(1, 500) AS i;

INSERT INTO orders (customer_id, product_id, quantity, total, status, order_date, updated_at)
SELECT c, p, q, round(q * (SELECT price FROM products WHERE id = p), 2),
       (ARRAY['placed', 'paid', 'shipped', 'delivered', 'cancelled'])[1 + i % 5],
       date '2025-01-01' + (i * 7 % 365),
       timestamptz '2025-01-01 08:00:00+00' + (i * 7 % 365) * interval '1 day' + (i % 600) * interval '1 minute'
FROM (
    SELECT i, 1 + (i * 7907) % 2000 AS c, 1 + (i * 104729) % 500 AS p, 1 + i % 4 AS q
    FROM generate_series(1, 5000) AS i
) AS g;

ANALYZE;
