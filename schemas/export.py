"""Export the JSON Schema of every contract: ``python -m mallard.schemas.export [--check]``."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from pydantic import TypeAdapter

from mallard.schemas.control import ResnapshotRequest, StateReset
from mallard.schemas.ddl import DdlSignal
from mallard.schemas.deadletter import DeadLetter
from mallard.schemas.debezium import ChangeEventKey, ChangeEventValue, LogicalMessageValue, TransactionEvent
from mallard.schemas.snapshot import SnapshotMessage, SnapshotRowsHeader

JSON_DIR = Path(__file__).parent / "json"

CONTRACTS = {
    "debezium.change_event_key.v1": ChangeEventKey,
    "debezium.change_event_value.v1": ChangeEventValue,
    "debezium.transaction_event.v1": TransactionEvent,
    "debezium.logical_message_value.v1": LogicalMessageValue,
    "ddl.signal.v1": DdlSignal,
    "snapshot.message.v1": SnapshotMessage,
    "snapshot.arrow_rows_header.v1": SnapshotRowsHeader,
    "control.resnapshot_request.v1": ResnapshotRequest,
    "control.state_reset.v1": StateReset,
    "deadletter.v1": DeadLetter,
}


def rendered() -> dict[str, str]:
    """File name -> JSON Schema text, exactly as it should be on disk."""
    out = {}
    for name, model in CONTRACTS.items():
        schema = TypeAdapter(model).json_schema(by_alias=True)
        schema["$id"] = f"mallard/{name}"
        out[f"{name}.json"] = json.dumps(schema, indent=2, sort_keys=True) + "\n"
    return out


def main(argv: list[str] | None = None) -> int:
    check = "--check" in (argv if argv is not None else sys.argv[1:])
    stale = []
    for file_name, text in rendered().items():
        path = JSON_DIR / file_name
        if not path.exists() or path.read_text() != text:
            stale.append(file_name)
            if not check:
                JSON_DIR.mkdir(exist_ok=True)
                path.write_text(text)
    if check and stale:
        print("stale JSON Schema files (run python -m mallard.schemas.export):", ", ".join(stale))
        return 1
    print("JSON Schema files", "checked" if check else "written", "in", JSON_DIR)
    return 0


if __name__ == "__main__":
    sys.exit(main())
