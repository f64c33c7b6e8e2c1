from typing import Literal

from pydantic import Field

from mallard.config.settings import DEFAULT_CONNECTOR_CONFIG, PostgresSettings, ServiceSettings


class ApplierSettings(ServiceSettings, PostgresSettings):
    """The Postgres settings serve one query only: the source's current WAL position
    (pg_current_wal_lsn(), which needs no privilege), the bound of a commit LSN."""

    health_port: int = Field(18082, description="Port of the applier's HTTP endpoint: /healthz, /tables, /query; 0 disables it.")
    query_timeout_s: float = Field(
        60.0, gt=0, description="Seconds a /query read may run before it is interrupted (DuckDB has no statement "
        "timeout of its own).")
    query_max_rows: int = Field(
        10_000, ge=1, description="Rows a /query answer holds at most (\"truncated\": true when there were more).")
    duckdb_path: str = Field(".mallard/duckdb/mallard.duckdb", description="The DuckDB file the applier alone writes.")
    consumer_group: str = Field("mallard-applier", description="Kafka consumer group; its committed offsets are the replication state.")
    max_batch_events: int = Field(
        50_000, description="Upper bound of events per DuckDB transaction (whole Postgres transactions only; bounds memory)."
    )
    memory_bound_mb: float = Field(
        512, ge=0, description="Megabytes of change events the applier holds in memory while their transactions "
        "are incomplete (estimated); past it, the biggest transaction held is spilled to disk (a folder beside the "
        "DuckDB file, <duckdb_path>.spill) and read back in chunks of max_batch_events, still applied as one DuckDB "
        "transaction. 0: never spill.")
    poll_messages: int = Field(10_000, description="Messages fetched from Kafka per poll.")
    max_buffered_events: int = Field(
        60_000, description="Decoded events held (waiting for their transaction or for DuckDB) before the applier "
        "pauses fetching while DuckDB catches up: bounds memory (a larger Postgres transaction is still read whole)."
    )
    fetch_queue_kb: int = Field(
        64 * 1024, description="Kilobytes of messages prefetched (librdkafka queued.max.messages.kbytes): "
        "fetching ahead is what keeps the applier busy."
    )
    snapshot_consumer_group: str = Field(
        "", description="Kafka consumer group of the snapshot topic (its own consumer); empty: <consumer_group>-snapshots.")
    snapshot_fetch_queue_kb: int = Field(
        32 * 1024, description="Kilobytes of snapshot messages prefetched: small, so memory stays flat in table size.")
    snapshot_poll_messages: int = Field(8, description="Snapshot messages (batches of thousands of rows) fetched per poll.")
    snapshot_buffered_rows: int = Field(
        300_000, description="Decoded snapshot rows held for DuckDB before the applier pauses fetching (bounds memory).")
    snapshot_stage_rows: int = Field(
        245_760, description="Snapshot rows staged in DuckDB per statement, at least (while more are coming): "
        "from one DuckDB row group (122,880 rows) on, DuckDB writes them to the file directly instead of "
        "through its WAL, at half the cost.")
    snapshot_merge: Literal["swap", "rewrite"] = Field(
        "swap", description="How a full snapshot of a table with a primary key is merged at its end. swap: staged "
        "under its key as it arrives, swapped in, then fixed up with what CDC wrote after the cut, in time "
        "proportional to those changes (CDC waits little). rewrite: the table rewritten from the staged rows in one "
        "step at the end (CDC waits for all of it; the older way, kept to compare).")
    duckdb_memory_limit: str = Field("300MB", description="DuckDB's memory limit (its page cache, indexes included: they are evicted and reloaded as needed): keeps the applier's memory flat in the replica's size.")
    duckdb_checkpoint_threshold: str = Field(
        "256MB", pattern=r"^\d+(\.\d+)?\s*[KMGT]?i?B$",
        description="DuckDB's checkpoint_threshold: the WAL size at which a commit checkpoints. DuckDB compares it "
        "with the WAL plus an estimate of the commit's own size that for updates scattered over a big table is about "
        "100 times the WAL it writes: at its 16MB default a batch of a few hundred updates checkpoints, rewriting the "
        "table, at every commit (bench/RESULTS.md). Larger: fewer checkpoints, but a longer WAL replay when the "
        "applier restarts after a crash (67MB of such a WAL took 16 s on a loaded 2-core machine).")
    duckdb_threads: int = Field(
        1, ge=0, description="DuckDB's worker threads; 0: its default (one per core). One: on a small machine "
        "the decoding thread (and a broker) need the other cores more than DuckDB does.")
    session_timeout_ms: int = Field(6000, description="Kafka consumer session timeout (a group join takes about half of it).")
    topic_refresh_ms: int = Field(5000, description="How often new CDC topics (new tables) are discovered.")
    read_copy_path: str = Field(
        "", description="Where to publish a read-only copy of the DuckDB file for other readers (BI tools): written "
        "between batches (whole transactions only) to a temporary file and renamed into place; empty: no copy.")
    read_copy_interval_s: float = Field(
        60.0, description="Seconds between read-only copies (a copy is written only when something was applied since "
        "the last one).")
    replication_config: str = Field("", description="Replication config (YAML): the DuckDB table each stream goes to "
                                    "(streams.<s>.target) and the DuckDB file (target.path); empty: defaults.")
    connector_config: str = Field(str(DEFAULT_CONNECTOR_CONFIG),
                                  description="Debezium connector config: its table.include.list are the streams that get a "
                                  "first snapshot when the replica has none.")
    tx_stuck_after_s: float = Field(
        60.0, gt=0, description="Seconds the next transaction in commit order may gain none of its missing events "
        "before the applier reports itself not ready (/healthz 503, with the reason).")
    tx_give_up_after_s: float = Field(
        600.0, gt=0, description="Seconds after which such a transaction (or events whose END never comes) is expired: "
        "its events go to the dead-letter topic, the streams they touch are re-snapshotted, later transactions flow.")
    commit_lsn_check_interval_s: float = Field(
        0.1, ge=0, description="At most this often the source is asked its WAL position, when a transaction's END "
        "claims a commit LSN beyond the last known one (one beyond the source's is dead-lettered).")
    commit_lsn_window_bytes: int = Field(
        64 << 30, gt=0, description="While the source cannot be asked: how far beyond the last LSN known a commit LSN "
        "may be (farther: dead-lettered).")
    data_loss_check_interval_s: float = Field(
        5.0, gt=0, description="How often the applier asks Kafka whether it lost data under it (a recreated topic, an "
        "offset beyond a partition's end, messages removed unread): four requests, off the main loop. A loss is "
        "reported (log, /healthz data_loss, mallard status, metrics), the partition read again from its start and "
        "its stream re-snapshotted.")
    dead_letter_max_bytes: int = Field(
        64 * 1024, gt=0, description="Bytes of the original key and value a dead letter carries at most (it says when "
        "it was cut and the original size; the original stays at its offset).")

    @property
    def snapshot_group(self) -> str:
        return self.snapshot_consumer_group or f"{self.consumer_group}-snapshots"
