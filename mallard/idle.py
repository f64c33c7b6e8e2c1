"""The shape of a service before its work exists: reach Kafka, create the topics
it owns, report ready, and wait for SIGTERM. Later issues replace ``work()``."""
from __future__ import annotations

from mallard.adapters.kafka import ensure_topics, wait_for_broker
from mallard.service import Service


class KafkaService(Service):
    owned_topics: tuple[str, ...] = ()
    """Settings field names of the topics this service creates if missing."""

    def run(self) -> None:
        s = self.settings
        wait_for_broker(s.kafka_bootstrap_servers, timeout=120, stop=self.stopping)
        topics = {getattr(s, f): 1 for f in self.owned_topics}
        created = ensure_topics(s.kafka_bootstrap_servers, topics) if topics else []
        self.log.info(
            "%s up: kafka=%s%s", self.name, s.kafka_bootstrap_servers,
            f", created topics {', '.join(created)}" if created else "",
        )
        self.ready = True
        self.work()
        self.log.info("%s stopped", self.name)

    def work(self) -> None:
        self.stopping.wait()
