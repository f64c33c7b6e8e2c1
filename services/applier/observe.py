"""What the applier shows: its state (/healthz) and its metrics (/metrics), read from the
service's parts at request time."""
from __future__ import annotations

from typing import Any

from mallard.runtime.metrics import counter, gauge


def state(svc: Any, service_state: dict[str, Any]) -> dict[str, Any]:
    """/healthz: the service's base state, its counts, progress, tables, what is held."""
    base = {**service_state, "duckdb_path": svc.settings.duckdb_path, **svc.counts}
    if svc.replica is not None:
        base["progress"] = svc.replica.progress()
        base["tables"] = svc.replica.table_report()
    if svc.settings.read_copy_path:
        base["read_copy"] = svc.read_copy
    if svc.assembler is not None:
        base["buffered_events"] = svc.assembler.buffered_events
        base["waiting_transactions"] = svc.assembler.waiting_transactions
        # What verify need not wait for: events of a transaction whose END has not come for
        # a minute (a forged transaction id keeps its one event until it expires).
        base["events_without_end"] = svc.assembler.events_without_end(svc.assembler.stuck_after_s)
        base["transactions_expired"] = svc.assembler.transactions_expired
        base["markers_refused"] = svc.assembler.markers_refused
        base["held_bytes"] = svc.assembler.held_bytes
        base["transactions_spilled"] = svc.assembler.transactions_spilled
        base["events_spilled"] = svc.assembler.events_spilled
        if svc._loss.detected:  # loud, but ready: the re-snapshot that repairs it is under way
            base["data_loss"] = svc._loss.report()
        if svc.assembler.stuck:  # replication is held up: not ready, and why
            base["ready"] = False
            base["not_ready_reason"] = svc.assembler.stuck
    return base


def metric_families(svc: Any) -> list[Any]:
    """/metrics, at scrape time."""
    c = svc.counts
    families = [
        counter("mallard_events_applied", "Change events applied to DuckDB.", c["events_applied"]),
        counter("mallard_transactions_applied", "Postgres transactions applied to DuckDB.", c["transactions_applied"]),
        counter("mallard_apply_batches", "DuckDB transactions of change events committed.", c["batches"]),
        counter("mallard_dead_letters", "Messages sent to the dead-letter topic.", c["dead_letters"]),
        counter("mallard_snapshots_applied", "Snapshots finished in DuckDB, by result.",
                {("merged",): c["snapshots_merged"], ("abandoned",): c["snapshots_abandoned"]}, ("result",)),
        counter("mallard_snapshot_rows_staged", "Snapshot rows staged in DuckDB.", c["snapshot_rows_staged"]),
        gauge("mallard_consumer_lag_messages", "Messages on the applier's topics not yet applied (high watermark "
              "minus the committed offset), per partition.",
              {(t, str(p)): lag for (t, p), lag in sorted(svc.offsets.lag.items())}, ("topic", "partition")),
    ]
    if svc.assembler is not None:
        a = svc.assembler
        families.append(gauge("mallard_buffered_events", "Decoded events waiting for their transaction or for "
                              "DuckDB.", a.buffered_events))
        families.append(gauge("mallard_stuck_transaction_seconds", "How long the next transaction in commit order "
                              "has waited for its missing events, once past MALLARD_TX_STUCK_AFTER_S (0: none).",
                              a.stuck_seconds))
        families.append(counter("mallard_transactions_expired", "Transactions given up on incomplete (their "
                                "events dead-lettered, their streams re-snapshotted).", a.transactions_expired))
        families.append(counter("mallard_transaction_markers_refused", "Transaction markers dead-lettered (a "
                                "commit LSN beyond the source's, no events, a transaction given up on).",
                                a.markers_refused))
        families.append(counter("mallard_dead_letters_failed", "Messages that could not even be dead-lettered "
                                "(logged and skipped).", c["dead_letters_failed"]))
    families += svc._loss.metric_families()
    if svc._last_commit_ms is not None:
        families.append(gauge("mallard_last_applied_commit_timestamp_seconds", "Postgres commit time of the last "
                              "transaction applied (now minus this is how far behind the replica is).",
                              svc._last_commit_ms / 1000))
    return families
