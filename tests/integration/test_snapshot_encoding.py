"""The snapshot path and the CDC path give the applier the very same values, for every
type the applier supports: rows read from Postgres and encoded by the snapshot
encoder are compared with what real Debezium sent for the same rows."""
from __future__ import annotations

import io
import json
import time

import orjson
import psycopg2
import pyarrow as pa
import pytest
from confluent_kafka import Consumer, TopicPartition

from mallard.adapters.postgres import table_columns
from mallard.core.arrow_rows import CsvPlan, snapshot_table
from mallard.core.changes import Decoder, PoisonMessage
from mallard.core.pgtypes import column_type
from mallard.core.snapshot_encoding import (connect_schema, encode, fix_marked, json_expression, row_json_expression,
                                            select_expression)
from mallard.core.snapshots import decode_columns
from tests.conftest import running_stack_capturing_every_table
from tests.integration.test_applier_types import COLUMNS, ROWS


@pytest.fixture(scope="module")
def cdc_stack():
    """A stack of this module's own, capturing every table: its edge-value tables (a new CDC
    topic each, whose events are dead-lettered on purpose) stay off the session's stack, where
    they have held later transactions up (an open bug: see docs/limits.md)."""
    yield from running_stack_capturing_every_table()


pytestmark = pytest.mark.integration
TYPES = {c: t for c, t in COLUMNS.items() if c != "c_point"}  # unknown types are kept as text, not mapped


def test_snapshot_and_cdc_encode_every_supported_type_alike(cdc_stack):
    conn = psycopg2.connect(cdc_stack.dsn)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("DO $$ BEGIN CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy'); "
                    "EXCEPTION WHEN duplicate_object THEN NULL; END $$")
        cur.execute(f"CREATE TABLE snap_types (id integer PRIMARY KEY, {', '.join(f'{c} {t}' for c, t in TYPES.items())})")
        for key, values in ROWS.items():
            values = [v for c, v in zip(COLUMNS, values) if c in TYPES]
            cur.execute(f"INSERT INTO snap_types VALUES (%s, {', '.join(['%s'] * len(values))})", [key, *values])
        cur.execute("INSERT INTO snap_types (id) VALUES (2)")
    columns = table_columns(conn, "public.snap_types")
    with conn.cursor() as cur:
        cur.execute(f"SELECT {', '.join(select_expression(c) for c in columns)} FROM snap_types ORDER BY id")
        snapshot = {r[0]: r for r in cur.fetchall()}
        # the same rows encoded by Postgres (the snapshotter's fast path), as JSON text
        cur.execute(f"SELECT id, {row_json_expression(columns)} FROM snap_types ORDER BY id")
        by_sql = {r[0]: orjson.loads(fix_marked(columns, f"[{r[1]}]".encode()))[0] for r in cur.fetchall()}
    conn.close()

    topic = "mallard.public.snap_types"
    consumer = Consumer({"bootstrap.servers": cdc_stack.bootstrap_servers, "group.id": "enc", "enable.auto.commit": False})
    decoder, cdc = Decoder(), {}
    deadline = time.monotonic() + 90
    while topic not in consumer.list_topics(timeout=5).topics:
        assert time.monotonic() < deadline
        time.sleep(0.5)
    consumer.assign([TopicPartition(topic, p, 0) for p in consumer.list_topics(topic).topics[topic].partitions])
    while len(cdc) < 3 and time.monotonic() < deadline:
        msg = consumer.poll(0.5)
        if msg is not None and not msg.error() and msg.value():
            event = decoder.decode_change(topic, msg.partition(), msg.offset(), msg.key(), msg.value())
            cdc[event.row[0]] = event
    consumer.close()
    assert sorted(cdc) == [1, 2, 3]

    schema = cdc[1].schema
    assert [c.name for c in columns] == list(schema.columns)
    for i, col in enumerate(columns):
        snap_type = column_type(connect_schema(col))
        assert snap_type.duckdb == schema.types[i].duckdb, col.name
        for key in (1, 2, 3):
            python = encode(col, snapshot[key][i])
            assert by_sql[key][i] == python, (col.name, key, by_sql[key][i], python)  # the very same JSON value
            for encoded in (python, by_sql[key][i]):
                check_alike(col, snap_type, encoded, cdc[key].row[i], key)


def check_alike(col, snap_type, encoded, from_cdc, key) -> None:
    """What the applier decodes from a snapshot value equals what it decodes from Debezium's."""
    from_snapshot = snap_type.decode(encoded) if encoded is not None else None
    if isinstance(from_cdc, float) and from_cdc != from_cdc:  # NaN
        assert isinstance(from_snapshot, float) and from_snapshot != from_snapshot
        return
    if col.type_name == "float4" and from_cdc is not None:  # both become binary32 in DuckDB
        import struct
        from_cdc, from_snapshot = (struct.unpack("f", struct.pack("f", v))[0] for v in (from_cdc, from_snapshot))
    if col.type_name in ("json", "jsonb") and from_cdc is not None:
        assert json.loads(from_snapshot) == json.loads(from_cdc), (col.name, key)
        return
    assert from_snapshot == from_cdc, (col.name, key, from_snapshot, from_cdc)


EDGES = {  # column type -> values (SQL literals) at the edges of each encoding
    "numeric(12,2)": ["1.27", "1.28", "-1.28", "-1.29", "327.67", "327.68", "-327.68", "-327.69", "9999999999.99",
                      "-9999999999.99", "0", "-0.01", "0.01", "'NaN'"],
    "numeric(18,0)": ["999999999999999999", "-999999999999999999", "36028797018963967", "-36028797018963968"],
    "numeric(38,18)": ["99999999999999999999.999999999999999999", "-99999999999999999999.999999999999999999",
                       "0.000000000000000001", "-9223372036854775808.5", "18446744073709551616"],
    "numeric": ["0", "-0.0", "12.340", "1e-30", "-170141183460469231731687303715884105727",
                "170141183460469231731687303715884105728", "-170141183460469231731687303715884105728",
                "123456789012345678901234567890123456789012345678901234567890.5", "-1e100",
                "123456789012345678901234567890123456789", "'NaN'", "'Infinity'", "'-Infinity'"],
    "numeric(40,0)": ["9999999999999999999999999999999999999999", "'NaN'"],
    "numeric(38,38)": ["0.00000000000000000000000000000000000001", "-0.99999999999999999999999999999999999999"],
    "timestamp(3)": ["'1969-12-31 23:59:59.999'", "'2024-02-29 13:45:56.5'", "'1900-01-01'"],
    "timestamp": ["'1969-12-31 23:59:59.999999'", "'0001-01-01'", "'9999-12-31 23:59:59.999999'"],
    "timestamptz": ["'2024-01-01 00:00:00+14'", "'1901-12-13 20:45:52.000001+00'", "'2000-02-29 12:00:00-03:30'"],
    "time(3)": ["'23:59:59.999'", "'00:00:00.001'"],
    "time": ["'23:59:59.999999'"],
    "date": ["'1969-12-31'", "'0001-01-01'", "'9999-12-31'"],
    "interval": ["'-178000000 years'", "'1 day -00:00:00.000001'", "'00:00:00.5'", "'-2 mons -3 days -04:05:06.7'"],
    "bytea": ["decode(repeat('00ff7f80', 100), 'hex')"],
    "text": ["E'tab\\there\\nnewline \\\\ backslash \\\" \\x01 \\x02 \\x1f \u00e9 \U0001F600'", "''"],
    "double precision": ["'Infinity'", "'-Infinity'", "1e308", "5e-324", "-0.0", "0.1"],
    "real": ["'Infinity'", "3.4028235e38", "1e-45", "0.1"],
    "varchar[]": ["ARRAY['a\"b', NULL, E'c\\\\d']"],
    "bigint[]": ["ARRAY[[1,2],[3,NULL]]"],
}


def edge_tables(cur, prefix: str):
    """(type, table) per EDGES type: a table with ids 1.. holding its edge values, then NULL."""
    for i, (pg_type, values) in enumerate(EDGES.items()):
        table = f"{prefix}_{i}"
        cur.execute(f"DROP TABLE IF EXISTS {table}")
        cur.execute(f"CREATE TABLE {table} (id serial PRIMARY KEY, v {pg_type})")
        for v in values + ["NULL"]:
            cur.execute(f"INSERT INTO {table} (v) VALUES ({v})")
        yield pg_type, table


def test_postgres_encodes_edge_values_as_the_python_encoder_does(cdc_stack):
    """The snapshotter's SQL encoding gives the same JSON value as encode() at every edge:
    numeric byte lengths and the 127-bit limit (beyond it, the marked Python fallback), negative
    and millisecond times, long bytea, control characters, special floats, nested arrays."""
    conn = psycopg2.connect(cdc_stack.dsn)
    conn.autocommit = True
    with conn.cursor() as cur:
        for pg_type, table in edge_tables(cur, "snap_edges"):
            columns = table_columns(conn, f"public.{table}")
            col = columns[1]
            cur.execute(f"SELECT {select_expression(col)}, {json_expression(col)}, {row_json_expression(columns)} "
                        f"FROM {table} ORDER BY id")
            for raw, by_sql, row in cur.fetchall():
                python = encode(col, raw)
                assert orjson.loads(fix_marked(columns, f"[{row}]".encode()))[0][1] == python, (pg_type, raw, row)
                if by_sql is None or "$mallard_py" not in by_sql:
                    assert (orjson.loads(by_sql) if by_sql is not None else None) == python, (pg_type, raw, by_sql)
    conn.close()


def _arrow_and_json_rows(conn, table: str, key: int):
    """Row ``key`` of ``table`` read as the snapshotter reads it (COPY CSV -> Arrow), and as
    the JSON path gives it to the applier (SQL encoding, decoded): (arrow, json), each a
    list of values or the error it raised."""
    columns = table_columns(conn, f"public.{table}")
    types = [column_type(connect_schema(c)) for c in columns]
    plan = CsvPlan.of(columns)
    out = []
    with conn.cursor() as cur:
        cur.execute("BEGIN")
        cur.execute(plan.SESSION)
        buffer = io.BytesIO()
        cur.copy_expert(plan.copy(f"SELECT {plan.select_list} FROM {table} WHERE id = {key}"), buffer)
        cur.execute(f"SELECT {row_json_expression(columns)} FROM {table} WHERE id = {key}")
        (row_json,), = cur.fetchall()
        cur.execute("ROLLBACK")
    buffer.seek(0)
    try:
        batches = list(plan.batches(buffer, 1 << 20))
        assert all(b.schema.equals(plan.schema) for b in batches)
        out.append([_alike(v) for v in pa.Table.from_batches(batches, plan.schema).to_pylist()[0].values()])
    except ValueError as e:
        out.append(e)
    try:
        rows = [orjson.loads(fix_marked(columns, f"[{row_json}]".encode()))[0]]
        decoded = snapshot_table(types, decode_columns(tuple(types), rows))
        assert decoded.schema.equals(plan.schema)
        out.append([_alike(v) for v in decoded.to_pylist()[0].values()])
    except PoisonMessage as e:
        out.append(e)
    return out


def _alike(v):
    return "NaN" if isinstance(v, float) and v != v else (v, str(v))  # -0.0 == 0.0: compare the text too


def test_arrow_rows_hold_what_the_json_path_decodes_for_every_type_and_edge(cdc_stack):
    """The snapshotter's Arrow rows (COPY CSV parsed by Arrow) are, value for value and type
    for type, what the applier decodes from the JSON encoding (itself checked against
    Debezium above); a value the JSON path refuses, the Arrow path refuses too."""
    conn = psycopg2.connect(cdc_stack.dsn)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("DO $$ BEGIN CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy'); "
                    "EXCEPTION WHEN duplicate_object THEN NULL; END $$")
        cur.execute(f"CREATE TABLE IF NOT EXISTS arrow_types (id integer PRIMARY KEY, "
                    f"{', '.join(f'{c} {t}' for c, t in TYPES.items())})")
        cur.execute("TRUNCATE arrow_types")
        for key, values in ROWS.items():
            values = [v for c, v in zip(COLUMNS, values) if c in TYPES]
            cur.execute(f"INSERT INTO arrow_types VALUES (%s, {', '.join(['%s'] * len(values))})", [key, *values])
        cur.execute("INSERT INTO arrow_types (id) VALUES (2)")
        cur.execute("INSERT INTO arrow_types (id, c_text, c_varchar) VALUES (4, '', E'line\\none, \"quoted\"')")
    for key in (1, 2, 3, 4):
        arrow, from_json = _arrow_and_json_rows(conn, "arrow_types", key)
        assert not isinstance(from_json, Exception), from_json
        assert arrow == from_json, key
    refused = []
    with conn.cursor() as cur:
        for pg_type, table in edge_tables(cur, "arrow_edges"):
            for key, v in enumerate(EDGES[pg_type] + ["NULL"], start=1):
                arrow, from_json = _arrow_and_json_rows(conn, table, key)
                if isinstance(from_json, Exception):
                    assert isinstance(arrow, ValueError), (pg_type, v, arrow)
                    refused.append((pg_type, v))
                else:
                    assert arrow == from_json, (pg_type, v, arrow, from_json)
    # numeric(12,2)'s NaN (DECIMAL has none); unconstrained or wider numerics are their text
    assert [r for r in refused if r[0].startswith("numeric")] == [("numeric(12,2)", "'NaN'")], refused
    conn.close()
