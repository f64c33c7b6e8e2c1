"""Tables named as Postgres allows, not only as plain words: public."Order Items" and a
table in a schema named with capitals and a space (its own name with unicode and a dot,
which Debezium keeps in the topic's name), replicated end to end — the config,
the first snapshot and a resnapshot, CDC (insert, update, delete), `mallard status` on
the topic Debezium really writes (its name sanitized), and `mallard verify`."""
from __future__ import annotations

import json

import psycopg2
import pytest

pytestmark = pytest.mark.integration

ITEMS = 'public."Order Items"'
BUYERS = '"Sales Dept"."Größte Käufer.v2"'
CONFIG = """\
source:
  password: ${MALLARD_PG_PASSWORD}
streams:
  public.customers:
  public."Order Items":
  '"Sales Dept"."Größte Käufer.v2"':
    target: '"Sales Dept"."Größte Käufer.v2"'
"""


def pg(stack, sql: str) -> None:
    with psycopg2.connect(stack.dsn) as conn, conn.cursor() as cur:
        cur.execute(sql)


def test_tables_named_with_spaces_capitals_and_quotes_replicate_end_to_end(make_stack, tmp_path):
    config = tmp_path / "replication.yaml"
    config.write_text(CONFIG)
    stack = make_stack(MALLARD_REPLICATION_CONFIG=str(config))

    # An unquoted name with capitals is refused with the spelling to use, before anything starts.
    bad = tmp_path / "bad.yaml"
    bad.write_text("streams:\n  public.Order Items:\n")
    out = stack.mallard("config", "check", "--offline", "--config", str(bad), check=False)
    assert out.returncode == 1 and "bad.yaml:2" in out.stderr and "a stream is '<schema>.<table>'" in out.stderr, out

    # The tables exist before Debezium and the services start (the demo is loaded too).
    stack.mallard("stack", "up", "--only", "postgres")
    pg(stack, 'CREATE TABLE "Order Items" (id int PRIMARY KEY, "Item Name" text, qty int);'
              'INSERT INTO "Order Items" SELECT g, \'item \' || g, g FROM generate_series(1, 50) g;'
              'CREATE SCHEMA "Sales Dept";'
              'CREATE TABLE "Sales Dept"."Größte Käufer.v2" (id int PRIMARY KEY, name text);'
              'INSERT INTO "Sales Dept"."Größte Käufer.v2" SELECT g, \'buyer \' || g FROM generate_series(1, 20) g')
    checked = stack.mallard("config", "check").stdout
    assert f"ok: 3 stream(s) (public.customers full-refresh, {ITEMS} full-refresh, {BUYERS} full-refresh)" in checked \
        and "every table exists in Postgres" in checked, checked
    stack.mallard("stack", "up")
    connector = json.loads(open(stack.status()["debezium"]["connector_config"]).read())
    assert r"(?-i:public[.]Order\ Items)" in connector["config"]["table.include.list"]

    # First snapshots (the applier asks for them), then a resnapshot named as a user types it.
    stack.wait_for('SELECT count(*), sum(qty) FROM "Order Items"', [[50, 1275]], timeout=180)
    stack.wait_for('SELECT count(*) FROM "Sales Dept"."Größte Käufer.v2"', [[20]], timeout=120)
    out = stack.mallard("resnapshot", ITEMS, BUYERS, "--wait", "--timeout", "180")
    assert f"{ITEMS}: merged" in out.stdout and f"{BUYERS}: merged" in out.stdout, out.stdout

    # A stream that is not replicated is refused by the CLI, not "requested".
    out = stack.mallard("resnapshot", 'public."No Such Table"', check=False)
    assert out.returncode == 1 and "not replicated" in out.stderr and "requested" not in out.stdout, out

    # CDC: insert, update, delete on both tables, applied by the events' own table names.
    pg(stack, 'INSERT INTO "Order Items" VALUES (51, \'new\', 100);'
              'UPDATE "Order Items" SET "Item Name" = \'changed\' WHERE id = 2;'
              'DELETE FROM "Order Items" WHERE id = 3;'
              'INSERT INTO "Sales Dept"."Größte Käufer.v2" VALUES (21, \'new buyer\');'
              'UPDATE "Sales Dept"."Größte Käufer.v2" SET name = \'renamed\' WHERE id = 1;'
              'DELETE FROM "Sales Dept"."Größte Käufer.v2" WHERE id = 2')
    stack.wait_for('SELECT count(*), sum(qty), max("Item Name") FILTER (WHERE id = 2) FROM "Order Items"',
                   [[50, 1275 + 100 - 3, "changed"]])
    stack.wait_for('SELECT count(*), max(name) FILTER (WHERE id = 1), count(*) FILTER (WHERE id = 2) '
                   'FROM "Sales Dept"."Größte Käufer.v2"', [[20, "renamed", 0]])
    assert stack.query("SELECT stream, target FROM _mallard.tables WHERE stream <> 'public.customers' "
                       "ORDER BY stream") == [[BUYERS, '"Sales Dept"."Größte Käufer.v2"'], [ITEMS, '"main"."Order Items"']]

    # status: the topics Debezium wrote (names sanitized), changes captured and applied.
    report = json.loads(stack.mallard("status", "--json").stdout)
    items, buyers = report["streams"][ITEMS], report["streams"][BUYERS]
    assert items["topic"] == "mallard.public.Order_Items" and items["topic_exists"], items
    assert buyers["topic"] == "mallard.Sales_Dept.Gr__te_K_ufer.v2" and buyers["topic_exists"], buyers
    assert items["last_change"] is not None and buyers["last_change"] is not None
    assert items["rows"] == 50 and buyers["rows"] == 20
    text = stack.mallard("status").stdout
    assert "on mallard.public.Order_Items" in text and "on mallard.Sales_Dept.Gr__te_K_ufer.v2" in text, text

    # verify: both tables equal to Postgres.
    out = stack.mallard("verify", ITEMS, BUYERS, "--json", check=False, timeout=240)
    result = json.loads(out.stdout)
    assert out.returncode == 0 and result["equal"] is True, out.stdout + out.stderr
    assert sorted(s["stream"] for s in result["streams"]) == sorted([ITEMS, BUYERS])
