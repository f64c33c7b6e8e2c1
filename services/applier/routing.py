"""Routing: each message fetched from Kafka, decoded and handed to the core that holds it
(the transaction assembler, the snapshot tracker), or dead-lettered with the reason.

The hot path: ``route`` runs for every message, and calls the decoder and the core
directly (no port in between)."""
from __future__ import annotations

import re
from typing import Any

import orjson
from confluent_kafka import KafkaError

from mallard.core.arrow_rows import snapshot_table, transport_schema
from mallard.core.changes import Decoder, PoisonMessage, split_envelope
from mallard.core.cut import Cut
from mallard.core.schema_signal import SchemaSignal, schema_signal
from mallard.core.snapshots import SnapshotFrame, SnapshotTracker, decode_columns, frame_schema
from mallard.core.transactions import TransactionAssembler
from mallard.schemas.snapshot import (SnapshotBegin, SnapshotEnd, SnapshotFailed, is_arrow_rows, read_arrow_rows,
                                      snapshot_message_adapter)
from mallard.services.applier.dead_letters import DeadLetterWriter
from mallard.services.applier.snapshot_work import SnapshotQueue


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


class Router:
    def __init__(self, *, tx_topic: str, snapshot_topic: str, assembler: TransactionAssembler, decoder: Decoder,
                 snapshots: SnapshotTracker, snapshot_queue: SnapshotQueue, dead_letters: DeadLetterWriter,
                 allowed: re.Pattern | None, log: Any, topic_streams: dict[str, set[str]] | None = None,
                 message_topic: str | None = None):
        self.tx_topic, self.snapshot_topic, self.message_topic = tx_topic, snapshot_topic, message_topic
        self.signals: list[tuple[SchemaSignal, int]] = []
        """DDL signals routed and not yet handed to DuckDB, each with its offset's hold token."""
        self.assembler, self.decoder, self.snapshots = assembler, decoder, snapshots
        self.snapshot_queue, self.dead_letters, self.log = snapshot_queue, dead_letters, log
        self.allowed = allowed
        """The streams events may be applied for (None: every one)."""
        self.stream_allowed: dict[str, bool] = {}
        self.removed: set[str] = set()
        """Streams taken out of the replication config while running: their events, still on
        their way until the connector stops capturing them, are skipped quietly."""
        self.skipped_removed: dict[str, int] = {}
        """stream -> whether ``allowed`` matches it (asked once per stream)."""
        self.topic_streams = topic_streams if topic_streams is not None else {}
        """topic -> the streams whose events came on it: Debezium's topic names a table only
        roughly ('Order Items' and 'Order_Items' share one), the events' source block exactly."""

    def route(self, msg: Any) -> None:
        # Runs for every message: each of librdkafka's accessors is called once.
        error = msg.error()
        if error:
            if error.code() != KafkaError._PARTITION_EOF:
                self.log.warning("consumer: %s", error)
            return
        topic, partition, offset, value = msg.topic(), msg.partition(), msg.offset(), msg.value()
        tp = (topic, partition)
        if topic == self.snapshot_topic:
            self._route_snapshot(msg, tp)
            return
        if topic == self.message_topic:
            self._route_logical_message(msg, tp, offset, value)
            return
        assembler = self.assembler
        try:
            if topic == self.tx_topic:
                if value is None:
                    assembler.add_done(tp, offset)
                else:
                    assembler.add_marker(self.decoder.decode_transaction(topic, partition, offset, value))
            elif value is None:  # tombstone: the delete before it did the work
                assembler.add_done(tp, offset)
            else:
                event = self.decoder.decode_change(topic, partition, offset, msg.key(), value)
                allowed = self.stream_allowed.get(event.stream)
                if allowed is None:
                    allowed = self.stream_allowed[event.stream] = self.allowed is None or bool(
                        self.allowed.fullmatch(event.stream))
                    self.topic_streams.setdefault(topic, set()).add(event.stream)
                if not allowed and event.stream in self.removed:  # no longer replicated: not poison
                    if event.stream not in self.skipped_removed:
                        self.log.info("%s is no longer in the replication config: its changes are not applied",
                                      event.stream)
                    self.skipped_removed[event.stream] = self.skipped_removed.get(event.stream, 0) + 1
                    assembler.add_event(None, event.tx_id, event.total_order, tp, offset)
                    return
                if not allowed:  # never creates a table; still counts toward its transaction
                    self.dead_letters.message(msg, f"an event for {event.stream}, which is not a stream of the replication "
                                      "config (nor of the connector's table.include.list)")
                    assembler.add_event(None, event.tx_id, event.total_order, tp, offset)
                    return
                assembler.add_event(event, event.tx_id, event.total_order, tp, offset)
        except PoisonMessage as e:
            self.dead_letters.message(msg, str(e))
            position = _tx_of_poison(value) if value is not None and topic != self.tx_topic else None
            if position is not None:
                assembler.add_event(None, position[0], position[1], tp, offset)
            else:
                assembler.add_done(tp, offset)

    def _route_logical_message(self, msg: Any, tp: tuple[str, int], offset: int, value: bytes | None) -> None:
        """mallard's DDL signal: its stream is marked converging in DuckDB before its offset
        may be committed (held until then). Any other logical decoding message (an
        application's own) is not mallard's business."""
        try:
            signal = schema_signal(value) if value is not None else None
        except PoisonMessage as e:
            self.dead_letters.message(msg, str(e))
            self.assembler.add_done(tp, offset)
            return
        if signal is None or not (self.allowed is None or self.allowed.fullmatch(signal.stream)):
            self.assembler.add_done(tp, offset)
            return
        self.signals.append((signal, self.assembler.hold(tp, offset)))

    def take_signals(self) -> list[tuple[SchemaSignal, int]]:
        signals, self.signals = self.signals, []
        return signals

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
                    self.snapshot_queue.put([self.snapshots.abandon(frame, f"batch {batch}: {e}")])
                    self.snapshots.skip(tp, offset)
                    raise
                self.snapshot_queue.put(self.snapshots.rows(frame, batch, columns, tp, offset))
                return
            message = snapshot_message_adapter.validate_python(raw)
        except (ValueError, orjson.JSONDecodeError) as e:  # pydantic's ValidationError is a ValueError
            self.dead_letters.message(msg, f"snapshot message: {str(e).splitlines()[0]}")
            self.snapshots.skip(tp, offset)
            return
        if isinstance(message, SnapshotBegin):
            # The filter runs again here (the end-of-snapshot delete): from Kafka, so checked.
            from mallard.core.filters import FilterError, check_filter

            try:
                where = check_filter(message.where) if message.where is not None else None
            except FilterError as e:
                self.dead_letters.message(msg, f"snapshot begin: bad filter: {e}")
                self.snapshots.skip(tp, offset)
                return
            columns = [c.model_dump() for c in message.columns]
            frame = SnapshotFrame(message.snapshot_id, message.stream,
                                  Cut(message.cut.xmin, message.cut.xmax, frozenset(message.cut.xip)),
                                  frame_schema(message.stream, columns), where, message.started_at,
                                  message.request_id, incremental=message.incremental,
                                  rows_format=message.rows_format, requested_at=message.requested_at)
            self.snapshot_queue.put(self.snapshots.begin(frame, tp, offset))
        elif isinstance(message, SnapshotEnd):
            frame = self.snapshots.frame(message.stream, message.snapshot_id)
            if frame is None:
                self.snapshots.skip(tp, offset)
            else:
                frame.read_finished_at = message.finished_at
                self.snapshot_queue.put(self.snapshots.end(frame, message.batches, message.row_count, tp, offset))
        elif isinstance(message, SnapshotFailed):  # abandons what it began; recorded for status and --wait
            self.snapshot_queue.put(self.snapshots.failed(message.stream, message.snapshot_id, message.request_id,
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
            self.snapshot_queue.put([self.snapshots.abandon(frame, why)])
            self.snapshots.skip(tp, offset)
            raise PoisonMessage(why)
        self.snapshot_queue.put(self.snapshots.rows(frame, header.batch, table, tp, offset))
