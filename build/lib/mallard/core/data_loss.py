"""Has Kafka lost data under the applier? Pure: facts about each partition in, losses out.

Kafka can lose messages the applier has not applied yet: a topic deleted and recreated
(an operator, a broker that lost its disk and got its topics auto-created again), a log
truncated by an unclean leader election or a crash with unflushed data, retention that
removed messages nobody read. librdkafka hides most of it: a fetch position beyond the
end or before the start is reset to the earliest offset (``auto.offset.reset``) without a
word, and a recreated topic just starts again at 0. So the applier compares what it knew
of each partition with what Kafka says now, cheaply and periodically, and calls it a loss
when:

- **recreated**: the topic's id is not the one seen before (whatever the offsets say:
  offsets of the new topic mean other messages);
- **beyond_end**: the group's committed offset, or the next offset the applier had
  already read to, is beyond the partition's end (high watermark). Nothing consumed can
  be beyond the end: what the applier knew must be captured *before* the watermarks
  are read, so a message produced in between is never taken for a loss;
- **below_start**: everything the applier had (committed, or read to) is before the
  partition's start (low watermark): messages in between were removed unread.

Nothing known of a partition (a first start, a new topic) is never a loss.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

TopicPartition = tuple[str, int]

RECREATED, BEYOND_END, BELOW_START = "recreated", "beyond_end", "below_start"
KINDS = (RECREATED, BEYOND_END, BELOW_START)


@dataclass(frozen=True, slots=True)
class Known:
    """What the applier itself knew of a partition before Kafka was asked."""

    next_offset: int | None = None
    """One past the last offset it read (or committed) there; None: nothing."""
    topic_id: str | None = None
    """The topic's id when the applier last looked; None: never looked."""


@dataclass(frozen=True, slots=True)
class Observed:
    """What Kafka says of a partition now."""

    low: int
    """The first offset still there (low watermark)."""
    high: int
    """The offset the next message gets (high watermark)."""
    committed: int | None = None
    """The consumer group's committed offset; None: none."""
    topic_id: str | None = None


@dataclass(frozen=True, slots=True)
class Loss:
    topic: str
    partition: int
    kind: str
    detail: str
    restart_at: int
    """Where to read the partition from again: the start of what exists."""


def detect(known: Mapping[TopicPartition, Known], observed: Mapping[TopicPartition, Observed]) -> list[Loss]:
    """Losses, per partition observed (in partition order). A partition not observed (its
    topic gone, or not answered) is no evidence either way: it is looked at again later."""
    losses = []
    for tp in sorted(observed):
        obs = observed[tp]
        k = known.get(tp) or Known()
        topic, partition = tp
        if obs.low < 0 or obs.high < obs.low:  # not a real answer (librdkafka's -1 for unknown)
            continue
        if k.topic_id is not None and obs.topic_id is not None and k.topic_id != obs.topic_id:
            losses.append(Loss(topic, partition, RECREATED,
                               f"topic {topic} was recreated under the applier (id {k.topic_id} is now "
                               f"{obs.topic_id}): every message it had not applied is gone"
                               + (f", and its offsets (up to {k.next_offset}) name other messages now"
                                  if k.next_offset else ""), obs.low))
            continue
        ahead = [(what, o) for what, o in (("committed offset", obs.committed), ("offset read to", k.next_offset))
                 if o is not None and o > obs.high]
        if ahead:
            what, offset = max(ahead, key=lambda x: x[1])
            losses.append(Loss(topic, partition, BEYOND_END,
                               f"{topic}[{partition}]: the {what} {offset} is beyond the partition's end {obs.high}: "
                               f"Kafka lost the messages from {obs.high} on (a truncated log, or a recreated topic)",
                               obs.low))
            continue
        had = [o for o in (obs.committed, k.next_offset) if o is not None]
        if had and max(had) < obs.low:
            losses.append(Loss(topic, partition, BELOW_START,
                               f"{topic}[{partition}]: messages {max(had)} to {obs.low - 1} were removed before the "
                               f"applier read them (the partition now starts at {obs.low}: retention?)", obs.low))
    return losses
