"""Kill the applier with SIGKILL at random moments while Postgres keeps changing;
afterwards DuckDB equals Postgres row for row, each row from the write that made it."""
from __future__ import annotations

import os
import random
import signal
import threading
import time

import psycopg2
import pytest

from tests.conftest import up_capturing_every_table

pytestmark = pytest.mark.integration
SEED = int(os.environ.get("MALLARD_TEST_SEED", random.randrange(10**6)))
PAGE = 5_000


def workload(dsn: str, stop: threading.Event, rng: random.Random, counts: dict) -> None:
    conn = psycopg2.connect(dsn)
    cur = conn.cursor()
    next_id = 1
    while not stop.is_set():
        for _ in range(rng.randint(1, 8)):  # one transaction, several statements
            action = rng.random()
            if action < 0.5 or next_id < 20:
                cur.execute("INSERT INTO crashy VALUES (%s, %s, %s, %s)",
                            (next_id, rng.randint(0, 100), f"note {rng.random()}", rng.randint(0, 10**6) / 100))
                next_id += 1
            elif action < 0.85:
                cur.execute("UPDATE crashy SET n = n + 1, amount = amount + 0.01 WHERE id = %s", (rng.randrange(1, next_id),))
            elif action < 0.97:
                cur.execute("DELETE FROM crashy WHERE id = %s", (rng.randrange(1, next_id),))
            else:
                cur.execute("UPDATE crashy SET id = %s WHERE id = %s", (next_id, rng.randrange(1, next_id)))
                next_id += 1
        conn.commit()
        counts["transactions"] += 1
        time.sleep(rng.random() * 0.01)
    conn.close()


def test_sigkill_at_random_moments_changes_nothing(make_stack):
    print(f"seed {SEED} (rerun with MALLARD_TEST_SEED={SEED})")
    rng = random.Random(SEED)
    # A small bound on held events: the applier keeps pausing partitions that are ahead
    # (the CDC topic or the transaction topic) and resuming them, through every kill.
    stack = up_capturing_every_table(make_stack(MALLARD_TOPIC_REFRESH_MS="1000", MALLARD_MAX_BUFFERED_EVENTS="20"))
    conn = psycopg2.connect(stack.dsn)
    conn.autocommit = True
    conn.cursor().execute("CREATE TABLE crashy (id int PRIMARY KEY, n int, note text, amount numeric(10,2))")
    stop, counts = threading.Event(), {"transactions": 0}
    writer = threading.Thread(target=workload, args=(stack.dsn, stop, random.Random(SEED), counts))
    writer.start()
    kills = 0
    try:
        for _ in range(4):
            time.sleep(rng.uniform(1.0, 4.0))
            pid = stack.status()["components"]["applier"]["pid"]
            if pid:
                os.kill(pid, signal.SIGKILL)
                kills += 1
            time.sleep(rng.uniform(0.0, 1.5))
            stack.mallard("stack", "up", "--no-demo")
        time.sleep(2)
    finally:
        stop.set()
        writer.join()
    assert kills == 4 and counts["transactions"] > 100, counts

    with conn.cursor() as cur:
        cur.execute("SELECT id, n, note, amount::text, xmin::text::bigint FROM crashy ORDER BY id")
        source = [list(r) for r in cur.fetchall()]
    conn.close()
    # Compared in pages of ids (the applier's /query returns at most 10,000 rows), and by count.
    stack.wait_for("SELECT count(*) FROM crashy", [[len(source)]], timeout=120)
    for start in range(0, len(source), PAGE):
        page = source[start:start + PAGE]
        sql = (f"SELECT id, n, note, amount::VARCHAR, _mallard_tx_id FROM crashy "
               f"WHERE id BETWEEN {page[0][0]} AND {page[-1][0]} ORDER BY id")
        try:
            stack.wait_for(sql, page, timeout=30)
        except AssertionError:
            replica = stack.query(sql)
            differing = [(s, r) for s, r in zip(page, replica) if s != r][:10]
            pytest.fail(f"seed {SEED}: DuckDB differs from Postgres ({len(page)} vs {len(replica)} rows with ids "
                        f"{page[0][0]}..{page[-1][0]}); first differences (postgres, duckdb): {differing}")
    log = (stack.home / "logs" / "applier.log").read_text()
    assert log.count("applier up:") == 5  # started once and restarted after each kill
    print(f"partitions paused by the last applier process: {stack.applier_state()['partition_pauses']}")
