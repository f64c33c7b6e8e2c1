"""The DDL signal (schemas/ddl.py), read from the logical decoding message Debezium
publishes on ``<prefix>.message``. Pure.

Postgres fills existing rows without a single row event when an ``ALTER TABLE`` adds a
column with a default, renames a column or changes a type. mallard's event trigger says
so in the same transaction, and the applier re-snapshots the stream through the cut
without waiting for the table's next row event (mallard/core/schema_diff.py sees the
change only then). The message comes from Kafka: it is checked as untrusted input.
"""
from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

import orjson
from pydantic import ValidationError

from mallard.core.changes import PoisonMessage
from mallard.core.names import stream_name
from mallard.schemas.ddl import DDL_SIGNAL_PREFIX, DdlSignal
from mallard.schemas.debezium import LogicalMessageValue


@dataclass(frozen=True)
class SchemaSignal:
    stream: str
    """'<schema>.<table>' as mallard names streams."""
    tx_id: int
    """The transaction of the DDL: a snapshot whose cut covers it brings the rewritten rows."""
    changes: str
    """What changed, for operators."""


def _first_error(e: ValidationError) -> str:
    error = e.errors()[0]
    return f"{'.'.join(str(p) for p in error['loc']) or 'value'}: {error['msg']}"


def schema_signal(value: bytes) -> SchemaSignal | None:
    """The signal a message on ``<prefix>.message`` carries; None for a message of another
    prefix (an application's own: not mallard's business). PoisonMessage names what is wrong
    with a message that is not Debezium's envelope, or a ``mallard.ddl`` one that is not
    the contract."""
    try:
        envelope = LogicalMessageValue.model_validate(orjson.loads(value))
    except orjson.JSONDecodeError as e:
        raise PoisonMessage(f"logical decoding message: not JSON: {e}") from None
    except ValidationError as e:
        raise PoisonMessage(f"logical decoding message: not Debezium's envelope: {_first_error(e)}") from None
    payload = envelope.payload
    if payload.message.prefix != DDL_SIGNAL_PREFIX:
        return None
    if payload.transaction is None or payload.source.txId is None:
        raise PoisonMessage(f"a {DDL_SIGNAL_PREFIX} message outside a transaction (mallard's trigger sends it in "
                            "the DDL's own)")
    try:
        content = base64.b64decode(payload.message.content or "", validate=True)
        signal = DdlSignal.model_validate(orjson.loads(content))
    except (binascii.Error, orjson.JSONDecodeError):
        raise PoisonMessage(f"a {DDL_SIGNAL_PREFIX} message whose content is not base64 JSON") from None
    except ValidationError as e:
        raise PoisonMessage(f"a {DDL_SIGNAL_PREFIX} message: {_first_error(e)}") from None
    return SchemaSignal(stream_name(signal.schema_, signal.table), payload.source.txId, signal.changes)
