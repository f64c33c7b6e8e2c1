"""The snapshotter: resnapshot requests in, framed full-refresh batches out.

Each stream is read in one REPEATABLE READ, read-only transaction whose
``pg_current_snapshot()`` is the cut (schemas/snapshot.py); rows are encoded
exactly as Debezium encodes them (mallard/core/snapshot_encoding.py) and sent
keyed by stream, so a snapshot's begin, rows and end stay in order. The cut is
taken only once Debezium's replication slot exists: changes between the cut and
the slot would otherwise be lost.

Speed: rows are streamed with ``COPY ... (FORMAT csv)`` through a pipe into
Arrow's CSV parser (C++), which turns each block into a record batch of the
columns' transport types (mallard/core/arrow_rows.py: what the applier loads into
DuckDB, so the applier does no decoding at all); each batch is one Arrow IPC
message. (``rows_format=json``, and servers before 14: Postgres encodes each row
as the JSON array of its Debezium values, ``row_json_expression``, and the
snapshotter joins rows into batch messages framed by hand, never parsed.) A large
table is read by several connections at once, each on a disjoint ctid page range,
all in the coordinator's exported snapshot (``pg_export_snapshot``), so it is
still one cut. Memory is flat: COPY streams, and readers wait while the
producer's bounded queue is full. No lock beyond ACCESS SHARE is taken.

The control topic's offset is committed only after the snapshot's end has been
flushed to Kafka: a snapshotter killed mid-snapshot redoes the request on
restart (under a new snapshot_id; the applier never acts on a snapshot without
its end).
"""
from __future__ import annotations

import fcntl
import os
import threading
import time
import uuid
from datetime import datetime, timezone
from typing import Any

import orjson
import psycopg2
from confluent_kafka import KafkaException, TopicPartition

from mallard.adapters import postgres
from mallard.config.connector import load_connector_config_file
from mallard.core.arrow_rows import CsvPlan
from mallard.core import names
from mallard.core.cut import Cut
from mallard.core.filters import FilterError, check_filter
from mallard.core.snapshot_encoding import (PgColumn, connect_schema, encode, fix_marked, row_json_expression,
                                            select_expression)
from mallard.runtime.service import Service
from mallard.core.incremental import and_filters, incremental_filter, is_incremental_run
from mallard.core.sql import quote_ident
from mallard.core.replication import ReplicationConfig
from mallard.runtime.metrics import SNAPSHOT_BUCKETS, counter, gauge
from mallard.schemas.control import ResnapshotRequest, StateReset, control_message_adapter
from mallard.schemas.deadletter import DeadLetter
from mallard.schemas.snapshot import (SNAPSHOT_SCHEMA_VERSION, SnapshotBegin, SnapshotColumn, SnapshotCut, SnapshotEnd,
                              SnapshotFailed, SnapshotRowsHeader, ARROW_ROWS_CONTENT_TYPE, arrow_rows_message)
from mallard.services.snapshotter.config import SnapshotterSettings

# COPY's CSV form with quote and delimiter characters JSON text never holds raw: each
# row comes out as its JSON text and a newline, unescaped.
_COPY_OPTIONS = "WITH (FORMAT csv, QUOTE E'\\x01', DELIMITER E'\\x02')"


DEAD_LETTER_VALUE_AT_MOST = 100_000
"""Characters of a refused request kept in its dead letter: a dead letter must always be writable."""

_ARROW_HEADERS = [("content-type", ARROW_ROWS_CONTENT_TYPE.encode())]  # for kcat's %h; the applier needs none


class SnapshotError(RuntimeError):
    """A snapshot cannot be taken; the message says why and what to do."""


class KafkaFailure(RuntimeError):
    """Kafka did not take a snapshot: fatal, so the request is not committed and is redone."""


class SlotMissing(SnapshotError):
    """Debezium's slot does not exist yet: transient while the CDC side starts."""


class TableNotCaptured(SnapshotError):
    """A configured stream's table does not exist yet, or is not in the publication yet:
    its snapshot waits (a cut before Debezium captures the table would lose changes)."""


TABLE_CHECK_INTERVAL_S = 3.0
"""How often the tables of waiting snapshots are looked for."""


class SnapshotAborted(RuntimeError):
    """The service is stopping: the snapshot is left without its end (the request is redone)."""


class Refusal:
    """A control message, or some streams of a request, refused before anything ran."""

    def __init__(self, msg: Any, reason: str, request: ResnapshotRequest | None = None,
                 streams: list[str] | None = None):
        self.msg, self.reason, self.request, self.streams = msg, reason, request, streams or []


class _Batcher:
    """Numbers and frames rows into SnapshotRows messages and produces them, in
    numbering order, whichever reader thread hands them in."""

    def __init__(self, service: SnapshotterService, stream: str, snapshot_id: str, columns: list[PgColumn],
                 estimate: int, fix_numerics: bool):
        self.service, self.stream, self.snapshot_id, self.columns = service, stream, snapshot_id, columns
        self.estimate, self.fix_numerics = estimate, fix_numerics
        self.prefix = (b'{"schema_version":' + str(SNAPSHOT_SCHEMA_VERSION).encode() + b',"kind":"rows","snapshot_id":'
                       + orjson.dumps(snapshot_id) + b',"stream":' + orjson.dumps(stream) + b',"batch":')
        self.lock = threading.Lock()
        self.batches = self.rows = 0
        self.started = self.last_log = time.monotonic()

    def emit(self, rows: list[bytes]) -> None:
        body = b",".join(rows)  # each row is JSON text (a trailing newline is JSON whitespace)
        if self.fix_numerics:
            body = fix_marked(self.columns, b"[" + body + b"]")[1:-1]
        self._send(len(rows), lambda batch: b"".join((self.prefix, str(batch).encode(), b',"rows":[', body, b"]}")))

    def emit_arrow(self, rows: Any) -> None:
        """``rows``: a record batch of the snapshot's transport schema."""
        self._send(rows.num_rows, lambda batch: arrow_rows_message(
            SnapshotRowsHeader(snapshot_id=self.snapshot_id, stream=self.stream, batch=batch), rows), _ARROW_HEADERS)

    def _send(self, count: int, message: Any, headers: list[tuple[str, bytes]] | None = None) -> None:
        with self.lock:
            if self.service.stopping.is_set():
                raise SnapshotAborted(f"snapshot of {self.stream} interrupted: the service is stopping")
            self.batches += 1
            self.rows += count
            self.service._send(self.stream, message(self.batches), headers)
            if self.stream in self.service.progress:  # what /metrics shows, batch by batch
                self.service.progress[self.stream]["rows"] = self.rows
            now = time.monotonic()
            if now - self.last_log >= self.service.settings.progress_interval_s:
                self.last_log = now
                self.service._progress(self.stream, self.rows, self.estimate, self.started)


class _RowSink:
    """A file for COPY TO (one ``write`` per row) or for encoded rows: cuts batches."""

    def __init__(self, batcher: _Batcher, max_rows: int, max_bytes: int):
        self.batcher, self.max_rows, self.max_bytes = batcher, max_rows, max_bytes
        self.rows: list[bytes] = []
        self.size = 0

    def write(self, row: bytes) -> None:
        self.rows.append(row)
        self.size += len(row)
        if self.size >= self.max_bytes or len(self.rows) >= self.max_rows:
            self.flush()

    def flush(self) -> None:
        if self.rows:
            self.batcher.emit(self.rows)
            self.rows, self.size = [], 0


def _checked(where: str | None) -> str | None:
    """The filter that runs, as Postgres' parser reads it: one allowed expression, deparsed."""
    if where is None:
        return None
    try:
        return check_filter(where)
    except FilterError as e:
        raise SnapshotError(f"bad filter {where[:200]!r}: {e}") from None


def _reason(e: BaseException) -> str:
    """An exception as one line for a failure's answer (its type when it says nothing)."""
    text = " ".join(str(e).split())
    return text if isinstance(e, (SnapshotError, postgres.SourceError)) and text else (
        f"{type(e).__name__}: {text}" if text else type(e).__name__)


def _parts(batch: Any, max_rows: int, max_bytes: int) -> list[Any]:
    """A record batch cut into slices of at most ``max_rows`` rows and about ``max_bytes``."""
    n = batch.num_rows
    if not n:
        return []
    pieces = max(1, -(-n // max_rows), -(-batch.nbytes // max_bytes))
    step = -(-n // pieces)
    return [batch.slice(i, step) for i in range(0, n, step)]


class SnapshotterService(Service):
    name = "snapshotter"

    def __init__(self, settings: SnapshotterSettings, ports: Any = None):
        super().__init__(settings)
        if ports is None:
            from mallard.services.snapshotter.bootstrap import real_ports

            ports = real_ports(settings)
        self.ports = ports
        self.counts = {"snapshots": 0, "rows": 0, "failed": 0, "batches": 0}
        self.current: dict[str, Any] | None = None
        self.progress: dict[str, dict[str, int]] = {}
        """stream -> rows read and estimated of its running or last snapshot, running 1/0,
        and failed 1 when its last snapshot failed (it needs another)."""
        self.slot_name: str | None = None
        self.publication: str | None = None
        self.publications: list[str] = []
        self.waiting: dict[str, tuple[ResnapshotRequest, str]] = {}
        """stream -> (its request, why it waits): configured tables that do not exist yet or
        are not in the publication yet; snapshotted once they are (in memory: after a
        restart, the applier's first-snapshot requests bring them back)."""
        self._next_table_check = 0.0
        self.connector_name: str | None = None
        self.delivery_errors: list[str] = []
        self.config: ReplicationConfig | None = None
        self.streams: frozenset[str] | None = None
        """The streams requests may name: the replication config's, else the connector's
        table list; None: every table (the connector includes all)."""
        self.begun: str | None = None
        """The snapshot whose begin the request being served has published."""
        self.served: set[str] = set()
        """Scheduled request ids served by this process: a fire published twice is snapshotted once."""
        self.served_through: dict[tuple[str, int], int] = {}
        """(topic, partition) -> the last control message served and not committed yet: read
        again after a failed commit (the group dropped this process and took it back), skipped."""
        self.uncommitted = False
        """The last commit failed: it is tried again until it succeeds."""
        self._duration = self.metrics.histogram("mallard_snapshot_duration_seconds", "Time to read and publish one "
                                                "snapshot (cut to end message in Kafka).", SNAPSHOT_BUCKETS)
        self.metrics.on_scrape(self._metric_families)

    def state(self) -> dict[str, Any]:
        return {**super().state(), **self.counts, "current": self.current,
                "waiting": {stream: why for stream, (_, why) in sorted(self.waiting.items())}}

    def _metric_families(self) -> list[Any]:
        c, current = self.counts, self.current or {}
        return [
            counter("mallard_snapshots", "Snapshots published (done) or given up (failed).",
                    {("done",): c["snapshots"], ("failed",): c["failed"]}, ("result",)),
            counter("mallard_snapshot_rows", "Rows published in finished snapshots.", c["rows"]),
            counter("mallard_snapshot_batches", "Row batches published in finished snapshots.", c["batches"]),
            gauge("mallard_snapshot_rows_in_progress", "Rows read so far by the snapshot running now (0: none).",
                  current.get("rows", 0)),
            *self._progress_families(),
            *self._source_families(),
        ]

    def _progress_families(self) -> list[Any]:
        progress = sorted(self.progress.items())
        return [
            gauge("mallard_snapshot_progress_rows", "Rows read by each stream's running (or last) snapshot.",
                  {(stream,): p["rows"] for stream, p in progress}, ("stream",)),
            gauge("mallard_snapshot_estimated_rows", "Postgres' estimate of the rows of each stream's running (or last) "
                  "snapshot (reltuples, taken at the cut).", {(stream,): p["estimate"] for stream, p in progress},
                  ("stream",)),
            gauge("mallard_snapshot_running", "1 while a snapshot of the stream is being read and published.",
                  {(stream,): p["running"] for stream, p in progress}, ("stream",)),
            gauge("mallard_stream_snapshot_failed", "1 when the stream's last snapshot failed: it needs another "
                  "(mallard resnapshot STREAM once the cause is fixed).",
                  {(stream,): p["failed"] for stream, p in progress}, ("stream",)),
        ]

    def _source_families(self) -> list[Any]:
        """The slot and the connector, read now with short timeouts (source_watch)."""
        from mallard.services.snapshotter import source_watch

        s, families = self.settings, []
        if self.slot_name:
            families += source_watch.slot_families(
                self.slot_name, lambda: source_watch.read_slot(s.pg_params(), self.slot_name))
        if self.connector_name and s.connect_url:
            families += source_watch.connector_families(
                self.connector_name, lambda: source_watch.read_connector(s.connect_url, self.connector_name))
        return families

    def open(self) -> None:
        """Topics, the slot to check before a cut, and a producer with a bounded queue."""
        s = self.settings
        connector = load_connector_config_file(s.connector_config)
        self.slot_name, self.connector_name = connector.slot_name, connector.name
        self.publication = connector.publication_name
        # A table without a primary key is in the inserts-only one (mallard/core/keyless.py).
        self.publications = [p for p in (connector.publication_name, connector.inserts_publication) if p]
        if s.replication_config:
            from mallard.config.replication import load_config

            from mallard.config.replication import ConfigWatch

            self.config = load_config(s.replication_config)
            self.streams = frozenset(self.config.streams)
            self.config_watch = ConfigWatch(s.replication_config, self.config, self.log, s.config_reload_interval_s)
        else:
            self.streams = frozenset(connector.tables) or None
        self.producer = self.ports.snapshot_writer(self._delivered)

    def _delivered(self, err: Any, msg: Any) -> None:
        if err is not None:
            self.delivery_errors.append(str(err))

    def run(self) -> None:
        s = self.settings
        self.ports.prepare_topics(self.stopping)
        self.open()
        consumer = self.ports.control_source()
        consumer.subscribe([s.control_topic])
        self.log.info("snapshotter up: requests from %s, snapshots to %s", s.control_topic, s.snapshot_topic)
        self.ready = True
        try:
            while not self.stopping.is_set():
                self._take_config_change()
                if self.waiting and time.monotonic() >= self._next_table_check:
                    self._take_waiting()
                first = consumer.poll(0.5)  # returns with the first request (consume() waits out its timeout)
                if first is None:
                    if self.uncommitted:
                        self._commit(consumer)
                    continue
                messages = [m for m in [first, *consumer.consume(num_messages=100, timeout=0.05)]
                            if not m.error() and m.offset() > self.served_through.get((m.topic(), m.partition()), -1)]
                if not messages:
                    continue
                refused: list[Refusal] = []
                todo = self.coalesce(messages, refused)
                for refusal in refused:
                    self._refuse(refusal)
                for stream, request in todo:
                    if not self._serve(stream, request):
                        return
                # Only now, every snapshot's end (or failure) being in Kafka, are the requests done.
                for m in messages:
                    self.served_through[(m.topic(), m.partition())] = m.offset()
                self._commit(consumer)
        finally:
            self.ready = False
            consumer.close()

    def _commit(self, consumer: Any) -> None:
        """Commit the requests served. A commit fails when the group dropped this process
        (stalled past its session: a starved CPU, a stopped process); that is transient:
        the group takes it back, the requests read again are skipped, and the commit is
        tried again. Another snapshotter given them meanwhile serves them again: a
        snapshot more, never one fewer."""
        offsets = [TopicPartition(t, p, o + 1) for (t, p), o in self.served_through.items()]
        try:
            consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as e:
            if not self.uncommitted:
                self.log.warning("requests served, but their commit failed (tried again): %s", e.args[0])
            self.uncommitted = True
            return
        if self.uncommitted:
            self.log.info("requests served committed")
        self.uncommitted = False
        self.served_through.clear()

    def _serve(self, stream: str, request: ResnapshotRequest) -> bool:
        """Snapshot one stream for a request; False when the service is stopping."""
        try:
            self._snapshot_when_the_slot_exists(stream, request)
            if self.waiting.pop(stream, None) is not None:
                self.log.info("%s: its table is captured now; the waiting snapshot is taken", stream)
        except SnapshotAborted:
            return False  # stopping: nothing committed, the request is redone on restart
        except KafkaFailure:
            raise  # Kafka, not the request, failed: redone on restart
        except TableNotCaptured as e:
            held = self.waiting.get(stream)
            if held is None or held[1] != str(e):  # said once, and again when the reason changes
                self.log.warning("snapshot of %s waits: %s", stream, e,
                                 extra={"kind": "snapshot_waiting", "stream": stream, "request_id": request.request_id})
            # A whole-table request waiting is not replaced by a subset one.
            keep = held[0] if held is not None and held[0].where is None and request.where is not None else request
            self.waiting[stream] = (keep, str(e))
            self._next_table_check = time.monotonic() + TABLE_CHECK_INTERVAL_S
        except Exception as e:  # noqa: BLE001 - whatever went wrong, it fails this request only
            self._fail(stream, request, _reason(e))
        return True

    def _take_waiting(self) -> None:
        """Snapshot the waiting streams whose tables are captured now."""
        self._next_table_check = time.monotonic() + TABLE_CHECK_INTERVAL_S
        try:
            conn = self.ports.source()
        except Exception as e:  # noqa: BLE001 - Postgres away: looked for again later
            self.log.debug("waiting tables not looked for: %s", e)
            return
        try:
            ready = [stream for stream in self.waiting if self._not_captured(conn, stream) is None]
        finally:
            conn.close()
        for stream in ready:
            request, _ = self.waiting[stream]
            if not self._serve(stream, request):
                return

    def _not_captured(self, conn: Any, stream: str, publication: bool = True) -> str | None:
        """Why the table is not captured yet (None: it is): it does not exist, or it is not
        in the publication (a cut must come after Debezium receives its changes)."""
        if postgres.scalar(conn, "SELECT to_regclass(%s) IS NOT NULL", postgres.quote_stream(stream)) is not True:
            return f"table {stream} does not exist in Postgres"
        if publication and self.publication and not postgres.in_publication(conn, self.publications, stream):
            return (f"table {stream} is not in the publication {self.publication}: a cut taken now would lose "
                    "the changes made before Debezium captures it")
        return None

    def _snapshot_when_the_slot_exists(self, stream: str, request: ResnapshotRequest) -> None:
        """A missing slot is transient while Debezium starts (Kafka Connect registers the
        connector after the services are up): wait for it, with backoff, up to
        ``slot_wait_s``; then the request fails, saying why."""
        delay, waited = 1.0, 0.0
        while True:
            try:
                self.snapshot(stream, request)
                return
            except SlotMissing as e:
                if waited >= self.settings.slot_wait_s or self.stopping.is_set():
                    raise
                if waited == 0:
                    self.log.warning("%s; waiting up to %.0fs for it", e, self.settings.slot_wait_s)
                self.stopping.wait(delay)
                waited += delay
                delay = min(delay * 2, 15.0)

    def coalesce(self, messages: list[Any], refused: list[Refusal] | None = None) -> list[tuple[str, ResnapshotRequest]]:
        """One snapshot per stream (and subset) for requests waiting together; a full
        snapshot of a stream covers the subsets asked for it. Requests come from Kafka:
        untrusted. A malformed one, a filter that is not one allowed expression, or a
        stream that is not replicated is refused (appended to ``refused``), before
        anything runs."""
        todo: dict[tuple[str, str | None], ResnapshotRequest] = {}
        refused = refused if refused is not None else []
        for msg in messages:
            try:
                request = control_message_adapter.validate_json(msg.value() or b"")
            except ValueError as e:
                refused.append(Refusal(msg, f"malformed control message: {str(e).splitlines()[0]}"))
                continue
            if isinstance(request, ResnapshotRequest):
                request, refusal = self._checked(msg, request)
                if refusal is not None:
                    refused.append(refusal)
                if request is None:
                    continue
            if isinstance(request, StateReset):
                self.log.info("state reset %s of %s to %s (%s)", request.reset_id, ", ".join(request.streams),
                              request.to_value if request.to_value is not None else "nothing (read every row)",
                              request.requested_by)
                continue
            if request.requested_by.startswith("scheduler:"):
                if request.request_id in self.served:
                    self.log.info("request %s already served: ignored", request.request_id)
                    continue
                self.served.add(request.request_id)
            for stream in request.streams:
                if (stream, None) in todo:
                    if request.full and not todo[(stream, None)].full:
                        todo[(stream, None)] = request  # a forced full refresh wins over an incremental run
                    continue
                if request.where is None:
                    for k in [k for k in todo if k[0] == stream]:
                        del todo[k]
                todo.setdefault((stream, request.where), request)
        return [(stream, request) for (stream, _), request in todo.items()]

    def _checked(self, msg: Any, request: ResnapshotRequest) -> tuple[ResnapshotRequest | None, Refusal | None]:
        """(the request with its filter as checked and only the streams it may name, or None;
        what of it is refused, or None)."""
        if request.where is not None:
            try:
                where = check_filter(request.where)
            except FilterError as e:
                return None, Refusal(msg, f"bad filter {request.where[:200]!r}: {e}", request, request.streams)
            request = request.model_copy(update={"where": where})
        # Names from Kafka: read as Postgres reads them, and spelled one way from here on.
        bad = [x for x in request.streams if not names.is_stream(x)]
        spelled = [names.canonical(x) for x in request.streams if x not in bad]
        unknown = [x for x in spelled if self.streams is not None and x not in self.streams]
        if unknown and self._take_config_change(force=True):  # a stream just added: the applier may know first
            unknown = [x for x in spelled if self.streams is not None and x not in self.streams]
        if not bad and not unknown:
            return (request if spelled == request.streams else request.model_copy(update={"streams": spelled})), None
        why = []
        if bad:
            why.append("bad stream name(s) " + ", ".join(repr(x[:200]) for x in bad[:10]) + " (expected '<schema>.<table>')")
        if unknown:
            why.append("stream(s) not replicated " + ", ".join(repr(x) for x in unknown[:10]) + " (replicated: "
                       + ", ".join(sorted(self.streams or ())) + ")")
        refusal = Refusal(msg, "; ".join(why), request, unknown)
        rest = [x for x in spelled if x not in unknown]
        return (request.model_copy(update={"streams": rest}) if rest else None), refusal

    def _take_config_change(self, force: bool = False) -> bool:
        """The replication config file changed (``mallard config apply``): requests may name
        the streams added, not those removed (a removed stream's waiting snapshot is dropped);
        a stream's mode, filter and update_key are read per request, so they apply from the
        next snapshot. True when a new config was taken."""
        if self.config_watch is None:
            return False
        change = self.config_watch.check(time.monotonic(), force=force)
        if change is None or change[1] is None:
            return False
        self.config = change[0]
        self.streams = frozenset(self.config.streams)
        for stream in change[1].removed:
            if self.waiting.pop(stream, None) is not None:
                self.log.info("%s is no longer in the replication config: its waiting snapshot is dropped", stream)
        return True

    def _refuse(self, refusal: Refusal) -> None:
        """Dead-letter the message with its reason, and answer each stream it named that
        can be answered (so that whoever waits for it learns why at once)."""
        msg = refusal.msg
        self.counts["failed"] += 1
        self.log.error("refused the control message at %s[%d]@%d: %s", msg.topic(), msg.partition(), msg.offset(),
                       refusal.reason, extra={"kind": "request_refused", "reason": refusal.reason,
                                              "request_id": refusal.request.request_id if refusal.request else None})
        key, value = msg.key() if hasattr(msg, "key") else None, msg.value() or b""
        try:
            text, encoding = value.decode(), "utf-8"
        except UnicodeDecodeError:
            import base64

            text, encoding = base64.b64encode(value).decode(), "base64"
        letter = DeadLetter(error=refusal.reason, service=self.name, source_topic=msg.topic(),
                            source_partition=msg.partition(), source_offset=msg.offset(),
                            key=key.decode(errors="replace") if key else None,
                            value=text[:DEAD_LETTER_VALUE_AT_MOST], encoding=encoding,
                            failed_at=datetime.now(timezone.utc))
        self.producer.produce(self.settings.dead_letter_topic, key=key, value=letter.model_dump_json().encode())
        for stream in refusal.streams:
            if names.is_stream(stream):
                self._answer_failure(names.canonical(stream), refusal.request, refusal.reason, None)
        self._flush("a refusal's dead letter and answers")

    def _fail(self, stream: str, request: ResnapshotRequest, reason: str) -> None:
        self.counts["failed"] += 1
        self.progress.setdefault(stream, {"rows": 0, "estimate": 0, "running": 0})["failed"] = 1
        self.log.error("snapshot of %s (request %s) failed: %s", stream, request.request_id, reason,
                       extra={"kind": "snapshot_failed", "stream": stream, "request_id": request.request_id,
                              "snapshot_id": self.begun, "reason": reason})
        self._answer_failure(stream, request, reason, self.begun)
        self._flush(f"the failure of snapshot {self.begun}" if self.begun else "a failure's answer")

    def _answer_failure(self, stream: str, request: ResnapshotRequest, reason: str, snapshot_id: str | None) -> None:
        failed = SnapshotFailed(stream=stream, request_id=request.request_id, snapshot_id=snapshot_id,
                                where=request.where, reason=reason[:2000], failed_at=datetime.now(timezone.utc))
        self.producer.produce(self.settings.snapshot_topic, key=stream.encode(), value=failed.model_dump_json().encode())

    def snapshot(self, stream: str, request: ResnapshotRequest) -> SnapshotEnd:
        s = self.settings
        if not names.is_stream(stream):
            raise SnapshotError(f"bad stream name {stream!r}: {names.HOW}")
        stream = names.canonical(stream)
        self.begun = None
        snapshot_id = f"{stream}@{datetime.now(timezone.utc):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"
        table = postgres.quote_stream(stream)
        conn = self.ports.source()
        try:
            if not postgres.slot_exists(conn, self.slot_name):
                raise SlotMissing(f"replication slot {self.slot_name!r} does not exist: a cut taken now would lose "
                                    "the changes made before the slot exists; start the CDC publisher first")
            # A configured table may appear (or join the publication) later: its snapshot
            # waits for it. Another (every table is captured) that does not exist fails now,
            # as a typo should.
            configured = self.streams is not None and stream in self.streams
            why = self._not_captured(conn, stream, publication=configured)
            if why is not None:
                raise TableNotCaptured(why + "; its snapshot waits for it") if configured else SnapshotError(why)
            where, incremental, update_key, state_value = self._run_filter(stream, request)
            if where is not None and not postgres.primary_key(conn, stream):
                raise SnapshotError(f"table {stream} has no primary key: a subset (--where) cannot be snapshotted, "
                                    "the applier replaces such a table whole; ask for a full snapshot")
            use_sql = s.sql_encoding and conn.server_version >= 140000
            # From here on nothing runs outside one READ ONLY transaction: not the filter's
            # check, not the read (the slot check above stays before it: the cut comes after).
            conn.autocommit = False
            conn.set_session(isolation_level="REPEATABLE READ", readonly=True)
            with conn.cursor() as cur:  # the first statement fixes the transaction's snapshot: the cut
                cur.execute("SELECT pg_current_snapshot()::text, c.reltuples::bigint, "
                            "pg_relation_size(c.oid) / current_setting('block_size')::bigint "
                            "FROM pg_class c WHERE c.oid = %s::regclass", (table,))
                cut_text, reltuples, pages = cur.fetchone()
            cut = Cut.parse(cut_text)
            if where is not None:
                try:
                    with conn.cursor() as cur:
                        cur.execute(f"EXPLAIN SELECT 1 FROM {table} WHERE ({where})")
                except psycopg2.Error as e:
                    raise SnapshotError(f"bad filter for {stream} ({where!r}): "
                                        f"{(e.pgerror or str(e)).strip()}") from None
            columns = postgres.table_columns(conn, stream)
            plan = CsvPlan.of(columns) if use_sql and s.rows_format == "arrow" else None
            key = postgres.primary_key(conn, stream)
            estimate = reltuples if reltuples >= 0 else pages * 50  # never analyzed: a guess from its size
            readers = s.parallel_readers if estimate >= s.parallel_min_rows and pages >= 2 * s.parallel_readers else 1
            exported = postgres.scalar(conn, "SELECT pg_export_snapshot()") if readers > 1 else None
            begin = SnapshotBegin(
                snapshot_id=snapshot_id, stream=stream, request_id=request.request_id, where=where,
                incremental=incremental, rows_format="arrow" if plan else "json",
                cut=SnapshotCut(xmin=cut.xmin, xmax=cut.xmax, xip=sorted(cut.xip)),
                columns=[SnapshotColumn(name=c.name, pg_type=c.type_name,
                                        primary_key_position=key.index(c.name) + 1 if c.name in key else None,
                                        connect_schema=connect_schema(c)) for c in columns],
                started_at=datetime.now(timezone.utc), requested_at=request.requested_at)
            self._send(stream, begin.model_dump_json().encode())
            self.begun = snapshot_id
            self.current = {"stream": stream, "snapshot_id": snapshot_id, "rows": 0, "estimate": estimate,
                            "readers": readers}
            self.progress[stream] = {"rows": 0, "estimate": max(estimate, 0), "running": 1,
                                     "failed": self.progress.get(stream, {}).get("failed", 0)}
            fix = use_sql and any(c.type_name == "numeric" and (c.numeric_precision or (99, 0))[0] > 18
                                  for c in columns)
            batcher = _Batcher(self, stream, snapshot_id, columns, max(estimate, 0), fix)
            bounds = [None] + [pages * i // readers for i in range(1, readers)] + [None]
            ranges = list(zip(bounds, bounds[1:]))
            self.log.info("snapshot %s of %s: cut %s %.2fs after the request, ~%d rows, %d reader(s), %s%s",
                          snapshot_id, stream, cut_text,
                          (datetime.now(timezone.utc) - request.requested_at).total_seconds(), estimate, readers,
                          "Arrow rows (COPY CSV)" if plan else "JSON rows encoded by " + ("SQL" if use_sql else "Python"),
                          f", incremental after {state_value!r}" if incremental else "")
            if readers == 1:
                self._read(conn, table, columns, where, ranges[0], use_sql, plan, batcher)
            else:
                self._read_parallel(exported, table, columns, where, ranges, use_sql, plan, batcher)
            max_update_key = None
            if update_key is not None:  # the stream's state after this run, read in the same snapshot (the cut)
                max_update_key = postgres.scalar(
                    conn, f"SELECT max({quote_ident(update_key)})::text FROM {table}" + (f" WHERE ({where})" if where else ""))
                if max_update_key is None:
                    max_update_key = state_value  # no row read: the state stays where it was
            end = SnapshotEnd(snapshot_id=snapshot_id, stream=stream, batches=batcher.batches,
                              row_count=batcher.rows, finished_at=datetime.now(timezone.utc),
                              max_update_key=max_update_key, update_key=update_key)
            self._send(stream, end.model_dump_json().encode())
            self._flush(f"snapshot {snapshot_id}")
            conn.rollback()
        finally:
            conn.close()
            self.current = None
            if stream in self.progress:
                self.progress[stream]["running"] = 0
        self.progress[stream].update(rows=end.row_count, failed=0)
        elapsed = time.monotonic() - batcher.started
        rate = end.row_count / elapsed if elapsed else 0
        self.log.info("snapshot %s of %s done: %d rows in %d batches, %.1fs (%.0f rows/s)", snapshot_id, stream,
                      end.row_count, end.batches, elapsed, rate,
                      extra={"kind": "snapshot_done", "stream": stream, "snapshot_id": snapshot_id,
                             "rows": end.row_count, "batches": end.batches, "elapsed_ms": round(elapsed * 1000),
                             "rate": round(rate)})
        self.counts["snapshots"] += 1
        self.counts["rows"] += end.row_count
        self.counts["batches"] += end.batches
        self._duration.observe(elapsed)
        return end

    def _run_filter(self, stream: str, request: ResnapshotRequest) -> tuple[str | None, bool, str | None, str | None]:
        """(filter, incremental, update_key to record the state of, state the run starts from).

        The stream's configured ``where`` always applies (a request's --where narrows it);
        an incremental run adds ``update_key > <state>``, the state being recovered from
        Kafka (the last snapshot end of the stream, or a newer reset). A subset (--where)
        records no state: it does not say where the whole stream is."""
        cfg = self.config.stream(stream) if self.config else None
        if cfg is None:
            return _checked(request.where), False, None, None
        where = and_filters(cfg.where, request.where)
        update_key = cfg.update_key if cfg.incremental and request.where is None else None
        if not is_incremental_run(cfg.mode, request.full, request.where, request.requested_by):
            return _checked(where), False, update_key, None
        from mallard.ops.state import read_states

        s = self.settings
        state = read_states(s.kafka_bootstrap_servers, s.snapshot_topic, s.control_topic).get(stream)
        value = state.value if state is not None and state.update_key in (None, cfg.update_key) else None
        # The state came from Kafka: it is a quoted literal, and the whole filter is checked again.
        return _checked(and_filters(where, incremental_filter(cfg.update_key, value))), True, cfg.update_key, value

    def _query(self, table: str, select: str, where: str | None, pages: tuple[int | None, int | None]) -> str:
        conditions = []
        if pages[0] is not None:
            conditions.append(f"ctid >= '({pages[0]},0)'::tid")
        if pages[1] is not None:
            conditions.append(f"ctid < '({pages[1]},0)'::tid")
        if where:
            conditions.append(f"({where})")
        return f"SELECT {select} FROM {table}" + (f" WHERE {' AND '.join(conditions)}" if conditions else "")

    def _read(self, conn: Any, table: str, columns: list[PgColumn], where: str | None,
              pages: tuple[int | None, int | None], use_sql: bool, plan: CsvPlan | None, batcher: _Batcher) -> None:
        s = self.settings
        if plan is not None:
            self._read_arrow(conn, self._query(table, plan.select_list, where, pages), plan, batcher)
            return
        sink = _RowSink(batcher, s.batch_rows, s.batch_bytes)
        select = row_json_expression(columns) if use_sql else ", ".join(select_expression(c) for c in columns)
        query = self._query(table, select, where, pages)
        if use_sql:
            with conn.cursor() as cur:  # COPY streams: memory stays flat
                cur.copy_expert(f"COPY ({query}) TO STDOUT {_COPY_OPTIONS}", sink)
        else:
            dumps = orjson.dumps
            with conn.cursor(name=f"snapshot_{uuid.uuid4().hex[:8]}") as cur:  # server-side: memory stays flat
                cur.itersize = s.batch_rows
                cur.execute(query)
                for record in cur:
                    sink.write(dumps([encode(c, v) for c, v in zip(columns, record)]))
        sink.flush()

    def _read_arrow(self, conn: Any, query: str, plan: CsvPlan, batcher: _Batcher) -> None:
        """COPY writes CSV into a pipe (a thread of its own) that Arrow's CSV reader parses
        block by block: memory stays flat, and the parsing runs outside the GIL."""
        s = self.settings
        with conn.cursor() as cur:
            cur.execute(plan.SESSION)
        read_fd, write_fd = os.pipe()
        try:
            fcntl.fcntl(write_fd, fcntl.F_SETPIPE_SZ, 1 << 20)  # fewer wake-ups of both sides
        except OSError:
            pass  # above the system's pipe-max-size: the default works, a little slower
        block = max(s.batch_bytes // 2, 1024)
        failed: list[BaseException] = []

        def copy() -> None:
            try:
                with open(write_fd, "wb", buffering=1 << 20) as out, conn.cursor() as cur:
                    cur.copy_expert(plan.copy(query), out)
            except BaseException as e:  # noqa: BLE001 - handed to the reader
                failed.append(e)

        copier = threading.Thread(target=copy, name="snapshot-copy", daemon=True)
        copier.start()
        try:
            # Buffered: a read returns a whole block (a pipe's raw read returns what is there,
            # and Arrow makes a record batch of every read).
            with open(read_fd, "rb", buffering=block) as source:
                for batch in plan.batches(source, block):
                    for part in _parts(batch, s.batch_rows, s.batch_bytes):
                        batcher.emit_arrow(part)
        except BaseException:
            conn.cancel()  # stop the COPY (the pipe is closed: its next write fails too)
            raise
        finally:
            copier.join()
        if failed:
            raise failed[0]

    def _read_parallel(self, exported: str, table: str, columns: list[PgColumn], where: str | None,
                       ranges: list[tuple[int | None, int | None]], use_sql: bool, plan: CsvPlan | None,
                       batcher: _Batcher) -> None:
        """One connection per page range, each in the coordinator's exported snapshot."""
        conns = []
        try:
            for _ in ranges:
                c = self.ports.source()
                c.autocommit = False
                c.set_session(isolation_level="REPEATABLE READ", readonly=True)
                with c.cursor() as cur:
                    cur.execute("SET TRANSACTION SNAPSHOT %s", (exported,))
                conns.append(c)
            errors: list[BaseException] = []

            def work(c: Any, pages: tuple[int | None, int | None]) -> None:
                try:
                    self._read(c, table, columns, where, pages, use_sql, plan, batcher)
                except BaseException as e:  # noqa: BLE001 - handed to the coordinator
                    if not errors:
                        errors.append(e)
                    for other in conns:  # the snapshot has failed: stop the other readers' queries
                        if other is not c:
                            try:
                                other.cancel()
                            except psycopg2.Error:
                                pass

            threads = [threading.Thread(target=work, args=(c, r), name=f"snapshot-reader-{i}", daemon=True)
                       for i, (c, r) in enumerate(zip(conns, ranges))]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            if errors:
                raise errors[0]
        finally:
            for c in conns:
                c.close()

    def _send(self, stream: str, value: bytes, headers: list[tuple[str, bytes]] | None = None) -> None:
        while True:
            try:
                self.producer.produce(self.settings.snapshot_topic, key=stream.encode(), value=value, headers=headers)
                return
            except BufferError:  # the bounded queue is full: wait for Kafka to take some
                self.producer.poll(0.05)
                if self.delivery_errors:
                    raise KafkaFailure(f"Kafka refused snapshot messages: {self.delivery_errors[0]}")

    def _flush(self, what: str) -> None:
        if self.producer.flush(60) != 0:
            raise KafkaFailure(f"Kafka did not take {what} in 60s")
        if self.delivery_errors:
            raise KafkaFailure(f"Kafka refused messages of {what}: {self.delivery_errors[0]}")

    def _progress(self, stream: str, rows: int, estimate: int, started: float) -> None:
        elapsed = time.monotonic() - started
        rate = rows / elapsed if elapsed else 0.0
        eta = f", ~{(estimate - rows) / rate:.0f}s left" if rate and estimate > rows else ""
        self.current = {**(self.current or {}), "rows": rows}
        self.log.info("snapshot %s: %d rows (%.0f rows/s%s)", stream, rows, rate, eta,
                      extra={"kind": "snapshot_progress", "stream": stream,
                             "snapshot_id": self.current.get("snapshot_id"), "rows": rows, "rate": round(rate),
                             "estimate": estimate,
                             "eta_s": round((estimate - rows) / rate) if rate and estimate > rows else None})
