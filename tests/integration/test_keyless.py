"""Tables without a primary key on the real stack (issue 18): a pgbench_history-like table
gets its inserts only published (Postgres keeps accepting its UPDATE and DELETE), an audit
log gets REPLICA IDENTITY FULL from the config (its updates and deletes are applied to one
row equal to the old one, duplicates present); a full refresh replaces the table's rows;
`mallard verify` compares them as multisets."""
from __future__ import annotations

import json
import os
import signal
import time

import duckdb
import psycopg2
import psycopg2.errors
import pytest

from mallard.stack.processes import is_alive

pytestmark = pytest.mark.integration

CONFIG = """\
streams:
  public.customers:
  public.pgbench_history:
  public.audit_log:
    replica_identity: full
"""
HISTORY = ("SELECT tid, bid, aid, delta, {trim}(filler) FROM pgbench_history ORDER BY 1, 2, 3, 4, 5")
AUDIT = "SELECT who, what FROM audit_log ORDER BY 1, 2"
FIRST = "SELECT stream FROM _mallard.snapshots WHERE request_id LIKE 'applier-%' AND status = 'merged' ORDER BY 1"


def pg(stack, *statements: str) -> list[list]:
    with psycopg2.connect(stack.dsn) as conn, conn.cursor() as cur:
        for sql in statements:
            cur.execute(sql)
        return [list(r) for r in cur.fetchall()] if cur.description else []


def verify_json(stack, *streams: str) -> tuple[int, dict]:
    out = stack.mallard("verify", "--json", *streams, check=False, timeout=240)
    assert out.returncode in (0, 1), out.stdout + out.stderr
    return out.returncode, json.loads(out.stdout)


def test_keyless_tables_are_replicated_as_multisets_and_never_break_the_source(make_stack, tmp_path):
    config = tmp_path / "replication.yaml"
    config.write_text(CONFIG)
    stack = make_stack(MALLARD_REPLICATION_CONFIG=str(config))
    stack.mallard("stack", "up", "--only", "postgres")
    pg(stack,
       "CREATE TABLE pgbench_history (tid int, bid int, aid int, delta int, mtime timestamp, filler char(22))",
       # duplicates, as pgbench writes them
       "INSERT INTO pgbench_history SELECT g % 7, 1, g % 50, (g % 3) - 1, now(), NULL FROM generate_series(1, 500) g",
       "CREATE TABLE audit_log (at date, who text, what text)",
       "INSERT INTO audit_log VALUES ('2026-01-01', 'bob', 'login'), ('2026-01-01', 'bob', 'login'), "
       "('2026-01-01', 'bob', 'login'), ('2026-01-01', 'ann', 'logout'), (NULL, 'ann', NULL)")

    up = stack.mallard("stack", "up").stdout
    # Told before the tables enter a publication, and which way each goes.
    assert "public.pgbench_history has no primary key: inserts only" in up, up
    assert "public.audit_log has no primary key: mallard sets REPLICA IDENTITY FULL" in up, up
    assert pg(stack, "SELECT relname, relreplident::text FROM pg_class WHERE relname IN "
                     "('pgbench_history', 'audit_log') ORDER BY 1") == [["audit_log", "f"], ["pgbench_history", "d"]]
    assert pg(stack, "SELECT pubname, tablename FROM pg_publication_tables WHERE tablename IN "
                     "('pgbench_history', 'audit_log') ORDER BY 1, 2") == [
        ["mallard_publication", "audit_log"], ["mallard_publication_inserts", "pgbench_history"]]
    checked = stack.mallard("config", "check").stdout
    assert "public.pgbench_history has no primary key: inserts only" in checked, checked
    assert "ALTER TABLE public.pgbench_history REPLICA IDENTITY FULL" in checked
    assert "public.audit_log has no primary key: REPLICA IDENTITY FULL" in checked

    stack.wait_for(FIRST, [["public.audit_log"], ["public.customers"], ["public.pgbench_history"]], timeout=180)
    stack.wait_for(HISTORY.format(trim="trim"), pg(stack, HISTORY.format(trim="rtrim")))

    # CDC: inserts append, duplicates included.
    pg(stack, "INSERT INTO pgbench_history SELECT 1, 1, 1, 5, now(), 'dup' FROM generate_series(1, 3)")
    stack.wait_for("SELECT count(*) FROM pgbench_history WHERE trim(filler) = 'dup'", [[3]])

    # REPLICA IDENTITY FULL: an update and a delete each take exactly one of three equal rows.
    pg(stack, "UPDATE audit_log SET what = 'LOGIN' WHERE ctid = (SELECT min(ctid) FROM audit_log WHERE who = 'bob')",
       "DELETE FROM audit_log WHERE ctid = (SELECT max(ctid) FROM audit_log WHERE what = 'login')",
       "DELETE FROM audit_log WHERE what IS NULL")  # NULLs match too
    expected = [["ann", "logout"], ["bob", "LOGIN"], ["bob", "login"]]
    assert pg(stack, AUDIT) == expected
    stack.wait_for(AUDIT, expected)

    # The source's own UPDATE and DELETE of the inserts-only table keep working (not replicated).
    pg(stack, "UPDATE pgbench_history SET delta = delta + 100 WHERE aid = 2",
       "DELETE FROM pgbench_history WHERE aid = 3",
       "INSERT INTO pgbench_history VALUES (9, 9, 9, 9, now(), 'after')")
    stack.wait_for("SELECT count(*) FROM pgbench_history WHERE trim(filler) = 'after'", [[1]])
    # ... where a publication of its updates would have broken them:
    pg(stack, "CREATE TABLE scratch_nokey (a int)", "CREATE PUBLICATION scratch_all FOR TABLE scratch_nokey")
    with pytest.raises(psycopg2.errors.ObjectNotInPrerequisiteState, match="does not have a replica identity"):
        pg(stack, "UPDATE scratch_nokey SET a = 1")
    pg(stack, "DROP PUBLICATION scratch_all", "DROP TABLE scratch_nokey")
    code, report = verify_json(stack, "public.pgbench_history")
    assert code == 1 and not report["streams"][0]["equal"]  # the update and delete did not reach the replica

    # A full refresh replaces the rows at its cut.
    stack.mallard("resnapshot", "public.pgbench_history", "--wait", "--timeout", "120")
    stack.wait_for(HISTORY.format(trim="trim"), pg(stack, HISTORY.format(trim="rtrim")))

    code, report = verify_json(stack, "public.pgbench_history", "public.audit_log")
    assert code == 0, report
    streams = {s["stream"]: s for s in report["streams"]}
    assert streams["public.audit_log"]["equal"] and streams["public.pgbench_history"]["equal"]
    assert streams["public.pgbench_history"]["rows"]["replica"] == pg(stack, "SELECT count(*) FROM pgbench_history")[0][0]
    assert any("multisets" in n for n in streams["public.audit_log"].get("notes", [])), streams["public.audit_log"]

    checks = stack.mallard("check", check=False, timeout=240).stdout
    publication = next(line for line in checks.splitlines() if line[2:].startswith("publication"))
    assert publication.startswith("✓") and "public.pgbench_history has no primary key: inserts only" in publication
    assert "public.audit_log has no primary key: REPLICA IDENTITY FULL" in publication, checks

    # One duplicate row fewer in the replica: verify tells.
    pid = stack.status()["components"]["applier"]["pid"]
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 60
    while is_alive(pid):
        assert time.monotonic() < deadline, "the applier did not stop"
        time.sleep(0.1)
    con = duckdb.connect(stack.status()["duckdb"]["path"])
    try:
        con.execute("DELETE FROM pgbench_history WHERE rowid = (SELECT min(rowid) FROM pgbench_history "
                    "WHERE trim(filler) = 'dup')")
    finally:
        con.close()
    code, report = verify_json(stack, "public.pgbench_history", "public.audit_log")
    streams = {s["stream"]: s for s in report["streams"]}
    assert code == 1 and not streams["public.pgbench_history"]["equal"] and streams["public.audit_log"]["equal"]
