"""Issue 18, day-two changes: `mallard config apply` adds a stream to a running stack's
config, then removes another, and the replica follows both without a restart: the new
stream's rows arrive by its first snapshot and its changes by CDC; the removed one's
changes are no longer applied while the others' go on; every process keeps its pid. A
config Postgres contradicts is refused, changing nothing."""
from __future__ import annotations

import json

import psycopg2
import pytest

from mallard.core.names import include_entry

pytestmark = pytest.mark.integration

TABLES = ("a", "b", "c")


def pids(stack) -> dict[str, int]:
    components = stack.status()["components"]
    assert all(c["state"] == "running" for c in components.values()), components
    return {name: c["pid"] for name, c in components.items()}


def test_a_stream_added_then_another_removed_on_a_running_stack_without_a_restart(make_stack):
    stack = make_stack(MALLARD_CONFIG_RELOAD_INTERVAL_S="0.5")
    first = stack.home / "ab.yaml"
    first.write_text("streams:\n  public.a:\n  public.b:\n")
    stack.env["MALLARD_REPLICATION_CONFIG"] = str(first)
    stack.mallard("stack", "up", "--no-demo", "--only", "postgres")
    conn = psycopg2.connect(stack.dsn)  # the owner, as an application
    conn.autocommit = True
    cur = conn.cursor()
    for t in TABLES:
        cur.execute(f"CREATE TABLE {t} (id int PRIMARY KEY, v text)")
        cur.execute(f"INSERT INTO {t} SELECT g, 'first' FROM generate_series(1, 100) g")
    stack.mallard("stack", "up", "--no-demo")
    for t in ("a", "b"):
        stack.wait_for(f"SELECT count(*) FROM {t}", [[100]])
    before = pids(stack)

    # Add c (its table already has rows): connector, publication, then the services.
    # The user edits the config the stack runs, then applies it.
    first.write_text("streams:\n  public.a:\n  public.b:\n  public.c:\n")
    out = stack.mallard("config", "apply").stdout
    assert "+public.c" in out and "now captures public.a, public.b, public.c" in out, out
    assert "run it (no restart)" in out
    stack.wait_for("SELECT count(*) FROM c", [[100]])  # its first snapshot, through the cut
    cur.execute("INSERT INTO c VALUES (101, 'cdc')")
    cur.execute("UPDATE c SET v = 'changed' WHERE id = 1")
    stack.wait_for("SELECT count(*), count(*) FILTER (WHERE v <> 'first') FROM c", [[101, 2]])
    cur.execute("SELECT tablename FROM pg_publication_tables WHERE pubname = 'mallard_publication' "
                "AND schemaname = 'public' ORDER BY 1")
    assert cur.fetchall() == [("a",), ("b",), ("c",)]

    # Remove b: its later writes are not applied, a's and c's (in the same transaction) are.
    first.write_text("streams:\n  public.a:\n  public.c:\n")
    out = stack.mallard("config", "apply", str(first)).stdout
    assert "-public.b" in out and "no longer applied: public.b" in out, out
    cur.execute("BEGIN")
    for t in TABLES:
        cur.execute(f"INSERT INTO {t} VALUES (200, 'after removal')")
    cur.execute("COMMIT")
    stack.wait_for("SELECT (SELECT count(*) FROM a WHERE id = 200) + (SELECT count(*) FROM c WHERE id = 200)", [[2]])
    assert stack.query("SELECT count(*), count(*) FILTER (WHERE id = 200) FROM b") == [[100, 0]]
    cur.execute("SELECT tablename FROM pg_publication_tables WHERE pubname = 'mallard_publication' "
                "AND schemaname = 'public' ORDER BY 1")
    assert cur.fetchall() == [("a",), ("c",)]
    conn.close()

    # A config Postgres contradicts is refused before anything changes: one line naming file, line and key.
    bad = stack.home / "bad.yaml"
    bad.write_text("streams:\n  public.a:\n    mode: incremental\n    update_key: updated_at\n  public.b:\n")
    out = stack.mallard("config", "apply", str(bad), check=False)
    assert out.returncode == 1
    assert f"{bad}:4: streams.public.a.update_key: column 'updated_at' does not exist in public.a" in out.stderr
    assert str(bad) not in (stack.home / "stack.json").read_text()

    # Another deployment's way (this stack, named by its addresses: mallard holds no admin role
    # then): the connector's new table list PUT through Connect, the publication's SQL printed.
    url = stack.status()["kafka_connect"]["url"]
    again = stack.home / "abc.yaml"
    again.write_text("streams:\n  public.a:\n  public.b:\n  public.c:\n")
    out = stack.mallard("config", "apply", str(again), "--connect-url", url, "--pg-dsn", stack.dsn).stdout
    assert 'ALTER PUBLICATION "mallard_publication" ADD TABLE "public"."b";' in out, out
    held = json.loads(stack.mallard("connector", "config", "--connect-url", url).stdout)
    assert held["table.include.list"] == ",".join(include_entry(f"public.{t}") for t in TABLES)
    assert held["publication.name"] == "mallard_publication,mallard_publication_inserts"  # the rest as it was

    assert pids(stack) == before, "nothing was restarted"
    report = json.loads(stack.mallard("status", "--json").stdout)
    assert report["streams"]["public.b"]["configured"] is False and report["streams"]["public.b"]["rows"] == 100
    assert "no longer applied" in stack.mallard("status").stdout
    state = stack.applier_state()
    assert state["config"]["streams"] == ["public.a", "public.c"] and state["dead_letters"] == 0

