from mallard.idle import KafkaService


class SnapshotterService(KafkaService):
    name = "snapshotter"
    # The snapshot topic must be one partition per stream ordering: framing (begin,
    # rows, end) is keyed by stream so any partition count keeps a snapshot in order.
    owned_topics = ("control_topic", "snapshot_topic")
