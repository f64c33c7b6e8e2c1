"""Render any message on mallard's topics readably (``mallard tail``), and match a
message's key (``mallard tail --key``). Pure.

Every kind is plain JSON on the wire (kcat shows it as is), but snapshot rows batches
written as Arrow (decoded here); this makes them shorter to read: Debezium change
events (c/u/d/r/t/m), tombstones, transaction BEGIN/END, heartbeats; mallard's
snapshot begin/rows/end frames, resnapshot requests (scheduler fires among them),
state resets and dead letters.
"""
from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

from mallard.core.pg_text import row_text
from mallard.schemas.snapshot import is_arrow_rows, read_arrow_rows

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


def _unwrap(value: Any) -> Any:
    """The payload of a Kafka Connect JSON message with schemas (``{"schema", "payload"}``)."""
    return value.get("payload") if isinstance(value, dict) and "schema" in value and "payload" in value else value


def _schema_name(value: Any) -> str:
    schema = value.get("schema") if isinstance(value, dict) else None
    return str(schema.get("name") or "") if isinstance(schema, dict) else ""


def _ms(ms: Any) -> str:
    try:
        return datetime.fromtimestamp(int(ms) / 1000, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    except (TypeError, ValueError, OverflowError):
        return str(ms)


def _text(raw: bytes | None, limit: int = 200) -> str:
    if raw is None:
        return "null"
    text = raw.decode("utf-8", "replace")
    return text if len(text) <= limit else text[:limit] + "…"


def key_matches(key: bytes | None, wanted: str) -> bool:
    """Whether a message's key is ``wanted``, given as the key's value: ``42`` or ``abc``
    matches a one-column key (Debezium's ``{"schema":…,"payload":{"id":42}}``), a JSON
    object matches the key's columns it names (``{"id":42}``, or a subset of a composite
    key), and any text matches a plain key equal to it (a snapshot's stream, a request id)."""
    if key is None:
        return False
    payload = _unwrap(_json(key))
    try:
        want = json.loads(wanted)
    except ValueError:
        want = wanted
    if isinstance(want, dict):
        return isinstance(payload, dict) and bool(want) and all(k in payload and payload[k] == v for k, v in want.items())
    candidates = [payload]
    if isinstance(payload, dict) and len(payload) == 1:
        candidates.append(next(iter(payload.values())))
    for c in candidates:
        if isinstance(c, (dict, list)):
            if c == want:
                return True
        elif c == want and type(c) is type(want) or (c is not None and str(c) == wanted):
            return True
    return key.decode("utf-8", "replace") == wanted


def _side_schemas(value: Any) -> dict[str, Any]:
    """The before/after struct schemas of a change event with schemas (by field name)."""
    schema = value.get("schema") if isinstance(value, dict) else None
    fields = schema.get("fields") if isinstance(schema, dict) else None
    return {f.get("field"): f for f in fields or [] if isinstance(f, dict)}


def decoded(key: bytes | None, value: bytes | None) -> tuple[Any, Any]:
    """(key, value) of a change event with each column as Postgres prints it (from the
    event's own schema): numerics as decimals, dates, timestamps, intervals, bytea..."""
    k, v = _json(key), _json(value)
    key_payload = _unwrap(k)
    if isinstance(k, dict) and "schema" in k:
        key_payload = row_text(k.get("schema"), key_payload)
    payload = _unwrap(v)
    if isinstance(payload, dict) and "op" in payload:
        sides = _side_schemas(v)
        payload = {**payload, **{side: row_text(sides.get(side), payload.get(side))
                                 for side in ("before", "after") if payload.get(side) is not None}}
    return key_payload, payload


def _change_event(where: str, key_payload: Any, payload: dict[str, Any]) -> str:
    src = payload.get("source") or {}
    tx = payload.get("transaction") or {}
    head = (f"{where} {OPS.get(payload['op'], payload['op'])} {src.get('schema')}.{src.get('table')} "
            f"txId={src.get('txId')} lsn={src.get('lsn')} ts_ms={src.get('ts_ms')} committed={_ms(src.get('ts_ms'))}")
    if tx:
        head += f" tx_order={tx.get('total_order')}"
    body = [f"  key    {_compact(key_payload)}"]
    for side in ("before", "after"):
        if payload.get(side) is not None:
            body.append(f"  {side:<6} {_compact(payload[side])}")
    if payload.get("message") is not None:  # op m: a logical decoding message (pg_logical_emit_message)
        body.append(f"  message {_compact(payload['message'])}")
    return "\n".join([head, *body])


def _mallard_message(where: str, v: dict[str, Any]) -> str | None:
    kind = v.get("kind")
    if kind == "begin":
        extra = "".join([f" where={v['where']!r}" if v.get("where") else "", " incremental" if v.get("incremental") else "",
                         f" request={v['request_id']}" if v.get("request_id") else ""])
        return (f"{where} snapshot BEGIN {v.get('stream')} id={v.get('snapshot_id')} started={v.get('started_at')} "
                f"cut={_compact(v.get('cut'))}{extra} columns={[c.get('name') for c in v.get('columns', [])]}")
    if kind == "rows":
        rows = v.get("rows") or []
        first = f" first={_compact(rows[0])[:200]}" if rows else ""
        return f"{where} snapshot ROWS {v.get('stream')} id={v.get('snapshot_id')} batch={v.get('batch')} rows={len(rows)}{first}"
    if kind == "end":
        state = (f" {v.get('update_key')} up to {v.get('max_update_key')!r}" if v.get("update_key") else "")
        return (f"{where} snapshot END {v.get('stream')} id={v.get('snapshot_id')} rows={v.get('row_count')} "
                f"batches={v.get('batches')} finished={v.get('finished_at')}{state}")
    if kind == "dead_letter":
        original = v.get("value")
        shown = original if original is None or len(original) <= 200 else original[:200] + "…"
        return (f"{where} dead letter from {v.get('source_topic')}[{v.get('source_partition')}]@{v.get('source_offset')}"
                f" by {v.get('service')}: {v.get('error')}\n"
                f"  failed {v.get('failed_at')}, original ({v.get('encoding')}) key {v.get('key')!r}\n"
                f"  value  {shown!r}")
    if kind == "resnapshot":
        by = str(v.get("requested_by") or "")
        what = "schedule fire" if by.startswith("scheduler:") else "resnapshot request"
        extra = "".join([f" where={v['where']!r}" if v.get("where") else "", " full" if v.get("full") else ""])
        return (f"{where} {what} id={v.get('request_id')} streams={v.get('streams')}{extra} "
                f"reason={v.get('reason')!r} by={by} at={v.get('requested_at')}")
    if kind == "state-reset":
        to = f"resume after {v['to_value']!r}" if v.get("to_value") is not None else "forget (read every row)"
        return (f"{where} state reset id={v.get('reset_id')} streams={v.get('streams')} {to} "
                f"by={v.get('requested_by')} at={v.get('requested_at')}")
    return None


def _arrow_rows(where: str, value: bytes) -> str:
    try:
        header, table = read_arrow_rows(value)
    except ValueError as e:
        return f"{where} undecodable Arrow value: {e}"
    first = f" first={_compact(list(table.slice(0, 1).to_pylist()[0].values()))[:200]}" if table.num_rows else ""
    return (f"{where} snapshot ROWS {header.stream} id={header.snapshot_id} batch={header.batch} "
            f"rows={table.num_rows} (Arrow, {len(value)} bytes){first}")


def as_json(topic: str, partition: int, offset: int, timestamp_ms: int | None, headers: list[tuple[str, bytes]] | None,
            key: bytes | None, value: bytes | None, raw: bool = False) -> dict[str, Any]:
    """One message as one JSON object (``tail --json``): where it is, when, its headers,
    and its key and value (a change event's columns decoded unless ``raw``)."""
    if is_arrow_rows(value):
        shown_key, shown = _json(key), describe(topic, partition, offset, key, value)
    elif raw:
        shown_key, shown = _json(key), _json(value)
    else:
        shown_key, shown = decoded(key, value)
    if isinstance(shown_key, bytes):
        shown_key = shown_key.decode("utf-8", "replace")
    if isinstance(shown, bytes):
        shown = shown.decode("utf-8", "replace")
    return {"topic": topic, "partition": partition, "offset": offset,
            "timestamp": _ms(timestamp_ms) if timestamp_ms is not None else None,
            "headers": {k: (v.decode("utf-8", "replace") if isinstance(v, bytes) else v) for k, v in headers or []},
            "key": shown_key, "value": shown}


def describe(topic: str, partition: int, offset: int, key: bytes | None, value: bytes | None,
             raw: bool = False) -> str:
    """One message for a person; change events' columns as Postgres prints them (``raw``:
    as Debezium sent them: base64 numerics, day counts...)."""
    where = f"{topic}[{partition}]@{offset}"
    if is_arrow_rows(value):
        return _arrow_rows(where, value)
    k, v = _json(key), _json(value)
    key_payload = _unwrap(k)
    if value is None:
        return f"{where} tombstone key={_compact(key_payload) if not isinstance(key_payload, bytes) else _text(key)}"
    if not isinstance(v, dict):
        return f"{where} undecodable value={_text(value)!r} key={_text(key)!r}"
    payload = _unwrap(v)
    if isinstance(payload, dict) and "op" in payload and ("source" in payload or "after" in payload):
        if not raw:
            key_payload, payload = decoded(key, value)
        return _change_event(where, key_payload, payload)
    if isinstance(payload, dict) and payload.get("status") in ("BEGIN", "END"):
        counts = ", ".join(f"{c['data_collection']}={c['event_count']}" for c in payload.get("data_collections") or [])
        return (f"{where} transaction {payload['status']} id={payload.get('id')} ts={_ms(payload.get('ts_ms'))}"
                + (f" events={payload.get('event_count')} ({counts})" if payload["status"] == "END" else ""))
    if _schema_name(v).endswith(".Heartbeat") or (isinstance(payload, dict) and set(payload) == {"ts_ms"}):
        server = key_payload.get("serverName") if isinstance(key_payload, dict) else None
        return f"{where} heartbeat{f' {server}' if server else ''} ts={_ms(payload.get('ts_ms'))}"
    rendered = _mallard_message(where, v)
    if rendered is not None:
        return rendered
    return f"{where} {_compact(v)[:500]}"
