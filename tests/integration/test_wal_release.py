"""WAL is released while the captured tables are quiet: Debezium's heartbeat.action.query
writes to _mallard.heartbeat (in the publication, not captured), so its confirmed position
follows the WAL even when only tables outside the publication are written."""
from __future__ import annotations

import json
import time
from pathlib import Path

import psycopg2
import pytest

pytestmark = pytest.mark.integration
MB = 1024 * 1024


def retained_wal(cur) -> tuple[int, int]:
    """(bytes of WAL the slot retains past its confirmed position, current WAL position)."""
    cur.execute("""SELECT (pg_current_wal_lsn() - confirmed_flush_lsn)::bigint, (pg_current_wal_lsn() - '0/0')::bigint
                   FROM pg_replication_slots WHERE slot_name = 'mallard_debezium'""")
    return cur.fetchone()


def test_the_slot_releases_wal_written_outside_the_publication_within_two_heartbeats(stack):
    # The connector config the stack runs: the repo's own, heartbeat interval included.
    config = json.loads(Path(stack.status()["debezium"]["connector_config"]).read_text())["config"]
    heartbeat_s = int(config["heartbeat.interval.ms"]) / 1000
    conn = psycopg2.connect(stack.dsn)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute("CREATE TABLE wal_ballast (id int PRIMARY KEY, pad text)")
            cur.execute("ALTER TABLE wal_ballast ALTER pad SET STORAGE EXTERNAL")  # not compressed: 5 kB of WAL a row
            cur.execute("SELECT count(*) FROM pg_publication_tables WHERE tablename = 'wal_ballast'")
            assert cur.fetchone() == (0,), "the ballast table is outside the publication"
            _, before = retained_wal(cur)
            # 50 MB of rows, in transactions of 5 MB; the captured tables stay quiet.
            for chunk in range(10):
                cur.execute("INSERT INTO wal_ballast SELECT g, repeat(md5(g::text), 160) "
                            "FROM generate_series(%s, %s) g", (chunk * 1000 + 1, chunk * 1000 + 1000))
            written_at = time.monotonic()
            retained, after = retained_wal(cur)
            assert after - before >= 50 * MB, f"only {(after - before) / MB:.1f} MB of WAL written"
            # Within a heartbeat Debezium updates _mallard.heartbeat (in the publication, not
            # captured); Connect commits that offset (offset.flush.interval.ms, 5 s, shorter
            # than a heartbeat) and Debezium confirms it to the slot.
            deadline = written_at + 2 * heartbeat_s
            while retained >= 4 * MB:
                assert time.monotonic() < deadline, (
                    f"the slot still retains {retained / MB:.1f} MB {2 * heartbeat_s:.0f}s after the writes")
                time.sleep(0.2)
                retained, _ = retained_wal(cur)
            print(f"retained {retained / MB:.2f} MB {time.monotonic() - written_at:.1f}s after writing "
                  f"{(after - before) / MB:.0f} MB (heartbeat every {heartbeat_s:.0f}s)")
            cur.execute("DROP TABLE wal_ballast")  # the session's stack goes on
    finally:
        conn.close()
