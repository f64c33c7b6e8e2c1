from mallard.idle import KafkaService


class SnapshotterService(KafkaService):
    name = "snapshotter"
    # A snapshot's framing (begin, rows, end) is keyed by stream, so it stays in
    # order in one partition whatever the partition count.
    owned_topics = ("control_topic", "snapshot_topic")
