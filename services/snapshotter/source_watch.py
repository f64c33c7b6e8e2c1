"""What the snapshotter reports about the CDC side, read when Prometheus scrapes: how
much WAL Debezium's replication slot holds back and whether a walsender reads it
(``pg_replication_slots``), and the state of the connector and its tasks in Kafka
Connect (``GET /connectors/<name>/status``).

A scrape must never hang or fail because Postgres or Connect is down: each read has a
short timeout, and what could not be read is absent (``*_reachable`` says 0) while the
rest of the scrape goes on.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from mallard.adapters import postgres
from mallard.runtime.metrics import gauge

log = logging.getLogger("mallard.snapshotter")

SCRAPE_TIMEOUT_S = 2
"""Per read: Prometheus' default scrape timeout is 10 s, and both reads may time out."""

CONNECT_STATES = ("RUNNING", "PAUSED", "FAILED", "UNASSIGNED", "RESTARTING", "STOPPED")


def slot_families(slot: str, read: Callable[[], dict[str, Any] | None]) -> list[Any]:
    """The slot's series from ``read()`` (``postgres.slot_state``'s dict, None: no such
    slot); Postgres not answering gives only ``reachable`` 0."""
    try:
        state = read()
    except Exception as e:  # noqa: BLE001 - whatever failed, this scrape reports it and goes on
        log.debug("replication slot %s not read at scrape time: %s", slot, e)
        return [gauge("mallard_postgres_reachable", "1 when the snapshotter could read the replication slot's state "
                      "from Postgres at this scrape.", 0)]
    families = [
        gauge("mallard_postgres_reachable", "1 when the snapshotter could read the replication slot's state from "
              "Postgres at this scrape.", 1),
        gauge("mallard_replication_slot_exists", "1 when Debezium's replication slot exists in Postgres.",
              {(slot,): 1 if state else 0}, ("slot",)),
    ]
    if state:
        families += [
            gauge("mallard_replication_slot_active", "1 when a walsender (Debezium) is reading the replication slot.",
                  {(slot,): 1 if state["active"] else 0}, ("slot",)),
            gauge("mallard_replication_slot_retained_wal_bytes", "WAL Postgres keeps for the replication slot "
                  "(current WAL position minus the slot's restart_lsn).",
                  {(slot,): float(state["retained_wal_bytes"] or 0)}, ("slot",)),
        ]
    return families


def read_slot(pg_params: Mapping[str, Any], slot: str) -> dict[str, Any] | None:
    """The slot's state over a connection of its own, bounded in time at every step."""
    conn = postgres.connect(**pg_params, timeout=SCRAPE_TIMEOUT_S)
    try:
        with conn.cursor() as cur:  # SET returns no row: not scalar()
            cur.execute(f"SET statement_timeout = {SCRAPE_TIMEOUT_S * 1000}")
        return postgres.slot_state(conn, slot)
    finally:
        conn.close()


def connector_families(connector: str, read: Callable[[], Mapping[str, Any]]) -> list[Any]:
    """The connector's and each task's state from ``read()`` (Connect's status document),
    one series per state a part can be in (1: it is in that state now), as
    kube-state-metrics does, so an alert can say ``{state="FAILED"} == 1``."""
    try:
        status = read()
    except Exception as e:  # noqa: BLE001 - Connect down, the connector deleted, a timeout: all reported as absent
        log.debug("connector %s status not read at scrape time: %s", connector, e)
        return [gauge("mallard_connect_reachable", "1 when Kafka Connect answered the connector's status at this "
                      "scrape.", 0)]
    states = _known_states([status.get("connector") or {}, *(status.get("tasks") or [])])
    connector_state = (status.get("connector") or {}).get("state")
    tasks = {str(t.get("id", "?")): t.get("state") for t in status.get("tasks") or []}
    return [
        gauge("mallard_connect_reachable", "1 when Kafka Connect answered the connector's status at this scrape.", 1),
        gauge("mallard_connector_state", "The connector's state in Kafka Connect (1 for the state it is in).",
              {(connector, s): 1 if s == connector_state else 0 for s in states}, ("connector", "state")),
        gauge("mallard_connector_task_state", "Each task's state in Kafka Connect (1 for the state it is in).",
              {(connector, task, s): 1 if s == state else 0 for task, state in sorted(tasks.items()) for s in states},
              ("connector", "task", "state")),
        gauge("mallard_connector_tasks", "Tasks Kafka Connect reports for the connector.", len(tasks)),
    ]


def _known_states(parts: list[Mapping[str, Any]]) -> tuple[str, ...]:
    """Connect's states, plus any other a part reports (a newer Connect's)."""
    extra = sorted({str(p["state"]) for p in parts if p.get("state") and p["state"] not in CONNECT_STATES})
    return CONNECT_STATES + tuple(extra)


def read_connector(connect_url: str, connector: str) -> Mapping[str, Any]:
    from mallard.stack.jvm import connector_status_document  # Connect's REST API, plain urllib

    return connector_status_document(connect_url, connector, timeout=SCRAPE_TIMEOUT_S)
