"""The applier: Debezium topics -> whole Postgres transactions -> DuckDB.

Loop: fetch a batch of messages, decode them (poison -> dead-letter topic), hold
them until their transactions are complete, reduce complete transactions to one
state per key, apply them in one DuckDB transaction, then commit Kafka offsets
up to what is applied. A crash anywhere replays from the committed offsets;
transactions DuckDB already has are recognised by their commit LSN and skipped.
"""
from __future__ import annotations

import base64
import gc
import queue
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from mallard.adapters import kafka
from mallard.adapters.duckdb_replica import DuckDBReplica
from mallard.core.changes import Decoder, PoisonMessage, split_envelope
from mallard.core.connector_config import cdc_topic_pattern, transaction_topic
from mallard.core.merge import reduce
from mallard.core.transactions import TransactionAssembler
from mallard.service import Service
from schemas.deadletter import DeadLetter
from services.applier.config import ApplierSettings


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


class ApplierService(Service):
    name = "applier"

    def __init__(self, settings: ApplierSettings):
        super().__init__(settings)
        self.replica: DuckDBReplica | None = None
        self.lock = threading.Lock()  # the DuckDB connection: applying, pruning, closing
        self.counts = {"events_applied": 0, "transactions_applied": 0, "dead_letters": 0, "batches": 0}
        self.assembler: TransactionAssembler | None = None
        self.tx_topic = transaction_topic(settings.topic_prefix)
        self.cdc_pattern = cdc_topic_pattern(settings.topic_prefix)
        self.decoder = Decoder()
        self._stuck: tuple[int, float, bool] | None = None
        self._warned_old = False

    # -- what the HTTP endpoint shows -------------------------------------------------

    def state(self) -> dict[str, Any]:
        base = {**super().state(), "duckdb_path": self.settings.duckdb_path, **self.counts}
        if self.replica is not None:
            base["progress"] = self.replica.progress()
            base["tables"] = self.replica.table_report()
        if self.assembler is not None:
            base["buffered_events"] = self.assembler.buffered_events
            base["waiting_transactions"] = self.assembler.waiting_transactions
        return base

    def routes(self) -> dict[str, Any]:
        return {"/tables": lambda params: (200, {"tables": self.replica.table_report() if self.replica else []}),
                "/query": self._query}

    def _query(self, params: dict[str, str]) -> tuple[int, dict[str, Any]]:
        """A read on the applier's own connection: sees whole applied transactions only."""
        if self.replica is None:
            return 503, {"error": "the replica is not open yet"}
        try:
            return 200, self.replica.query(params.get("sql", ""))
        except Exception as e:  # noqa: BLE001 - the caller's SQL: report, do not crash
            return 400, {"error": str(e)}

    # -- the loop ----------------------------------------------------------------------

    def run(self) -> None:
        s = self.settings
        kafka.wait_for_broker(s.kafka_bootstrap_servers, timeout=120, stop=self.stopping)
        kafka.ensure_topics(s.kafka_bootstrap_servers, {s.dead_letter_topic: 1})
        Path(s.duckdb_path).parent.mkdir(parents=True, exist_ok=True)
        self.replica = DuckDBReplica(s.duckdb_path, s.duckdb_memory_limit)
        applied_lsn, recent = self.replica.applied_position()
        self.assembler = TransactionAssembler(applied_lsn, recent)
        self.dlq = kafka.producer(s.kafka_bootstrap_servers)
        consumer = kafka.consumer(s.kafka_bootstrap_servers, s.consumer_group, **{
            "session.timeout.ms": s.session_timeout_ms,
            "topic.metadata.refresh.interval.ms": s.topic_refresh_ms,
            "queued.max.messages.kbytes": s.fetch_queue_kb,
        })
        consumer.subscribe([self.cdc_pattern, self.tx_topic])
        self.log.info("applier up: %s <- topics %s and %s (group %s), applied up to %s",
                      s.duckdb_path, self.cdc_pattern, self.tx_topic, s.consumer_group,
                      (self.replica.progress() or {}).get("commit_lsn", "nothing yet"))
        # Batches create many short-lived objects and few cycles: collect cycles rarely.
        gc.freeze()
        gc.set_threshold(100_000, 50, 100)
        self.ready = True
        # DuckDB work runs in a thread of its own (it releases the GIL) while the next
        # batch is fetched and decoded; at most one batch waits for it.
        self._to_apply: queue.Queue = queue.Queue(maxsize=1)
        self._applied: queue.Queue = queue.Queue()
        applier = threading.Thread(target=self._apply_loop, name="duckdb-apply", daemon=True)
        applier.start()
        last_commit = time.monotonic()
        try:
            while not self.stopping.is_set():
                # Memory stays bounded: with enough events held, let DuckDB catch up first —
                # unless the next transaction is still incomplete (then it must be read on).
                if self.assembler.buffered_events < s.max_buffered_events or not (
                        self.assembler.head_complete() or self._to_apply.full()):
                    for msg in consumer.consume(num_messages=s.poll_messages, timeout=0.2):
                        self._route(msg)
                else:
                    time.sleep(0.005)
                if not self._to_apply.full():
                    ready = self.assembler.take_ready(s.max_batch_events)
                    if ready:
                        self._to_apply.put(ready)
                if self._collect_applied() or time.monotonic() - last_commit > 5:
                    self._commit_offsets(consumer)
                    last_commit = time.monotonic()
                    self._warn_if_stuck()
                    self._warn_about_the_source()
        finally:
            self.ready = False
            self._to_apply.put(None)
            applier.join(timeout=120)
            try:
                if self._collect_applied():  # what DuckDB committed meanwhile: commit its offsets too
                    self._commit_offsets(consumer)
                consumer.close()
            finally:
                with self.lock:
                    self.replica.close()
        self.log.info("applier stopped: %d events in %d transactions applied, %d dead-lettered",
                      self.counts["events_applied"], self.counts["transactions_applied"], self.counts["dead_letters"])

    def _route(self, msg: Any) -> None:
        tp = (msg.topic(), msg.partition())
        if msg.error():
            if msg.error().code() != KafkaError._PARTITION_EOF:
                self.log.warning("consumer: %s", msg.error())
            return
        value = msg.value()
        try:
            if msg.topic() == self.tx_topic:
                if value is None:
                    self.assembler.add_done(tp, msg.offset())
                else:
                    self.assembler.add_marker(self.decoder.decode_transaction(*tp, msg.offset(), value))
            elif value is None:  # tombstone: the delete before it did the work
                self.assembler.add_done(tp, msg.offset())
            else:
                event = self.decoder.decode_change(*tp, msg.offset(), msg.key(), value)
                self.assembler.add_event(event, event.tx_id, event.total_order, tp, msg.offset())
        except PoisonMessage as e:
            self._dead_letter(msg, str(e))
            position = _tx_of_poison(value) if value is not None and msg.topic() != self.tx_topic else None
            if position is not None:
                self.assembler.add_event(None, position[0], position[1], tp, msg.offset())
            else:
                self.assembler.add_done(tp, msg.offset())

    def _dead_letter(self, msg: Any, error: str) -> None:
        key, key_utf8 = _text(msg.key())
        value, value_utf8 = _text(msg.value())
        letter = DeadLetter(error=error, service=self.name, source_topic=msg.topic(), source_partition=msg.partition(),
                            source_offset=msg.offset(), key=key, value=value,
                            encoding="utf-8" if key_utf8 and value_utf8 else "base64",
                            failed_at=datetime.now(timezone.utc))
        self.dlq.produce(self.settings.dead_letter_topic, key=msg.key(), value=letter.model_dump_json().encode())
        if self.dlq.flush(30) != 0:
            raise RuntimeError(f"dead-letter topic {self.settings.dead_letter_topic} did not take a message")
        self.counts["dead_letters"] += 1
        self.log.warning("dead-lettered %s[%d]@%d: %s", msg.topic(), msg.partition(), msg.offset(), error)

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

    def _apply_loop(self) -> None:
        while (transactions := self._to_apply.get()) is not None:
            try:
                started = time.monotonic()
                steps = reduce(transactions)
                with self.lock:
                    stats = self.replica.apply(steps, transactions)
                    if self.counts["batches"] % 100 == 99:
                        self.replica.prune_recent()
                self._applied.put((transactions, stats, time.monotonic() - started))
            except BaseException as e:  # terminal: surfaced on the main thread, nothing committed
                self._applied.put(e)
                return

    def _collect_applied(self) -> bool:
        """Account for batches DuckDB has committed; True if there were any."""
        any_applied = False
        while not self._applied.empty():
            item = self._applied.get()
            if isinstance(item, BaseException):
                raise RuntimeError(f"applying to DuckDB failed: {item}") from item
            transactions, stats, elapsed = item
            self.assembler.mark_applied(transactions)
            self.counts["events_applied"] += stats.events
            self.counts["transactions_applied"] += stats.transactions
            self.counts["batches"] += 1
            last = transactions[-1]
            lag = time.time() - last.committed_at_ms / 1000
            self.log.info(
                "applied %d tx, %d events (%d upserts, %d deletes, %d truncates, %d held back, %d dead) "
                "in %.0f ms (%.0f events/s); at LSN %X/%X, committed %.1fs ago",
                stats.transactions, stats.events, stats.upserts, stats.deletes, stats.truncates, stats.skipped,
                stats.dead, elapsed * 1000, stats.events / elapsed if elapsed else 0,
                last.commit_lsn >> 32, last.commit_lsn & 0xFFFFFFFF, lag,
            )
            any_applied = True
        return any_applied

    def _commit_offsets(self, consumer: Consumer) -> None:
        offsets = [TopicPartition(t, p, o) for (t, p), o in self.assembler.committable().items()]
        if offsets:
            try:
                consumer.commit(offsets=offsets, asynchronous=False)
            except KafkaException as e:  # transient: the next commit carries the same offsets
                self.log.warning("offset commit failed, will retry: %s", e)
