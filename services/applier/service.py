"""The applier: Debezium topics -> whole Postgres transactions -> DuckDB.

Loop: fetch a batch of messages, decode them (poison -> dead-letter topic), hold
them until their transactions are complete, reduce complete transactions to one
state per key, apply them in one DuckDB transaction, then commit Kafka offsets
up to what is applied. A crash anywhere replays from the committed offsets;
transactions DuckDB already has are recognised by their commit LSN and skipped.

Snapshots (the snapshot topic) are staged in DuckDB as their batches arrive and
merged into the table with the cut rule when their end arrives; the snapshot
topic's offsets are committed only past merged snapshots.
"""
from __future__ import annotations

import base64
import gc
import re
import queue
import sys
import threading
import time
import uuid
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition

from mallard.adapters import kafka
from mallard.adapters.duckdb_replica import ApplyStats, DuckDBReplica, PreparedBatch
from mallard.core.arrow_rows import snapshot_table, transport_schema
from mallard.config.connector import load_connector_config_file
from mallard.core.changes import Decoder, PoisonMessage, split_envelope
from mallard.core.connector import cdc_topic_pattern, transaction_topic
from mallard.core.cut import Cut
from mallard.core.data_loss import detect
from mallard.core.merge import reduce
from mallard.core.snapshots import SnapshotFrame, SnapshotTracker, SnapshotWork, decode_columns, frame_schema
from mallard.core.transactions import Refusal, TransactionAssembler
from mallard.runtime.metrics import BATCH_BUCKETS, DELAY_BUCKETS, counter, gauge
from mallard.runtime.service import Service
from mallard.schemas.control import ResnapshotRequest
from mallard.schemas.deadletter import DeadLetter
from mallard.schemas.snapshot import (SnapshotBegin, SnapshotEnd, SnapshotFailed, is_arrow_rows, read_arrow_rows,
                              snapshot_message_adapter)
from mallard.services.applier.config import ApplierSettings
from mallard.services.applier.data_loss import DataLossWatch


GC_INTERVAL_S = 300
COMMIT_INTERVAL_S = 0.5
GIL_SWITCH_INTERVAL_S = 0.1
"""How long a thread waiting for the GIL waits before it forces a switch (Python's default:
5 ms). DuckDB's Python client takes the GIL after every task of a query; with a backlog,
the decoding thread holds the GIL, and each forced switch costs it a handoff between
threads on a busy machine. Measured with the apply bench (1M events): 48,500 events/s at
5 ms, 51,600 at 20 ms, 55,400 at 100 ms; 1 ms and less were slower still. Without a
backlog the decoding thread mostly waits for Kafka, with the GIL released."""


def _text(raw: bytes | None) -> tuple[str | None, bool]:
    if raw is None:
        return None, True
    try:
        return raw.decode("utf-8"), True
    except UnicodeDecodeError:
        return base64.b64encode(raw).decode(), False


def _tx_of_poison(raw: bytes) -> tuple[int, int] | None:
    """(txId, total_order) of an undecodable change event, if it can be read at all,
    so its transaction still completes (without it)."""
    try:
        payload = orjson.loads(split_envelope(raw)[1])
        if "payload" in payload and "schema" in payload:
            payload = payload["payload"]
        return int(payload["source"]["txId"]), int(payload["transaction"]["total_order"])
    except Exception:  # noqa: BLE001 - garbage is garbage
        return None


SOURCE_RETRY_S = 30.0
"""After the source did not answer, how long the window of what Debezium reported bounds
commit LSNs before the source is asked again."""
WAL_POSITION = ("SELECT (CASE WHEN pg_is_in_recovery() THEN pg_last_wal_receive_lsn() ELSE pg_current_wal_lsn() END)"
                " - '0/0'::pg_lsn")


class SourcePosition:
    """The source's current WAL position (the assembler's ``source_lsn`` port): a commit LSN
    beyond it cannot be real. One connection, kept; when the source does not answer, None
    (said once) and no new try for SOURCE_RETRY_S."""

    def __init__(self, settings: ApplierSettings, log: Any):
        self.settings, self.log = settings, log
        self._conn: Any = None
        self._retry_at = 0.0
        self._failing = False

    def __call__(self) -> int | None:
        if self._conn is None and time.monotonic() < self._retry_at:
            return None
        try:
            from mallard.adapters import postgres

            if self._conn is None:
                self._conn = postgres.connect(**self.settings.pg_params(), timeout=3)
            lsn = int(postgres.scalar(self._conn, WAL_POSITION))
        except Exception as e:  # noqa: BLE001 - transient: the window bounds meanwhile
            self.close()
            self._retry_at = time.monotonic() + SOURCE_RETRY_S
            if not self._failing:
                self._failing = True
                self.log.warning("cannot ask the source its WAL position (%s); meanwhile a commit LSN may be at most "
                                 "%d bytes beyond the last one known (retrying every %.0fs)", str(e).strip(),
                                 self.settings.commit_lsn_window_bytes, SOURCE_RETRY_S)
            return None
        if self._failing:
            self._failing = False
            self.log.info("the source answers its WAL position again")
        return lsn

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:  # noqa: BLE001 - closing a broken connection
                pass
            self._conn = None


class ApplierService(Service):
    name = "applier"

    def __init__(self, settings: ApplierSettings):
        super().__init__(settings)
        self.replica: DuckDBReplica | None = None
        self.lock = threading.Lock()  # the DuckDB connection: applying, pruning, closing
        self.counts = {"events_applied": 0, "transactions_applied": 0, "dead_letters": 0, "batches": 0,
                       "snapshots_merged": 0, "snapshots_abandoned": 0, "snapshot_rows_staged": 0,
                       "partition_pauses": 0, "dead_letters_failed": 0}
        self.assembler: TransactionAssembler | None = None
        self.tx_topic = transaction_topic(settings.topic_prefix)
        self.cdc_pattern = cdc_topic_pattern(settings.topic_prefix)
        self.decoder = Decoder()
        self.snapshots = SnapshotTracker()
        self._snapshot_work: deque[SnapshotWork] = deque()
        self._snapshot_rows_waiting = 0
        self._snapshot_turn = False
        self._stuck: tuple[int, float, bool] | None = None
        self._paused: set[tuple[str, int]] = set()
        """CDC/transaction partitions paused while other partitions catch up."""
        self._warned_old = False
        # Metrics: totals are self.counts (read at scrape time); histograms observed once per batch.
        self._committed: dict[tuple[str, int], int] = {}
        self._lag: dict[tuple[str, int], int] = {}
        self._last_commit_ms: int | None = None
        self._batch_seconds = self.metrics.histogram(
            "mallard_apply_batch_duration_seconds", "Time DuckDB took to apply one batch of whole transactions.",
            BATCH_BUCKETS)
        self._delay_seconds = self.metrics.histogram(
            "mallard_apply_delay_seconds", "End-to-end delay: Postgres commit to applied in DuckDB, of the last "
            "transaction of each batch.", DELAY_BUCKETS)
        self.metrics.on_scrape(self._metric_families)
        self.read_copy: dict[str, Any] | None = None
        """The last read-only copy published: path, bytes, tables, seconds, published_at."""
        self._copy_due = 0.0  # monotonic time of the next copy; 0: as soon as the replica is open
        self._changed_since_copy = True
        self._stream_allowed: dict[str, bool] = {}
        """stream -> whether it is one the replication config (else the connector config) names."""
        self._allowed: re.Pattern | None = None
        self._source_position: SourcePosition | None = None
        self._next_tick = 0.0
        self._loss = DataLossWatch()

    # -- what the HTTP endpoint shows -------------------------------------------------

    def state(self) -> dict[str, Any]:
        base = {**super().state(), "duckdb_path": self.settings.duckdb_path, **self.counts}
        if self.replica is not None:
            base["progress"] = self.replica.progress()
            base["tables"] = self.replica.table_report()
        if self.settings.read_copy_path:
            base["read_copy"] = self.read_copy
        if self.assembler is not None:
            base["buffered_events"] = self.assembler.buffered_events
            base["waiting_transactions"] = self.assembler.waiting_transactions
            base["transactions_expired"] = self.assembler.transactions_expired
            base["markers_refused"] = self.assembler.markers_refused
            if self._loss.detected:  # loud, but ready: the re-snapshot that repairs it is under way
                base["data_loss"] = self._loss.report()
            if self.assembler.stuck:  # replication is held up: not ready, and why
                base["ready"] = False
                base["not_ready_reason"] = self.assembler.stuck
        return base

    def _metric_families(self) -> list[Any]:
        c = self.counts
        families = [
            counter("mallard_events_applied", "Change events applied to DuckDB.", c["events_applied"]),
            counter("mallard_transactions_applied", "Postgres transactions applied to DuckDB.", c["transactions_applied"]),
            counter("mallard_apply_batches", "DuckDB transactions of change events committed.", c["batches"]),
            counter("mallard_dead_letters", "Messages sent to the dead-letter topic.", c["dead_letters"]),
            counter("mallard_snapshots_applied", "Snapshots finished in DuckDB, by result.",
                    {("merged",): c["snapshots_merged"], ("abandoned",): c["snapshots_abandoned"]}, ("result",)),
            counter("mallard_snapshot_rows_staged", "Snapshot rows staged in DuckDB.", c["snapshot_rows_staged"]),
            gauge("mallard_consumer_lag_messages", "Messages on the applier's topics not yet applied (high watermark "
                  "minus the committed offset), per partition.",
                  {(t, str(p)): lag for (t, p), lag in sorted(self._lag.items())}, ("topic", "partition")),
        ]
        if self.assembler is not None:
            a = self.assembler
            families.append(gauge("mallard_buffered_events", "Decoded events waiting for their transaction or for "
                                  "DuckDB.", a.buffered_events))
            families.append(gauge("mallard_stuck_transaction_seconds", "How long the next transaction in commit order "
                                  "has waited for its missing events, once past MALLARD_TX_STUCK_AFTER_S (0: none).",
                                  a.stuck_seconds))
            families.append(counter("mallard_transactions_expired", "Transactions given up on incomplete (their "
                                    "events dead-lettered, their streams re-snapshotted).", a.transactions_expired))
            families.append(counter("mallard_transaction_markers_refused", "Transaction markers dead-lettered (a "
                                    "commit LSN beyond the source's, no events, a transaction given up on).",
                                    a.markers_refused))
            families.append(counter("mallard_dead_letters_failed", "Messages that could not even be dead-lettered "
                                    "(logged and skipped).", c["dead_letters_failed"]))
        families += self._loss.metric_families()
        if self._last_commit_ms is not None:
            families.append(gauge("mallard_last_applied_commit_timestamp_seconds", "Postgres commit time of the last "
                                  "transaction applied (now minus this is how far behind the replica is).",
                                  self._last_commit_ms / 1000))
        return families

    def _measure_lag(self, *consumers: Consumer) -> None:
        """Per assigned partition: high watermark (librdkafka's cached one, no broker round
        trip) minus the offset committed (or, before any commit, the position). Measured
        after every commit (a few calls into librdkafka), so it is never older than that."""
        try:
            lag = {}
            for consumer in consumers:
                assigned = consumer.assignment()
                positions = {(tp.topic, tp.partition): tp.offset for tp in consumer.position(assigned)}
                for tp in assigned:
                    key = (tp.topic, tp.partition)
                    high = consumer.get_watermark_offsets(tp, cached=True)[1]
                    done = self._committed.get(key, positions.get(key, -1))
                    if high >= 0 and done >= 0:
                        lag[key] = max(0, high - done)
            self._lag = lag
        except KafkaException:
            pass  # a metric only: the next round measures again

    def routes(self) -> dict[str, Any]:
        return {"/tables": lambda params: (200, {"tables": self.replica.table_report() if self.replica else []}),
                "/query": self._query}

    def _query(self, params: dict[str, str]) -> tuple[int, dict[str, Any]]:
        """One read on the applier's confined DuckDB instance (DuckDBReplica.query): sees whole
        applied transactions only; anything but one read is refused with 400."""
        if self.replica is None or not self.replica.confined:
            return 503, {"error": "the replica is not open yet"}
        try:
            return 200, self.replica.query(params.get("sql", ""), limit=self.settings.query_max_rows,
                                           timeout_s=self.settings.query_timeout_s)
        except Exception as e:  # noqa: BLE001 - the caller's SQL: report, do not crash
            return 400, {"error": str(e)}

    # -- the loop ----------------------------------------------------------------------

    def run(self) -> None:
        s = self.settings
        kafka.wait_for_broker(s.kafka_bootstrap_servers, timeout=120, stop=self.stopping)
        kafka.ensure_topics(s.kafka_bootstrap_servers, {s.dead_letter_topic: 1, s.snapshot_topic: 1})
        Path(s.duckdb_path).parent.mkdir(parents=True, exist_ok=True)
        self.replica = DuckDBReplica(s.duckdb_path, s.duckdb_memory_limit, targets=self._configured_targets(),
                                     threads=s.duckdb_threads)
        self.replica.confine(s.read_copy_path or None)  # before /query can serve anything
        applied_lsn, recent = self.replica.applied_position()
        self._source_position = SourcePosition(s, self.log)
        self.assembler = TransactionAssembler(
            applied_lsn, recent, source_lsn=self._source_position, lsn_check_interval_s=s.commit_lsn_check_interval_s,
            lsn_window=s.commit_lsn_window_bytes, stuck_after_s=s.tx_stuck_after_s,
            give_up_after_s=s.tx_give_up_after_s)
        self._allowed = self._configured_streams()
        self._loss.configure(s.kafka_bootstrap_servers, s.consumer_group, s.topic_prefix, s.data_loss_check_interval_s,
                             self.log)
        self.producer = kafka.producer(s.kafka_bootstrap_servers)  # dead letters, snapshot requests
        consumer = kafka.consumer(s.kafka_bootstrap_servers, s.consumer_group, **{
            "session.timeout.ms": s.session_timeout_ms,
            "topic.metadata.refresh.interval.ms": s.topic_refresh_ms,
            "queued.max.messages.kbytes": s.fetch_queue_kb,
            "on_commit": self._on_commit,
        })
        consumer.subscribe([self.cdc_pattern, self.tx_topic], on_assign=self._on_assign)
        # Snapshot batches are big and come in bursts of millions of rows: a consumer of their
        # own, with a small prefetch queue, keeps memory flat in the table's size (the CDC
        # consumer's big queue is what keeps CDC fast).
        snapshot_consumer = kafka.consumer(s.kafka_bootstrap_servers, s.snapshot_group, **{
            "queued.max.messages.kbytes": s.snapshot_fetch_queue_kb,
            "fetch.wait.max.ms": 100,  # a snapshot's first batches are taken at once
            "fetch.max.bytes": s.snapshot_fetch_queue_kb * 1024 // 4,
            "max.partition.fetch.bytes": s.snapshot_fetch_queue_kb * 1024 // 4,
            "on_commit": self._on_commit,
        })
        snapshot_consumer.assign(self._snapshot_topic_start(consumer, snapshot_consumer))
        self._request_first_snapshots()
        self.log.info("applier up: %s <- topics %s and %s (group %s), %s (group %s), applied up to %s",
                      s.duckdb_path, self.cdc_pattern, self.tx_topic, s.consumer_group, s.snapshot_topic,
                      s.snapshot_group, (self.replica.progress() or {}).get("commit_lsn", "nothing yet"))
        # Batches create millions of short-lived objects and (measured) next to no reference
        # cycles: the cycle collector's scans of them cost ~10% of the applier's time. It
        # runs once every few minutes instead.
        gc.freeze()
        gc.disable()
        sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
        next_gc = time.monotonic() + GC_INTERVAL_S
        self.ready = True
        # DuckDB work runs in a thread of its own (it releases the GIL) while the next
        # batch is fetched and decoded; at most one batch waits for it.
        self._to_apply: queue.Queue = queue.Queue(maxsize=1)
        self._applied: queue.Queue = queue.Queue()
        applier = threading.Thread(target=self._apply_loop, name="duckdb-apply", daemon=True)
        applier.start()
        last_commit, uncommitted = time.monotonic(), False
        try:
            while not self.stopping.is_set():
                # Memory stays bounded: with enough events held, let DuckDB catch up first —
                # unless the next transaction is still incomplete (then it must be read on).
                # Snapshot rows waiting for DuckDB bound the snapshot side alike.
                read_cdc = self.assembler.buffered_events < s.max_buffered_events or not (
                    self.assembler.head_complete() or self._to_apply.full())
                if read_cdc:
                    self._pause_partitions_ahead(consumer)
                snapshot_messages = 0
                if self._snapshot_rows_waiting < s.snapshot_buffered_rows:
                    messages = snapshot_consumer.consume(num_messages=s.snapshot_poll_messages,
                                                         timeout=0 if read_cdc else 0.05)
                    for msg in messages:
                        self._route(msg)
                    snapshot_messages = len(messages)
                if read_cdc:
                    for msg in consumer.consume(num_messages=s.poll_messages, timeout=0 if snapshot_messages else 0.2):
                        self._route(msg)
                elif not snapshot_messages:
                    time.sleep(0.005)
                if not self._to_apply.full():
                    # CDC and snapshot work take turns; each alone keeps its own order.
                    self._snapshot_turn = not self._snapshot_turn
                    ready = None if self._snapshot_work and self._snapshot_turn \
                        else self.assembler.take_ready(s.max_batch_events)
                    if self.assembler.refused:
                        self._handle_refused()
                    if ready:
                        self._to_apply.put(("cdc", ready))
                    elif self._snapshot_work and (self._snapshot_rows_waiting >= s.snapshot_stage_rows or not
                                                  snapshot_messages or self._snapshot_work[-1].kind != "rows"):
                        # Rows wait for a full statement's worth unless nothing more is coming now.
                        self._to_apply.put(("snapshot", self._take_snapshot_work(s.snapshot_stage_rows)))
                # Offsets of what DuckDB committed, at most every COMMIT_INTERVAL_S (working out
                # the committable offsets has a cost in the number of held events).
                uncommitted = self._collect_applied() or uncommitted
                if time.monotonic() >= self._next_tick:  # bounds on what waits: reported, then expired
                    self.assembler.tick(time.monotonic())
                    self._next_tick = time.monotonic() + 0.25
                    if self.assembler.refused:
                        self._handle_refused()
                    self._check_data_loss(consumer)
                since = time.monotonic() - last_commit
                if (uncommitted and since >= COMMIT_INTERVAL_S) or since > 5:
                    self._commit_offsets(consumer, snapshot_consumer)
                    last_commit, uncommitted = time.monotonic(), False
                    self._warn_if_stuck()
                    self._warn_about_the_source()
                    self._measure_lag(consumer, snapshot_consumer)
                if time.monotonic() > next_gc:
                    gc.collect()
                    next_gc = time.monotonic() + GC_INTERVAL_S
        finally:
            self.ready = False
            self._to_apply.put(None)
            applier.join(timeout=120)
            try:
                self._collect_applied()  # what DuckDB committed meanwhile: commit its offsets too
                self._commit_offsets(consumer, snapshot_consumer, wait=True)
                consumer.close()
                snapshot_consumer.close()
            finally:
                self._loss.close()
                self._source_position.close()
                with self.lock:
                    self.replica.close()
        self.log.info("applier stopped: %d events in %d transactions applied, %d dead-lettered",
                      self.counts["events_applied"], self.counts["transactions_applied"], self.counts["dead_letters"])

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Whether librdkafka keeps a partition's pause across a rebalance is its business:
        # count them all as paused, so the next round resumes what need not be.
        self._paused = {(tp.topic, tp.partition) for tp in partitions}
        self._loss.due = 0.0  # partitions (re)assigned: look for data loss at once

    def _check_data_loss(self, consumer: Consumer) -> None:
        """Has Kafka lost messages under the applier (services/applier/data_loss.py)? Each
        partition that did is read again from its start (what was applied is recognised and
        skipped), transactions that may have lost events are expired, and its stream is
        re-snapshotted through the exact cut: the replica converges by itself."""
        answer = self._loss.answer()
        if answer is not None:
            losses = detect(*answer)
            lost_streams: list[str] = []
            for loss in losses:
                tp = (loss.topic, loss.partition)
                self.assembler.partition_lost(tp, loss.restart_at, f"Kafka lost data on {loss.topic}[{loss.partition}]")
                self._committed.pop(tp, None)
                try:
                    consumer.seek(TopicPartition(loss.topic, loss.partition, loss.restart_at))
                except KafkaException:
                    pass  # not assigned now: it starts at the offset committed below
                try:
                    consumer.commit(offsets=[TopicPartition(loss.topic, loss.partition, loss.restart_at)],
                                    asynchronous=False)
                except KafkaException:
                    pass  # the assembler commits it with the next round
                entry = self._loss.record(loss, "requested" if loss.topic != self.tx_topic else None)
                if entry["stream"] and entry["stream"] not in lost_streams:
                    lost_streams.append(entry["stream"])
                self.log.error("DATA LOSS on Kafka: %s; reading %s[%d] again from offset %d%s", loss.detail,
                               loss.topic, loss.partition, loss.restart_at,
                               f", re-snapshotting {entry['stream']}" if entry["stream"] else
                               " (transactions that may have lost their END are expired, their streams re-snapshotted)",
                               extra={**entry, "loss": entry["kind"], "kind": "data_loss"})
            if self.assembler.refused:
                self._handle_refused()
            if lost_streams:
                self._request_snapshot(lost_streams, "Kafka lost data of its CDC topic: " + "; ".join(
                    f"{x.topic}[{x.partition}] {x.kind}" for x in losses if x.topic != self.tx_topic))
        if not self._loss.due_now(time.monotonic()):
            return
        known = {**self._committed}  # what the applier knew, taken before Kafka is asked
        for tp, offset in self.assembler.committable().items():
            known[tp] = max(offset, known.get(tp, offset))
        try:
            topics = {tp.topic for tp in consumer.assignment()} | {t for t, _ in known}
        except KafkaException:
            return
        self._loss.ask(time.monotonic(), topics, known)

    def _pause_partitions_ahead(self, consumer: Consumer) -> None:
        """Read only what the next transaction still needs while the held events are at
        their bound (TransactionAssembler.partitions_ahead): memory stays flat however
        unevenly a backlog is fetched."""
        ahead = self.assembler.partitions_ahead(self.settings.max_buffered_events)
        if ahead == self._paused:
            return
        try:
            if self._paused - ahead:
                consumer.resume([TopicPartition(t, p) for t, p in self._paused - ahead])
            if ahead - self._paused:
                consumer.pause([TopicPartition(t, p) for t, p in ahead - self._paused])
                self.counts["partition_pauses"] += len(ahead - self._paused)
            self._paused = ahead
        except KafkaException as e:  # e.g. a partition revoked meanwhile: the next round tries again
            self.log.warning("pausing/resuming partitions failed, will retry: %s", e)
            self._paused |= ahead  # any of them may be paused: the next round resumes what need not be

    def _route(self, msg: Any) -> None:
        # Runs for every message: each of librdkafka's accessors is called once.
        error = msg.error()
        if error:
            if error.code() != KafkaError._PARTITION_EOF:
                self.log.warning("consumer: %s", error)
            return
        topic, offset, value = msg.topic(), msg.offset(), msg.value()
        tp = (topic, msg.partition())
        if topic == self.settings.snapshot_topic:
            self._route_snapshot(msg, tp)
            return
        assembler = self.assembler
        try:
            if topic == self.tx_topic:
                if value is None:
                    assembler.add_done(tp, offset)
                else:
                    assembler.add_marker(self.decoder.decode_transaction(*tp, offset, value))
            elif value is None:  # tombstone: the delete before it did the work
                assembler.add_done(tp, offset)
            else:
                event = self.decoder.decode_change(*tp, offset, msg.key(), value)
                allowed = self._stream_allowed.get(event.stream)
                if allowed is None:
                    allowed = self._stream_allowed[event.stream] = self._allowed is None or bool(
                        self._allowed.fullmatch(event.stream))
                if not allowed:  # never creates a table; still counts toward its transaction
                    self._dead_letter(msg, f"an event for {event.stream}, which is not a stream of the replication "
                                      "config (nor of the connector's table.include.list)")
                    assembler.add_event(None, event.tx_id, event.total_order, tp, offset)
                    return
                assembler.add_event(event, event.tx_id, event.total_order, tp, offset)
        except PoisonMessage as e:
            self._dead_letter(msg, str(e))
            position = _tx_of_poison(value) if value is not None and topic != self.tx_topic else None
            if position is not None:
                assembler.add_event(None, position[0], position[1], tp, offset)
            else:
                assembler.add_done(tp, offset)

    # -- snapshots ---------------------------------------------------------------------

    def _route_snapshot(self, msg: Any, tp: tuple[str, int]) -> None:
        offset = msg.offset()
        try:
            if is_arrow_rows(msg.value()):
                self._route_arrow_rows(msg.value(), tp, offset)
                return
            raw = orjson.loads(msg.value() or b"null")
            kind = raw.get("kind") if isinstance(raw, dict) else None
            if kind == "rows":  # the bulk: validated by hand, decoded column-wise
                frame = self.snapshots.frame(str(raw.get("stream")), str(raw.get("snapshot_id")))
                if frame is None:
                    self.snapshots.skip(tp, offset)  # of a snapshot abandoned or begun before our offsets
                    return
                rows, batch = raw.get("rows"), raw.get("batch")
                if not isinstance(rows, list) or type(batch) is not int:
                    raise PoisonMessage("snapshot rows message without a rows list and a batch number")
                try:
                    columns = snapshot_table(frame.schema.types, decode_columns(frame.schema.types, rows))
                except PoisonMessage as e:
                    self._queue_snapshot_work([self.snapshots.abandon(frame, f"batch {batch}: {e}")])
                    self.snapshots.skip(tp, offset)
                    raise
                self._queue_snapshot_work(self.snapshots.rows(frame, batch, columns, tp, offset))
                return
            message = snapshot_message_adapter.validate_python(raw)
        except (ValueError, orjson.JSONDecodeError) as e:  # pydantic's ValidationError is a ValueError
            self._dead_letter(msg, f"snapshot message: {str(e).splitlines()[0]}")
            self.snapshots.skip(tp, offset)
            return
        if isinstance(message, SnapshotBegin):
            # The filter runs again here (the end-of-snapshot delete): from Kafka, so checked.
            from mallard.core.filters import FilterError, check_filter

            try:
                where = check_filter(message.where) if message.where is not None else None
            except FilterError as e:
                self._dead_letter(msg, f"snapshot begin: bad filter: {e}")
                self.snapshots.skip(tp, offset)
                return
            columns = [c.model_dump() for c in message.columns]
            frame = SnapshotFrame(message.snapshot_id, message.stream,
                                  Cut(message.cut.xmin, message.cut.xmax, frozenset(message.cut.xip)),
                                  frame_schema(message.stream, columns), where, message.started_at,
                                  message.request_id, incremental=message.incremental,
                                  rows_format=message.rows_format)
            self._queue_snapshot_work(self.snapshots.begin(frame, tp, offset))
        elif isinstance(message, SnapshotEnd):
            frame = self.snapshots.frame(message.stream, message.snapshot_id)
            if frame is None:
                self.snapshots.skip(tp, offset)
            else:
                self._queue_snapshot_work(self.snapshots.end(frame, message.batches, message.row_count, tp, offset))
        elif isinstance(message, SnapshotFailed):  # abandons what it began; recorded for status and --wait
            self._queue_snapshot_work(self.snapshots.failed(message.stream, message.snapshot_id, message.request_id,
                                                            message.where, message.reason, message.failed_at, tp,
                                                            offset))

    def _route_arrow_rows(self, value: bytes, tp: tuple[str, int], offset: int) -> None:
        """An Arrow rows batch: already the transport arrays DuckDB loads, once its columns
        are checked against its begin's."""
        header, table = read_arrow_rows(value)
        frame = self.snapshots.frame(header.stream, header.snapshot_id)
        if frame is None:
            self.snapshots.skip(tp, offset)  # of a snapshot abandoned or begun before our offsets
            return
        expected = transport_schema(frame.schema.types)
        if frame.rows_format != "arrow" or not table.schema.equals(expected):
            why = (f"batch {header.batch} is Arrow, its begin announced {frame.rows_format} rows"
                   if frame.rows_format != "arrow" else
                   f"batch {header.batch}: its columns ({table.schema.to_string(show_schema_metadata=False)}) "
                   f"are not those its begin declares ({expected.to_string()})".replace("\n", ", "))
            self._queue_snapshot_work([self.snapshots.abandon(frame, why)])
            self.snapshots.skip(tp, offset)
            raise PoisonMessage(why)
        self._queue_snapshot_work(self.snapshots.rows(frame, header.batch, table, tp, offset))

    def _queue_snapshot_work(self, work: list[SnapshotWork]) -> None:
        for w in work:
            self._snapshot_work.append(w)
            self._snapshot_rows_waiting += w.row_count if w.kind == "rows" else 0

    def _take_snapshot_work(self, stage_rows: int) -> list[SnapshotWork]:
        taken, rows = [], 0
        while self._snapshot_work and rows < stage_rows:
            w = self._snapshot_work.popleft()
            if w.kind == "rows":
                rows += w.row_count
                self._snapshot_rows_waiting -= w.row_count
            taken.append(w)
        return taken

    def _apply_snapshot_work(self, work: list[SnapshotWork]) -> list[tuple[SnapshotWork, Any, float]]:
        done = []
        for i, w in enumerate(work):
            started = time.monotonic()
            result = None
            if w.kind == "begin":
                self.replica.begin_snapshot(w.frame)
            elif w.kind == "rows":
                # Consecutive batches of one snapshot go in as one insert.
                if i + 1 < len(work) and work[i + 1].kind == "rows" and work[i + 1].frame is w.frame:
                    work[i + 1].columns = pa.concat_tables([w.columns, work[i + 1].columns])
                else:
                    self.replica.stage_rows(w.frame, w.columns)
                w.columns = None
            elif w.kind == "end":
                try:
                    result = self.replica.finish_snapshot(w.frame)
                except Exception as e:  # noqa: BLE001 - rolled back: the table keeps its content
                    w = SnapshotWork("abandon", w.frame, reason=f"merging it failed: {e}")
                    self.replica.abandon_snapshot(w.frame, w.reason)
            else:
                self.replica.abandon_snapshot(w.frame, w.reason or "abandoned")
            done.append((w, result, time.monotonic() - started))
        return done

    def _account_snapshot_work(self, done: list[tuple[SnapshotWork, Any, float]]) -> None:
        staged, elapsed, frame = 0, 0.0, None

        def log_staged() -> None:  # one line per chunk of rows
            if staged:
                self.counts["snapshot_rows_staged"] += staged
                frame.staged += staged
                rate = staged / elapsed if elapsed else 0
                self.log.info("snapshot %s of %s: staged %d rows (%d so far) in %.0f ms (%.0f rows/s)",
                              frame.snapshot_id, frame.stream, staged, frame.staged, elapsed * 1000, rate,
                              extra={"kind": "snapshot_staged", "stream": frame.stream,
                                     "snapshot_id": frame.snapshot_id, "rows": staged, "rows_total": frame.staged,
                                     "elapsed_ms": round(elapsed * 1000), "rate": round(rate)})

        for w, result, seconds in done:
            self.snapshots.done(w)
            f = w.frame
            if w.kind == "rows":
                if frame is not None and frame is not f:
                    log_staged()
                    staged, elapsed = 0, 0.0
                staged += w.row_count
                elapsed += seconds
                frame = f
                continue
            log_staged()
            staged, elapsed = 0, 0.0
            if w.kind == "begin":
                self.log.info("snapshot %s of %s: staging (cut %d:%d, %d in progress%s)", f.snapshot_id, f.stream,
                              f.cut.xmin, f.cut.xmax, len(f.cut.xip), f", where {f.where}" if f.where else "")
            elif w.kind == "end":
                self.counts["snapshots_merged"] += 1
                self.log.info("snapshot %s of %s merged: %d rows staged, %d applied, %d kept (newer CDC changes), "
                              "%d deleted (gone from Postgres) in %.0f ms", f.snapshot_id, f.stream, result.staged,
                              result.applied, result.staged - result.applied, result.deleted, seconds * 1000,
                              extra={"kind": "snapshot_merged", "stream": f.stream, "snapshot_id": f.snapshot_id,
                                     "rows": result.staged, "rows_applied": result.applied,
                                     "rows_kept": result.staged - result.applied, "rows_deleted": result.deleted,
                                     "elapsed_ms": round(seconds * 1000)})
                if result.resnapshot_again:
                    self._request_snapshot([f.stream], "changes were held back after the last snapshot's cut")
                self._loss.snapshot_merged(f)
            else:
                self.counts["snapshots_abandoned"] += 1
                self.log.error("snapshot %s of %s abandoned: %s; the table keeps its content, and the snapshot "
                               "must be taken again (mallard resnapshot %s)", f.snapshot_id, f.stream, w.reason,
                               f.stream)
        log_staged()

    def _request_snapshot(self, streams: list[str], reason: str) -> None:
        request = ResnapshotRequest(request_id=f"applier-{uuid.uuid4().hex[:12]}", streams=streams, reason=reason,
                                    requested_by="applier", requested_at=datetime.now(timezone.utc))
        self.producer.produce(self.settings.control_topic, key=request.request_id.encode(),
                         value=request.model_dump_json().encode())
        if self.producer.flush(30) != 0:
            self.log.error("could not request a snapshot of %s (control topic %s unreachable)",
                           ", ".join(streams), self.settings.control_topic)
            return
        self.log.info("requested a snapshot of %s: %s", ", ".join(streams), reason)

    def _request_first_snapshots(self) -> None:
        """A configured stream the replica has never had a snapshot of gets its first one."""
        try:
            streams = load_connector_config_file(self.settings.connector_config).tables
        except Exception as e:  # noqa: BLE001 - the publisher validates the file; say why and go on
            self.log.warning("cannot read the connector config %s for the configured streams: %s",
                             self.settings.connector_config, e)
            return
        never = [s for s in streams if not self.replica.has_snapshot(s)]
        if never:
            self._request_snapshot(never, "first snapshot of an empty replica")

    def _configured_streams(self) -> re.Pattern | None:
        """The streams events may be applied for: the replication config's, else the
        connector config's table.include.list (Debezium's regexes); None: every table."""
        if self.settings.replication_config:
            from mallard.config.replication import load_config

            names = [re.escape(name) for name in load_config(self.settings.replication_config).streams]
        else:
            try:
                names = load_connector_config_file(self.settings.connector_config).tables
            except Exception as e:  # noqa: BLE001 - said in _request_first_snapshots too
                self.log.warning("cannot read the connector config %s: events of every table are applied (%s)",
                                 self.settings.connector_config, e)
                return None
        return re.compile("|".join(f"(?:{n})" for n in names)) if names else None

    def _handle_refused(self) -> None:
        """Markers the assembler refused and events it expired: to the dead-letter topic; the
        streams of expired events are re-snapshotted (their changes were not all applied)."""
        streams: list[str] = []
        for r in self.assembler.drain_refused():
            self._dead_letter_at(r.topic, r.partition, r.offset, None, None, r.reason, r.event)
            if r.stream is not None and r.stream not in streams:
                streams.append(r.stream)
        if streams:
            self._request_snapshot(streams, "a transaction was expired incomplete (its events dead-lettered)")

    def _configured_targets(self) -> dict[str, str]:
        """stream -> DuckDB table, as the replication config names them (a new table only:
        one the replica already has keeps its name)."""
        if not self.settings.replication_config:
            return {}
        from mallard.config.replication import load_config

        return {name: stream.target for name, stream in load_config(self.settings.replication_config).streams.items()
                if stream.target}

    def _on_commit(self, error: Any, partitions: list[TopicPartition]) -> None:
        if error is not None and error.code() != KafkaError._NO_OFFSET:
            self.log.warning("offset commit failed, the next one carries the same offsets: %s", error)

    def _dead_letter(self, msg: Any, error: str) -> None:
        self._dead_letter_at(msg.topic(), msg.partition(), msg.offset(), msg.key(), msg.value(), error)

    def _dead_letter_at(self, topic: str, partition: int, offset: int, raw_key: bytes | None, raw_value: bytes | None,
                        error: str, event: Any = None) -> None:
        """Always writable: key and value cut to dead_letter_max_bytes (the original stays at its
        offset). If the topic still does not take it, that is logged and the message skipped:
        one message never stops the applier."""
        limit = self.settings.dead_letter_max_bytes
        truncated = (raw_key is not None and len(raw_key) > limit) or (raw_value is not None and len(raw_value) > limit)
        key, key_utf8 = _text(raw_key[:limit] if raw_key is not None else None)
        value, value_utf8 = _text(raw_value[:limit] if raw_value is not None else None)
        if event is not None and value is None:  # an expired event: what it was, readable
            value, value_utf8 = orjson.dumps({"stream": event.stream, "op": event.op, "key": event.key,
                                              "tx_id": event.tx_id, "total_order": event.total_order},
                                             default=str).decode(), True
        try:
            letter = DeadLetter(error=error, service=self.name, source_topic=topic, source_partition=partition,
                                source_offset=offset, key=key, value=value,
                                encoding="utf-8" if key_utf8 and value_utf8 else "base64", truncated=truncated,
                                key_bytes=None if raw_key is None else len(raw_key),
                                value_bytes=None if raw_value is None else len(raw_value),
                                failed_at=datetime.now(timezone.utc))
            self.producer.produce(self.settings.dead_letter_topic, key=(raw_key or b"")[:limit] or None,
                                  value=letter.model_dump_json().encode())
            if self.producer.flush(30) != 0:
                raise RuntimeError(f"the dead-letter topic {self.settings.dead_letter_topic} did not take it in 30s")
        except Exception as e:  # noqa: BLE001 - logged and skipped, never a crash loop
            self.counts["dead_letters_failed"] += 1
            self.log.error("could not dead-letter %s[%d]@%d (%s); skipped, the reason was: %s", topic, partition,
                           offset, e, error)
            return
        self.counts["dead_letters"] += 1
        self.log.warning("dead-lettered %s[%d]@%d%s: %s", topic, partition, offset,
                         f" (cut to {limit:,} of {max(len(raw_key or b''), len(raw_value or b'')):,} bytes)"
                         if truncated else "", error)

    def _warn_about_the_source(self) -> None:
        if self.assembler.unknown_old_transactions and not self._warned_old:
            self.log.error("%d transaction(s) older than the replica's position (LSN %X/%X) that it never applied were "
                           "skipped: has the source been re-created behind this replica? Re-snapshot it if so.",
                           self.assembler.unknown_old_transactions, self.assembler.applied_lsn >> 32,
                           self.assembler.applied_lsn & 0xFFFFFFFF)
            self._warned_old = True

    def _warn_if_stuck(self) -> None:
        """Transactions apply in commit order: one whose events never all arrive holds back
        every later one. Say so (once per transaction) rather than guess."""
        head = self.assembler.head()
        if head is None or head[1] >= head[2]:
            self._stuck = None
            return
        now = time.monotonic()
        if self._stuck is None or self._stuck[0] != head[0]:
            self._stuck = (head[0], now, False)
        elif now - self._stuck[1] > 60 and not self._stuck[2]:
            self.log.warning("transaction %d has %d of its %d events after %.0fs; %d later transaction(s) wait "
                             "behind it (are all CDC topics readable?)", head[0], head[1], head[2],
                             now - self._stuck[1], self.assembler.waiting_transactions - 1)
            self._stuck = (head[0], self._stuck[1], True)

    def _next_work(self) -> Any:
        """The next batch for DuckDB; while none comes, publish the read-only copy when due."""
        if not self.settings.read_copy_path:
            return self._to_apply.get()
        while True:
            self._publish_copy_if_due()
            try:
                wait = self._copy_due - time.monotonic() if self._changed_since_copy else 1.0
                return self._to_apply.get(timeout=max(0.05, min(1.0, wait)))
            except queue.Empty:
                continue

    def _publish_copy_if_due(self) -> None:
        """On the DuckDB thread, between batches: the copy holds whole applied transactions."""
        if not self._changed_since_copy or time.monotonic() < self._copy_due:
            return
        self._copy_due = time.monotonic() + self.settings.read_copy_interval_s
        try:
            with self.lock:
                copy = self.replica.publish_copy(self.settings.read_copy_path)
        except Exception as e:  # noqa: BLE001 - readers keep the previous copy; applying goes on
            self.log.error("read-only copy to %s failed (the previous one stays; next try in %.0fs): %s",
                           self.settings.read_copy_path, self.settings.read_copy_interval_s, e)
            return
        self._changed_since_copy = False
        self.read_copy = {**copy, "published_at": datetime.now(timezone.utc).isoformat()}
        self.log.info("read-only copy published: %s (%.1f MB, %d tables) in %.0f ms", copy["path"],
                      copy["bytes"] / 1e6, copy["tables"], copy["seconds"] * 1000)

    def _apply_loop(self) -> None:
        # Preparing a batch (Python: reduce per key, Arrow tables) overlaps with committing
        # the one before it (DuckDB, with the GIL free where its C API can be had). Anything
        # else on the connection (snapshot work, a schema change, pruning) waits for the commit.
        committer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="duckdb-commit")
        running = None
        prepared = 0

        def finish() -> None:
            nonlocal running
            if running is not None:
                future, running = running, None
                future.result()

        def committed(transactions: list, started: float):
            def report(future) -> None:  # in commit order: one commit at a time
                try:
                    self._applied.put((transactions, future.result(), time.monotonic() - started))
                except BaseException as e:  # terminal: surfaced on the main thread
                    self._applied.put(e)
            return report

        try:
            while True:
                if self._to_apply.empty():
                    finish()  # idle: the read-only copy, if due, holds what was committed
                if (item := self._next_work()) is None:
                    break
                self._changed_since_copy = True
                kind, work = item
                if kind == "snapshot":
                    finish()
                    with self.lock:
                        self._applied.put(("snapshot", self._apply_snapshot_work(work)))
                    continue
                transactions = work
                started = time.monotonic()
                steps = reduce(transactions, self.replica.snapshot_cuts())
                if self.replica.changes_schema(steps):  # statements on the client's connection
                    finish()
                    with self.lock:
                        batch = self.replica.prepare(steps, transactions)
                else:
                    batch = self.replica.prepare(steps, transactions)
                finish()
                running = committer.submit(self._commit, batch)
                running.add_done_callback(committed(transactions, started))
                prepared += 1
                if prepared % 100 == 0:
                    finish()
                    with self.lock:
                        self.replica.prune_recent()
            finish()
        except BaseException as e:  # terminal: surfaced on the main thread, nothing committed
            self._applied.put(e)
        finally:
            committer.shutdown(wait=True)

    def _commit(self, batch: PreparedBatch) -> ApplyStats:
        if self.replica.native is not None:  # a connection of its own: the client's stays free
            return self.replica.commit(batch)
        with self.lock:
            return self.replica.commit(batch)

    def _collect_applied(self) -> bool:
        """Account for batches DuckDB has committed; True if there were any."""
        any_applied = False
        while not self._applied.empty():
            item = self._applied.get()
            if isinstance(item, BaseException):
                raise RuntimeError(f"applying to DuckDB failed: {item}") from item
            if item[0] == "snapshot":
                self._account_snapshot_work(item[1])
                any_applied = True
                continue
            transactions, stats, elapsed = item
            self.assembler.mark_applied(transactions)
            self.counts["events_applied"] += stats.events
            self.counts["transactions_applied"] += stats.transactions
            self.counts["batches"] += 1
            if stats.needs_resnapshot:  # rebuilt by a snapshot; its changes flow again after it
                self._request_snapshot(stats.needs_resnapshot, "a schema change that cannot be applied in place")
            last = transactions[-1]
            lag = time.time() - last.committed_at_ms / 1000
            rate = stats.events / elapsed if elapsed else 0
            self._batch_seconds.observe(elapsed)
            self._delay_seconds.observe(max(0.0, lag))
            self._last_commit_ms = last.committed_at_ms
            self.log.info(
                "applied %d tx, %d events (%d upserts, %d deletes, %d truncates, %d held back, %d dead, "
                "%d older than a snapshot) "
                "in %.0f ms (%.0f events/s); at LSN %X/%X, committed %.1fs ago",
                stats.transactions, stats.events, stats.upserts, stats.deletes, stats.truncates, stats.skipped,
                stats.dead, stats.covered, elapsed * 1000, rate,
                last.commit_lsn >> 32, last.commit_lsn & 0xFFFFFFFF, lag,
                extra={"kind": "cdc_batch", "streams": stats.events_by_stream,
                       "transactions": stats.transactions, "events": stats.events, "upserts": stats.upserts,
                       "deletes": stats.deletes, "truncates": stats.truncates, "held_back": stats.skipped,
                       "dead": stats.dead, "older_than_snapshot": stats.covered, "elapsed_ms": round(elapsed * 1000),
                       "rate": round(rate), "commit_lsn": f"{last.commit_lsn >> 32:X}/{last.commit_lsn & 0xFFFFFFFF:X}",
                       "lag_s": round(lag, 3)},
            )
            any_applied = True
        return any_applied

    def _commit_offsets(self, consumer: Consumer, snapshot_consumer: Consumer, wait: bool = False) -> None:
        """Commit what DuckDB holds. Without waiting for the broker: the next batch is
        decoded meanwhile; a commit that fails (or lands after a later one) only means a
        replay of transactions DuckDB already has (recognised and skipped), or of merged
        snapshots (skipped too)."""
        for c, committable in ((consumer, self.assembler.committable()),
                               (snapshot_consumer, self.snapshots.committable())):
            offsets = [TopicPartition(t, p, o) for (t, p), o in committable.items()]
            if offsets:
                try:
                    c.commit(offsets=offsets, asynchronous=not wait)
                    self._committed.update(committable)
                except KafkaException as e:  # transient: the next commit carries the same offsets
                    self.log.warning("offset commit failed, will retry: %s", e)

    def _snapshot_topic_start(self, consumer: Consumer, snapshot_consumer: Consumer) -> list[TopicPartition]:
        """Where to read the snapshot topic from. The applier is its only reader: its
        partitions are assigned, not subscribed to, so a restarted applier waits for no
        group rebalance; offsets are still committed under the snapshot group. A replica
        from before that group kept them in the CDC group: they are taken over."""
        topic = self.settings.snapshot_topic
        for attempt in range(1, 6):
            try:
                partitions = sorted(consumer.list_topics(topic, timeout=10).topics[topic].partitions)
                tps = [TopicPartition(topic, p) for p in partitions]
                committed = snapshot_consumer.committed(tps, timeout=10)
                if not any(tp.offset >= 0 for tp in committed):
                    adopt = [tp for tp in consumer.committed(tps, timeout=10) if tp.offset >= 0]
                    if adopt:
                        snapshot_consumer.commit(offsets=adopt, asynchronous=False)
                        self.log.info("snapshot topic offsets taken over from group %s: %s",
                                      self.settings.consumer_group,
                                      ", ".join(f"[{tp.partition}]@{tp.offset}" for tp in adopt))
                        committed = adopt
                offsets = {tp.partition: tp.offset for tp in committed if tp.offset >= 0}
                return [TopicPartition(topic, p, offsets.get(p, OFFSET_BEGINNING)) for p in partitions]
            except KafkaException as e:  # transient: the broker is up (waited for above)
                if attempt == 5:
                    raise
                self.log.warning("reading the snapshot topic's committed offsets failed, retrying: %s", e)
                self.stopping.wait(attempt)
        raise AssertionError("unreachable")
