"""The applier: Debezium topics -> whole Postgres transactions -> DuckDB.

Loop: fetch a batch of messages, decode them (poison -> dead-letter topic), hold
them until their transactions are complete, reduce complete transactions to one
state per key, apply them in one DuckDB transaction, then commit Kafka offsets
up to what is applied. A crash anywhere replays from the committed offsets;
transactions DuckDB already has are recognised by their commit LSN and skipped.

Snapshots (the snapshot topic) are staged in DuckDB as their batches arrive and
merged into the table with the cut rule when their end arrives; the snapshot
topic's offsets are committed only past merged snapshots.

This module wires the seams, each a module of its own: ``routing`` (decode, route,
dead-letter), ``flow`` (pause partitions at the held-events bound), ``pipeline`` (the
DuckDB thread: prepare/commit, retries, bisecting terminal errors, the read-only copy),
``offsets`` (commit what DuckDB holds), ``snapshot_work``, ``dead_letters``,
``observe`` (state and metrics). What it talks to are ports (``ports``), wired by
``bootstrap`` (real adapters, or the fakes of ``fakes``).
"""
from __future__ import annotations

import gc
import re
import sys
import threading
import uuid
from datetime import datetime, timezone
from typing import Any

from confluent_kafka import KafkaException, TopicPartition

from mallard.config.connector import load_connector_config_file
from mallard.core.changes import Decoder
from mallard.core.connector import cdc_topic_pattern, message_topic, message_topic_pattern, transaction_topic
from mallard.core.data_loss import detect
from mallard.core.names import stream_of_include
from mallard.core.snapshots import SnapshotTracker
from mallard.core.transactions import TransactionAssembler
from mallard.runtime.metrics import BATCH_BUCKETS, DELAY_BUCKETS
from mallard.runtime.service import Service
from mallard.schemas.control import ResnapshotRequest
from mallard.services.applier import observe
from mallard.services.applier.config import ApplierSettings
from mallard.services.applier.dead_letters import DeadLetterWriter
from mallard.services.applier.flow import PartitionFlow
from mallard.services.applier.offsets import Offsets
from mallard.services.applier.pipeline import Applied, Pipeline
from mallard.services.applier.ports import ChangeSource, Replica, request_message
from mallard.services.applier.routing import Router
from mallard.services.applier.snapshot_work import SnapshotAccounting, SnapshotQueue

GC_INTERVAL_S = 300
COMMIT_INTERVAL_S = 0.5
IDLE_WAIT_S = 0.2
"""How long the loop waits for a CDC message when none is fetched (it returns at the first)."""
GIL_SWITCH_INTERVAL_S = 0.1
"""How long a thread waiting for the GIL waits before it forces a switch (Python's default:
5 ms). With a backlog the decoding thread holds the GIL, and the DuckDB thread needs it
twice a batch (to send the batch to the writer process and to take its answer): forced
switches every 5 ms cost the decoding thread handoffs on a busy machine (bench/RESULTS.md:
the writer process without it ran at 21k events/s against 28k with it, same session)."""


class ApplierService(Service):
    name = "applier"

    def __init__(self, settings: ApplierSettings, ports: Any = None):
        """``ports``: what ``bootstrap`` wires (services/applier/bootstrap.py); without it, the real adapters."""
        super().__init__(settings)
        if ports is None:
            from mallard.services.applier.bootstrap import real_ports

            ports = real_ports(settings)
        self.ports = ports
        self.clock = ports.clock
        self.replica: Replica | None = None
        self.lock = threading.Lock()  # the DuckDB connection: applying, pruning, closing
        self.counts = {"events_applied": 0, "transactions_applied": 0, "dead_letters": 0, "batches": 0,
                       "snapshots_merged": 0, "snapshots_abandoned": 0, "snapshot_rows_staged": 0,
                       "partition_pauses": 0, "dead_letters_failed": 0}
        self.assembler: TransactionAssembler | None = None
        self.tx_topic = transaction_topic(settings.topic_prefix)
        self.cdc_pattern = cdc_topic_pattern(settings.topic_prefix)
        self.message_topic = message_topic(settings.topic_prefix)
        self.decoder = Decoder()
        self.snapshots = SnapshotTracker()
        self.snapshot_queue = SnapshotQueue()
        self._snapshot_turn = False
        self._stuck: tuple[int, float, bool] | None = None
        self._warned_old = False
        self._loss = ports.data_loss
        self.dead_letters = DeadLetterWriter(ports.dead_letters, settings.dead_letter_topic,
                                             settings.dead_letter_max_bytes, self.name, self.counts, self.log)
        self.flow = PartitionFlow(settings.max_buffered_events, lambda: self.assembler, self.counts, self._loss,
                                  self.log)
        self.offsets = Offsets(settings, lambda: self.assembler, self.snapshots, self.stopping, self.log)
        self.snapshot_accounting = SnapshotAccounting(self.snapshots, self.counts, self.log, self._request_snapshot,
                                                      self._loss)
        self.pipeline: Pipeline | None = None
        self.router: Router | None = None
        # Metrics: totals are self.counts (read at scrape time); histograms observed once per batch.
        self._last_commit_ms: int | None = None
        self._batch_seconds = self.metrics.histogram(
            "mallard_apply_batch_duration_seconds", "Time DuckDB took to apply one batch of whole transactions.",
            BATCH_BUCKETS)
        self._delay_seconds = self.metrics.histogram(
            "mallard_apply_delay_seconds", "End-to-end delay: Postgres commit to applied in DuckDB, of the last "
            "transaction of each batch.", DELAY_BUCKETS)
        self.metrics.on_scrape(lambda: observe.metric_families(self))
        self._source_position: Any = None
        self._next_tick = 0.0

    @property
    def read_copy(self) -> dict[str, Any] | None:
        """The last read-only copy published: path, bytes, tables, seconds, published_at."""
        return self.pipeline.read_copy if self.pipeline is not None else None

    # -- what the HTTP endpoint shows -------------------------------------------------

    def state(self) -> dict[str, Any]:
        return observe.state(self, super().state())

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
        s, ports, clock = self.settings, self.ports, self.clock
        ports.prepare_topics(self.stopping)
        if s.replication_config:
            from mallard.config.replication import ConfigWatch, load_config

            self.config_watch = ConfigWatch(s.replication_config, load_config(s.replication_config), self.log,
                                            s.config_reload_interval_s)
        self.replica = ports.open_replica(self._configured_targets())
        self.replica.confine(s.read_copy_path or None)  # before /query can serve anything
        applied_lsn, recent = self.replica.applied_position()
        self._source_position = ports.source_position(self.log)
        self.assembler = TransactionAssembler(
            applied_lsn, recent, source_lsn=self._source_position, lsn_check_interval_s=s.commit_lsn_check_interval_s,
            lsn_window=s.commit_lsn_window_bytes, stuck_after_s=s.tx_stuck_after_s,
            give_up_after_s=s.tx_give_up_after_s, spill=self._open_spill(), memory_bound_bytes=int(s.memory_bound_mb * (1 << 20)))
        self.router = Router(tx_topic=self.tx_topic, snapshot_topic=s.snapshot_topic, assembler=self.assembler,
                             decoder=self.decoder, snapshots=self.snapshots, snapshot_queue=self.snapshot_queue,
                             dead_letters=self.dead_letters, allowed=self._configured_streams(), log=self.log,
                             topic_streams=self._loss.topic_streams, message_topic=self.message_topic)
        self._loss.configure(s.kafka_bootstrap_servers, s.consumer_group, s.topic_prefix, s.data_loss_check_interval_s,
                             self.log)
        self._loss.expect_streams(self._stream_list())
        consumer: ChangeSource = ports.change_source(self.offsets.on_commit)
        consumer.subscribe([self.cdc_pattern, self.tx_topic, message_topic_pattern(s.topic_prefix)],
                           on_assign=self.flow.on_assign)
        # Snapshot batches are big and come in bursts of millions of rows: a consumer of their
        # own, with a small prefetch queue, keeps memory flat in the table's size (the CDC
        # consumer's big queue is what keeps CDC fast).
        snapshot_consumer: ChangeSource = ports.snapshot_source(self.offsets.on_commit)
        snapshot_consumer.assign(self.offsets.snapshot_topic_start(consumer, snapshot_consumer))
        self._request_first_snapshots()
        self.log.info("applier up: %s <- topics %s and %s (group %s), %s (group %s), applied up to %s",
                      s.duckdb_path, self.cdc_pattern, self.tx_topic, s.consumer_group, s.snapshot_topic,
                      s.snapshot_group, (self.replica.progress() or {}).get("commit_lsn", "nothing yet"))
        if ports.tune_process:
            # Batches create millions of short-lived objects and (measured) next to no reference
            # cycles: the cycle collector's scans of them cost ~10% of the applier's time. It
            # runs once every few minutes instead.
            gc.freeze()
            gc.disable()
            sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
        next_gc = clock.monotonic() + GC_INTERVAL_S
        self.ready = True
        # DuckDB work runs in a thread of its own (it releases the GIL) while the next
        # batch is fetched and decoded; at most one batch waits for it.
        pipeline = self.pipeline = Pipeline(replica=self.replica, lock=self.lock, clock=clock, stopping=self.stopping,
                                            log=self.log, read_copy_path=s.read_copy_path,
                                            read_copy_interval_s=s.read_copy_interval_s,
                                            chunk_events=s.max_batch_events)
        pipeline.start()
        route, assembler, snapshot_queue = self.router.route, self.assembler, self.snapshot_queue
        last_commit, uncommitted = clock.monotonic(), False
        try:
            while not self.stopping.is_set():
                # Memory stays bounded: with enough events held, let DuckDB catch up first —
                # unless the next transaction is still incomplete (then it must be read on).
                # Snapshot rows waiting for DuckDB bound the snapshot side alike.
                read_cdc = assembler.buffered_events < s.max_buffered_events or not (
                    assembler.head_complete() or pipeline.full())
                if read_cdc:
                    self.flow.pause_partitions_ahead(consumer)
                snapshot_messages = 0
                if snapshot_queue.rows_waiting < s.snapshot_buffered_rows:
                    messages = snapshot_consumer.consume(num_messages=s.snapshot_poll_messages,
                                                         timeout=0 if read_cdc else 0.05)
                    for msg in messages:
                        route(msg)
                    snapshot_messages = len(messages)
                if read_cdc:
                    messages = consumer.consume(num_messages=s.poll_messages, timeout=0)
                    if not messages and not snapshot_messages:
                        # Nothing fetched yet: wait for the first message only, then take what came
                        # with it. A wait for a whole poll's worth would hold every change that
                        # trickles in for the full timeout (librdkafka returns at the count or then).
                        messages = consumer.consume(num_messages=1, timeout=IDLE_WAIT_S)
                        if messages:
                            messages += consumer.consume(num_messages=s.poll_messages - 1, timeout=0)
                    for msg in messages:
                        route(msg)
                elif not snapshot_messages:
                    clock.sleep(0.005)
                if not pipeline.full() and self.router.signals:
                    pipeline.put("signals", self.router.take_signals())
                elif not pipeline.full():
                    # CDC and snapshot work take turns; each alone keeps its own order.
                    self._snapshot_turn = not self._snapshot_turn
                    ready = None if snapshot_queue and self._snapshot_turn \
                        else assembler.take_ready(s.max_batch_events)
                    if assembler.refused:
                        self._handle_refused()
                    if ready:
                        pipeline.put("cdc", ready)
                    elif snapshot_queue and (snapshot_queue.rows_waiting >= s.snapshot_stage_rows or not
                                             snapshot_messages or snapshot_queue.last_kind() != "rows"):
                        # Rows wait for a full statement's worth unless nothing more is coming now.
                        pipeline.put("snapshot", snapshot_queue.take(s.snapshot_stage_rows))
                # Offsets of what DuckDB committed, at most every COMMIT_INTERVAL_S (working out
                # the committable offsets has a cost in the number of held events).
                uncommitted = self._collect_applied() or uncommitted
                if clock.monotonic() >= self._next_tick:  # bounds on what waits: reported, then expired
                    assembler.tick(clock.monotonic())
                    self._next_tick = clock.monotonic() + 0.25
                    if assembler.refused:
                        self._handle_refused()
                    self._check_data_loss(consumer)
                    self._take_config_change()
                since = clock.monotonic() - last_commit
                if (uncommitted and since >= COMMIT_INTERVAL_S) or since > 5:
                    self.offsets.commit(consumer, snapshot_consumer)
                    last_commit, uncommitted = clock.monotonic(), False
                    self._warn_if_stuck()
                    self._warn_about_the_source()
                    self.offsets.measure_lag(consumer, snapshot_consumer)
                if clock.monotonic() > next_gc:
                    gc.collect()
                    next_gc = clock.monotonic() + GC_INTERVAL_S
        finally:
            self.ready = False
            pipeline.stop(timeout=120)
            try:
                self._collect_applied()  # what DuckDB committed meanwhile: commit its offsets too
                self.offsets.commit(consumer, snapshot_consumer, wait=True)
                consumer.close()
                snapshot_consumer.close()
            finally:
                self._loss.close()
                self._source_position.close()
                with self.lock:
                    self.replica.close()
                if ports.tune_process:
                    gc.enable()
                    sys.setswitchinterval(0.005)
        self.log.info("applier stopped: %d events in %d transactions applied, %d dead-lettered",
                      self.counts["events_applied"], self.counts["transactions_applied"], self.counts["dead_letters"])

    def _open_spill(self) -> Any:
        if self.ports.spill is None or not self.settings.memory_bound_mb:
            return None
        spill = self.ports.spill()
        if getattr(spill, "removed", 0):
            self.log.info("removed %d spill file(s) a previous run left in %s (their transactions come again from "
                          "Kafka)", spill.removed, spill.path)
        return spill

    def _check_data_loss(self, consumer: ChangeSource) -> None:
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
                self.offsets.committed.pop(tp, None)
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
                lost_streams += [x for x in entry["streams"] if x not in lost_streams]
                self.log.error("DATA LOSS on Kafka: %s; reading %s[%d] again from offset %d%s", loss.detail,
                               loss.topic, loss.partition, loss.restart_at,
                               f", re-snapshotting {', '.join(entry['streams'])}" if entry["streams"] else
                               " (transactions that may have lost their END are expired, their streams re-snapshotted)",
                               extra={**entry, "loss": entry["kind"], "kind": "data_loss"})
            if self.assembler.refused:
                self._handle_refused()
            if lost_streams:
                self._request_snapshot(lost_streams, "Kafka lost data of its CDC topic: " + "; ".join(
                    f"{x.topic}[{x.partition}] {x.kind}" for x in losses if x.topic != self.tx_topic))
        if not self._loss.due_now(self.clock.monotonic()):
            return
        known = {**self.offsets.committed}  # what the applier knew, taken before Kafka is asked
        for tp, offset in self.assembler.committable().items():
            known[tp] = max(offset, known.get(tp, offset))
        try:
            topics = {tp.topic for tp in consumer.assignment()} | {t for t, _ in known}
        except KafkaException:
            return
        self._loss.ask(self.clock.monotonic(), topics, known)

    # -- what DuckDB did ---------------------------------------------------------------

    def _collect_applied(self) -> bool:
        """Account for batches DuckDB has committed; True if there were any."""
        any_applied = False
        for item in self.pipeline.done():
            any_applied = True
            if not isinstance(item, Applied) and item[0] == "signals":
                for signal, token, ask in item[1]:
                    self.assembler.release(token)
                    if ask:
                        self._request_snapshot([signal.stream], "a schema change that may have rewritten existing "
                                               f"rows without row events: {signal.changes}", full=True)
                continue
            if not isinstance(item, Applied):
                self.snapshot_accounting.account(item[1])
                continue
            transactions, stats, elapsed = item.transactions, item.stats, item.seconds
            self.assembler.mark_applied(transactions)
            self.counts["events_applied"] += stats.events
            self.counts["transactions_applied"] += stats.transactions
            self.counts["batches"] += 1
            if item.set_aside:  # DuckDB refused them: dead-lettered, their streams rebuilt by a snapshot
                streams: list[str] = []
                for event, reason in item.set_aside:
                    self.dead_letters.at(event.topic, event.partition, event.offset, None, None, reason, event)
                    if event.stream not in streams:
                        streams.append(event.stream)
                self._request_snapshot(streams, "an event DuckDB refused was dead-lettered")
            if stats.needs_resnapshot:  # rebuilt, or converging, by a full snapshot through the cut
                self._request_snapshot(stats.needs_resnapshot, "a schema change that cannot be applied in place, or "
                                       "that may have rewritten existing rows without row events", full=True)
            last = transactions[-1]
            lag = self.clock.time() - last.committed_at_ms / 1000
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
        return any_applied

    # -- snapshots the applier asks for; dead letters ------------------------------------

    def _request_snapshot(self, streams: list[str], reason: str, full: bool = False) -> None:
        """``full``: a full refresh even of an incremental stream (rows changed without events)."""
        request = ResnapshotRequest(request_id=f"applier-{uuid.uuid4().hex[:12]}", streams=streams, reason=reason,
                                    requested_by="applier", requested_at=datetime.now(timezone.utc), full=full)
        try:
            self.ports.snapshot_requests.send(*request_message(request))
        except Exception:  # noqa: BLE001 - said; the stream stays marked, a later request repairs it
            self.log.error("could not request a snapshot of %s (control topic %s unreachable)",
                           ", ".join(streams), self.settings.control_topic)
            return
        self.log.info("requested a snapshot of %s: %s", ", ".join(streams), reason)

    def _stream_list(self) -> list[str]:
        """The streams this applier replicates, where a list says so (else none)."""
        try:
            if self.config_watch is not None:
                return list(self.config_watch.config.streams)
            return load_connector_config_file(self.settings.connector_config).tables
        except Exception:  # noqa: BLE001 - said elsewhere (_configured_streams, _request_first_snapshots)
            return []

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
        if self.config_watch is not None:
            names = [re.escape(name) for name in self.config_watch.config.streams]
        else:
            try:
                # an entry that names a stream matches that stream's one spelling; any other
                # is Debezium's regex, matched as it is
                names = [re.escape(stream) if (stream := stream_of_include(entry)) else entry for entry in
                         load_connector_config_file(self.settings.connector_config).include_entries]
            except Exception as e:  # noqa: BLE001 - said in _request_first_snapshots too
                self.log.warning("cannot read the connector config %s: events of every table are applied (%s)",
                                 self.settings.connector_config, e)
                return None
        return re.compile("|".join(f"(?:{n})" for n in names)) if names else None

    def _configured_targets(self) -> dict[str, str]:
        """stream -> DuckDB table, as the replication config names them (a new table only:
        one the replica already has keeps its name)."""
        if self.config_watch is None:
            return {}
        return {name: stream.target for name, stream in self.config_watch.config.streams.items() if stream.target}

    def _take_config_change(self) -> None:
        """The replication config file changed (``mallard config apply``): a stream added is
        applied from now on and gets a first snapshot through the cut (the snapshotter waits
        until Debezium captures its table); a stream removed is no longer applied (its table
        stays in the replica, as it was); no restart."""
        if self.config_watch is None:
            return
        change = self.config_watch.check(self.clock.monotonic())
        if change is None or change[1] is None:
            return
        diff = change[1]
        self.router.allowed = self._configured_streams()
        self.router.stream_allowed.clear()
        self.router.removed.difference_update(diff.added)
        self.router.removed.update(diff.removed)
        targets = getattr(self.replica, "targets", None)
        if isinstance(targets, dict):  # a new stream's table is named on its first write
            targets.update(self._configured_targets())
        if diff.added:
            self._loss.expect_streams(list(diff.added))
            # Also a stream removed earlier and added again: its changes meanwhile were not applied.
            self._request_snapshot(list(diff.added), "a stream added to the replication config")

    def _handle_refused(self) -> None:
        """Markers the assembler refused and events it expired: to the dead-letter topic; the
        streams of expired events are re-snapshotted (their changes were not all applied)."""
        streams: list[str] = []
        for r in self.assembler.drain_refused():
            self.dead_letters.at(r.topic, r.partition, r.offset, None, None, r.reason, r.event)
            if r.stream is not None and r.stream not in streams:
                streams.append(r.stream)
        if streams:
            self._request_snapshot(streams, "a transaction was expired incomplete (its events dead-lettered)")

    # -- warnings ------------------------------------------------------------------------

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
        now = self.clock.monotonic()
        if self._stuck is None or self._stuck[0] != head[0]:
            self._stuck = (head[0], now, False)
        elif now - self._stuck[1] > 60 and not self._stuck[2]:
            self.log.warning("transaction %d has %d of its %d events after %.0fs; %d later transaction(s) wait "
                             "behind it (are all CDC topics readable?)", head[0], head[1], head[2],
                             now - self._stuck[1], self.assembler.waiting_transactions - 1)
            self._stuck = (head[0], self._stuck[1], True)
