"""Dead letters: a message (or an event) that must not be applied goes to the dead-letter
topic with the reason; one message never stops the applier."""
from __future__ import annotations

import base64
import logging
from datetime import datetime, timezone
from typing import Any

import orjson

from mallard.schemas.deadletter import DeadLetter
from mallard.services.applier.ports import DeadLetters


def _text(raw: bytes | None) -> tuple[str | None, bool]:
    if raw is None:
        return None, True
    try:
        return raw.decode("utf-8"), True
    except UnicodeDecodeError:
        return base64.b64encode(raw).decode(), False


class DeadLetterWriter:
    def __init__(self, topic: DeadLetters, topic_name: str, max_bytes: int, service: str, counts: dict[str, int],
                 log: logging.Logger):
        self.topic, self.topic_name, self.max_bytes, self.service = topic, topic_name, max_bytes, service
        self.counts, self.log = counts, log

    def message(self, msg: Any, error: str) -> None:
        self.at(msg.topic(), msg.partition(), msg.offset(), msg.key(), msg.value(), error)

    def at(self, topic: str, partition: int, offset: int, raw_key: bytes | None, raw_value: bytes | None,
           error: str, event: Any = None) -> None:
        """Always writable: key and value cut to dead_letter_max_bytes (the original stays at its
        offset). If the topic still does not take it, that is logged and the message skipped:
        one message never stops the applier."""
        limit = self.max_bytes
        truncated = (raw_key is not None and len(raw_key) > limit) or (raw_value is not None and len(raw_value) > limit)
        key, key_utf8 = _text(raw_key[:limit] if raw_key is not None else None)
        value, value_utf8 = _text(raw_value[:limit] if raw_value is not None else None)
        if event is not None and value is None:  # an event set aside: what it was, readable
            value, value_utf8 = orjson.dumps({"stream": event.stream, "op": event.op, "key": event.key,
                                              "tx_id": event.tx_id, "total_order": event.total_order},
                                             default=str).decode(), True
        try:
            letter = DeadLetter(error=error, service=self.service, source_topic=topic, source_partition=partition,
                                source_offset=offset, key=key, value=value,
                                encoding="utf-8" if key_utf8 and value_utf8 else "base64", truncated=truncated,
                                key_bytes=None if raw_key is None else len(raw_key),
                                value_bytes=None if raw_value is None else len(raw_value),
                                failed_at=datetime.now(timezone.utc))
            self.topic.send((raw_key or b"")[:limit] or None, letter.model_dump_json().encode())
        except Exception as e:  # noqa: BLE001 - logged and skipped, never a crash loop
            self.counts["dead_letters_failed"] += 1
            self.log.error("could not dead-letter %s[%d]@%d (%s); skipped, the reason was: %s", topic, partition,
                           offset, e, error)
            return
        self.counts["dead_letters"] += 1
        self.log.warning("dead-lettered %s[%d]@%d%s: %s", topic, partition, offset,
                         f" (cut to {limit:,} of {max(len(raw_key or b''), len(raw_value or b'')):,} bytes)"
                         if truncated else "", error)
