"""The snapshot path and the CDC path give the applier the very same values, for every
type the applier supports: rows read from Postgres and encoded by the snapshot
encoder are compared with what real Debezium sent for the same rows."""
from __future__ import annotations

import json
import time

import psycopg2
import pytest
from confluent_kafka import Consumer, TopicPartition

from mallard.adapters.postgres import table_columns
from mallard.core.changes import Decoder
from mallard.core.pgtypes import column_type
from mallard.core.snapshot_encoding import connect_schema, encode, select_expression
from tests.integration.test_applier_types import COLUMNS, ROWS

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
            from_snapshot = snap_type.decode(encode(col, snapshot[key][i])) if snapshot[key][i] is not None else None
            from_cdc = cdc[key].row[i]
            if isinstance(from_cdc, float) and from_cdc != from_cdc:  # NaN
                assert isinstance(from_snapshot, float) and from_snapshot != from_snapshot
                continue
            if col.type_name == "float4" and from_cdc is not None:  # both become binary32 in DuckDB
                import struct
                from_cdc, from_snapshot = (struct.unpack("f", struct.pack("f", v))[0] for v in (from_cdc, from_snapshot))
            if col.type_name in ("json", "jsonb") and from_cdc is not None:
                assert json.loads(from_snapshot) == json.loads(from_cdc), (col.name, key)
                continue
            assert from_snapshot == from_cdc, (col.name, key, from_snapshot, from_cdc)
