"""CPU per message of the applier's hot path, without Kafka or DuckDB: the messages of
``apply_benchmark.generate`` (as confluent_kafka Messages: 3 CDC partitions, the transaction
topic, tombstones) routed through the real Router, decoder and transaction assembler, the
ready transactions taken and marked applied as the service does.

Prints µs of CPU per change event (best of --repeat passes; each pass decodes fresh
messages with a fresh decoder). Run it with a peer's interpreter to compare two trees:
``/path/to/peer/.venv/bin/python bench/route_benchmark.py`` imports the peer's mallard."""
from __future__ import annotations

import argparse
import logging
import sys
import time
import zlib
from pathlib import Path

from confluent_kafka import Message

sys.path.insert(0, str(Path(__file__).resolve().parent))
from apply_benchmark import TOPIC, TX_TOPIC, generate  # noqa: E402

from mallard.core.changes import Decoder  # noqa: E402
from mallard.core.snapshots import SnapshotTracker  # noqa: E402
from mallard.core.transactions import TransactionAssembler  # noqa: E402
from mallard.services.applier.routing import Router  # noqa: E402
from mallard.services.applier.snapshot_work import SnapshotQueue  # noqa: E402


def messages(n: int) -> tuple[list[Message], int]:
    out, offsets, changes = [], {}, 0
    for topic, key, value in generate(n):
        partition = 0 if key is None else zlib.crc32(key) % 3
        offset = offsets.get((topic, partition), 0)
        offsets[(topic, partition)] = offset + 1
        out.append(Message(topic=topic, partition=partition, offset=offset, key=key, value=value))
        changes += topic == TOPIC and value is not None
    return out, changes


def one_pass(msgs: list[Message], poll: int) -> float:
    assembler = TransactionAssembler()
    router = Router(tx_topic=TX_TOPIC, snapshot_topic="bench.snapshots", assembler=assembler, decoder=Decoder(),
                    snapshots=SnapshotTracker(), snapshot_queue=SnapshotQueue(), dead_letters=None, allowed=None,
                    log=logging.getLogger("bench"))
    route = router.route
    start = time.process_time()
    for i in range(0, len(msgs), poll):
        for msg in msgs[i:i + poll]:
            route(msg)
        ready = assembler.take_ready(20_000)
        if ready:
            assembler.mark_applied(ready)
    return time.process_time() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--poll", type=int, default=10_000, help="messages per consume() in the service")
    args = parser.parse_args()
    msgs, changes = messages(args.events)
    import gc
    gc.freeze()
    gc.disable()
    times = []
    for _ in range(args.repeat):
        fresh = [Message(topic=m.topic(), partition=m.partition(), offset=m.offset(), key=m.key(), value=m.value())
                 for m in msgs]
        times.append(one_pass(fresh, args.poll))
        del fresh
        gc.collect()
    import mallard
    print(f"{Path(mallard.__file__).parent.parent}: {len(msgs)} messages, {changes} change events; "
          f"µs/event best {min(times) / changes * 1e6:.2f}, median {sorted(times)[len(times) // 2] / changes * 1e6:.2f}")


if __name__ == "__main__":
    main()
