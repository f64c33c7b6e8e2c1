"""Render any message on mallard's topics readably (``mallard tail``). Pure."""
from __future__ import annotations

import json
from typing import Any

OPS = {"c": "insert", "u": "update", "d": "delete", "r": "read", "t": "truncate", "m": "message"}


def _json(raw: bytes | None) -> Any:
    if raw is None:
        return None
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return raw


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), default=str, ensure_ascii=False)


def describe(topic: str, partition: int, offset: int, key: bytes | None, value: bytes | None) -> str:
    where = f"{topic}[{partition}]@{offset}"
    k, v = _json(key), _json(value)
    key_payload = k.get("payload") if isinstance(k, dict) and "schema" in k else k
    if value is None:
        return f"{where} tombstone key={_compact(key_payload)}"
    if not isinstance(v, dict):
        return f"{where} undecodable value={v!r:.200}"
    payload = v.get("payload") if "schema" in v else None
    if isinstance(payload, dict) and "op" in payload:
        src = payload.get("source", {})
        tx = payload.get("transaction") or {}
        head = (f"{where} {OPS.get(payload['op'], payload['op'])} {src.get('schema')}.{src.get('table')} "
                f"txId={src.get('txId')} lsn={src.get('lsn')} ts_ms={src.get('ts_ms')}")
        if tx:
            head += f" tx_order={tx.get('total_order')}"
        body = [f"  key    {_compact(key_payload)}"]
        for side in ("before", "after"):
            if payload.get(side) is not None:
                body.append(f"  {side:<6} {_compact(payload[side])}")
        return "\n".join([head, *body])
    if isinstance(payload, dict) and payload.get("status") in ("BEGIN", "END"):
        counts = ", ".join(f"{c['data_collection']}={c['event_count']}" for c in payload.get("data_collections") or [])
        return (f"{where} transaction {payload['status']} id={payload.get('id')}"
                + (f" events={payload.get('event_count')} ({counts})" if payload["status"] == "END" else ""))
    kind = v.get("kind")
    if kind == "begin":
        return (f"{where} snapshot BEGIN {v.get('stream')} id={v.get('snapshot_id')} cut={_compact(v.get('cut'))} "
                f"columns={[c.get('name') for c in v.get('columns', [])]}")
    if kind == "rows":
        return f"{where} snapshot ROWS {v.get('stream')} id={v.get('snapshot_id')} batch={v.get('batch')} rows={len(v.get('rows', []))}"
    if kind == "end":
        return f"{where} snapshot END {v.get('stream')} id={v.get('snapshot_id')} rows={v.get('row_count')} batches={v.get('batches')}"
    if kind == "dead_letter":
        return (f"{where} dead letter from {v.get('source_topic')}[{v.get('source_partition')}]@{v.get('source_offset')}"
                f" by {v.get('service')}: {v.get('error')}")
    if kind == "resnapshot":
        return (f"{where} resnapshot request id={v.get('request_id')} streams={v.get('streams')} "
                f"reason={v.get('reason')!r} by={v.get('requested_by')}")
    return f"{where} {_compact(v)[:500]}"
