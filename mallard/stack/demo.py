"""Changes to the demo shop, so Debezium has something to say."""
from __future__ import annotations

import random
from typing import Any


def make_changes(conn: Any, count: int, seed: int | None = None) -> dict[str, int]:
    """About ``count`` changes, each its own transaction: new orders, status
    updates and deleted orders."""
    rng = random.Random(seed)
    done = {"inserted": 0, "updated": 0, "deleted": 0}
    with conn.cursor() as cur:
        for _ in range(count):
            action = rng.choices(["insert", "update", "delete"], weights=[5, 4, 1])[0]
            if action == "insert":
                cur.execute(
                    """INSERT INTO orders (customer_id, product_id, quantity, total, status, order_date, updated_at)
                       SELECT %s, p.id, %s, p.price * %s, 'placed', current_date, now() FROM products p WHERE p.id = %s""",
                    (rng.randint(1, 2000), q := rng.randint(1, 5), q, rng.randint(1, 500)),
                )
                done["inserted"] += cur.rowcount
            elif action == "update":
                cur.execute(
                    """UPDATE orders SET status = %s, updated_at = now()
                       WHERE id = (SELECT id FROM orders ORDER BY id OFFSET %s LIMIT 1)""",
                    (rng.choice(["paid", "shipped", "delivered"]), rng.randint(0, 4000)),
                )
                done["updated"] += cur.rowcount
            else:
                cur.execute("DELETE FROM orders WHERE id = (SELECT max(id) FROM orders)")
                done["deleted"] += cur.rowcount
    return done
