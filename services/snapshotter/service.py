"""The snapshotter: resnapshot requests in, framed full-refresh batches out.

Each stream is read in one REPEATABLE READ, read-only transaction whose
``pg_current_snapshot()`` is the cut (schemas/snapshot.py); rows are encoded
exactly as Debezium encodes them (mallard/core/snapshot_encoding.py) and sent
keyed by stream, so a snapshot's begin, rows and end stay in order. The cut is
taken only once Debezium's replication slot exists: changes between the cut and
the slot would otherwise be lost.
"""
from __future__ import annotations

import time
import uuid
from datetime import datetime, timezone
from typing import Any

import orjson
import psycopg2

from mallard.adapters import kafka, postgres
from mallard.connector import load_connector_config_file
from mallard.core.cut import Cut
from mallard.core.snapshot_encoding import connect_schema, encode, select_expression
from mallard.service import Service
from schemas.control import ResnapshotRequest
from schemas.snapshot import SnapshotBegin, SnapshotColumn, SnapshotCut, SnapshotEnd, SnapshotRows
from services.snapshotter.config import SnapshotterSettings


class SnapshotError(RuntimeError):
    """A snapshot cannot be taken; the message says why and what to do."""


class SnapshotterService(Service):
    name = "snapshotter"

    def __init__(self, settings: SnapshotterSettings):
        super().__init__(settings)
        self.counts = {"snapshots": 0, "rows": 0, "failed": 0}
        self.current: dict[str, Any] | None = None

    def state(self) -> dict[str, Any]:
        return {**super().state(), **self.counts, "current": self.current}

    def run(self) -> None:
        s = self.settings
        kafka.wait_for_broker(s.kafka_bootstrap_servers, timeout=120, stop=self.stopping)
        kafka.ensure_topics(s.kafka_bootstrap_servers, {s.control_topic: 1, s.snapshot_topic: 1})
        self.slot_name = load_connector_config_file(s.connector_config).slot_name
        self.producer = kafka.producer(s.kafka_bootstrap_servers, **{"linger.ms": 50, "compression.type": "none"})
        consumer = kafka.consumer(s.kafka_bootstrap_servers, s.consumer_group, **{
            "session.timeout.ms": 6000, "queued.max.messages.kbytes": 1024})
        consumer.subscribe([s.control_topic])
        self.log.info("snapshotter up: requests from %s, snapshots to %s", s.control_topic, s.snapshot_topic)
        self.ready = True
        try:
            while not self.stopping.is_set():
                messages = [m for m in consumer.consume(num_messages=100, timeout=0.5) if not m.error()]
                if not messages:
                    continue
                # One snapshot per stream at a time: requests waiting together are coalesced.
                todo: dict[str, ResnapshotRequest] = {}
                for msg in messages:
                    try:
                        request = ResnapshotRequest.model_validate_json(msg.value() or b"")
                    except ValueError as e:
                        self.log.error("ignored a malformed request at %s[%d]@%d: %s", msg.topic(), msg.partition(),
                                       msg.offset(), str(e).splitlines()[0])
                        continue
                    for stream in request.streams:
                        todo.setdefault(stream, request)
                for stream, request in todo.items():
                    try:
                        self.snapshot(stream, request)
                    except (SnapshotError, postgres.SourceError, psycopg2.Error) as e:
                        self.counts["failed"] += 1
                        self.log.error("snapshot of %s (request %s) failed: %s", stream, request.request_id,
                                       str(e).strip())
                consumer.commit(asynchronous=False)
        finally:
            self.ready = False
            consumer.close()

    def snapshot(self, stream: str, request: ResnapshotRequest) -> SnapshotEnd:
        s = self.settings
        snapshot_id = f"{stream}@{datetime.now(timezone.utc):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"
        conn = postgres.connect(s)
        try:
            if not postgres.slot_exists(conn, self.slot_name):
                raise SnapshotError(f"replication slot {self.slot_name!r} does not exist: a cut taken now would lose "
                                    "the changes made before the slot exists; start the CDC publisher first")
            conn.autocommit = False
            conn.set_session(isolation_level="REPEATABLE READ", readonly=True)
            with conn.cursor() as cur:  # the first statement fixes the transaction's snapshot: the cut
                cur.execute("SELECT pg_current_snapshot()::text, "
                            "(SELECT reltuples::bigint FROM pg_class WHERE oid = %s::regclass)",
                            (postgres.quote_stream(stream),))
                cut_text, estimate = cur.fetchone()
            cut = Cut.parse(cut_text)
            columns = postgres.table_columns(conn, stream)
            key = postgres.primary_key(conn, stream)
            begin = SnapshotBegin(
                snapshot_id=snapshot_id, stream=stream, request_id=request.request_id, where=request.where,
                cut=SnapshotCut(xmin=cut.xmin, xmax=cut.xmax, xip=sorted(cut.xip)),
                columns=[SnapshotColumn(name=c.name, pg_type=c.type_name,
                                        primary_key_position=key.index(c.name) + 1 if c.name in key else None,
                                        connect_schema=connect_schema(c)) for c in columns],
                started_at=datetime.now(timezone.utc))
            self._send(stream, begin.model_dump_json().encode())
            self.current = {"stream": stream, "snapshot_id": snapshot_id, "rows": 0, "estimate": estimate}
            end = self._stream_rows(conn, stream, snapshot_id, columns, request.where, max(estimate or 0, 0))
            conn.rollback()
        finally:
            conn.close()
            self.current = None
        self.counts["snapshots"] += 1
        self.counts["rows"] += end.row_count
        return end

    def _stream_rows(self, conn: Any, stream: str, snapshot_id: str, columns: list, where: str | None,
                     estimate: int) -> SnapshotEnd:
        s = self.settings
        query = f"SELECT {', '.join(select_expression(c) for c in columns)} FROM {postgres.quote_stream(stream)}"
        if where:
            query += f" WHERE {where}"
        started = time.monotonic()
        batch, size, batches, rows = [], 0, 0, 0
        with conn.cursor(name=f"snapshot_{uuid.uuid4().hex[:8]}") as cur:  # server-side: memory stays flat
            cur.itersize = s.batch_rows
            cur.execute(query)
            for record in cur:
                encoded = [encode(c, v) for c, v in zip(columns, record)]
                batch.append(encoded)
                size += len(orjson.dumps(encoded))
                if len(batch) >= s.batch_rows or size >= s.batch_bytes:
                    batches += 1
                    rows += len(batch)
                    self._send(stream, SnapshotRows(snapshot_id=snapshot_id, stream=stream, batch=batches,
                                                    rows=batch).model_dump_json().encode())
                    self._progress(stream, rows, estimate, started)
                    batch, size = [], 0
        if batch:
            batches += 1
            rows += len(batch)
            self._send(stream, SnapshotRows(snapshot_id=snapshot_id, stream=stream, batch=batches,
                                            rows=batch).model_dump_json().encode())
        end = SnapshotEnd(snapshot_id=snapshot_id, stream=stream, batches=batches, row_count=rows,
                          finished_at=datetime.now(timezone.utc))
        self._send(stream, end.model_dump_json().encode())
        if self.producer.flush(60) != 0:
            raise SnapshotError(f"Kafka did not take snapshot {snapshot_id} in 60s")
        elapsed = time.monotonic() - started
        self.log.info("snapshot %s of %s done: %d rows in %d batches, %.1fs (%.0f rows/s)",
                      snapshot_id, stream, rows, batches, elapsed, rows / elapsed if elapsed else 0)
        return end

    def _send(self, stream: str, value: bytes) -> None:
        while True:
            try:
                self.producer.produce(self.settings.snapshot_topic, key=stream.encode(), value=value)
                return
            except BufferError:
                self.producer.poll(0.1)

    def _progress(self, stream: str, rows: int, estimate: int, started: float) -> None:
        elapsed = time.monotonic() - started
        rate = rows / elapsed if elapsed else 0.0
        eta = f", ~{(estimate - rows) / rate:.0f}s left" if rate and estimate > rows else ""
        self.current = {**(self.current or {}), "rows": rows}
        self.log.info("snapshot %s: %d rows (%.0f rows/s%s)", stream, rows, rate, eta)
