"""DuckDB's errors as transient or terminal, against the real DuckDB adapter: a value DuckDB
refuses is a TerminalError on either write path (its C API, its Python client); a probe
rolls back whatever it ran; the applier's pipeline bisects a refused batch down to that
one event, applies the rest, and holds the stream back for a re-snapshot."""
from __future__ import annotations

import logging
import threading

import pytest

from mallard.adapters.duckdb_errors import translate
from mallard.adapters.duckdb_replica import NEEDS_RESNAPSHOT, OK, DuckDBReplica
from mallard.core.changes import ChangeEvent, TableSchema
from mallard.core.errors import TerminalError, TransientError
from mallard.core.merge import reduce
from mallard.core.pgtypes import column_type
from mallard.core.transactions import Transaction
from mallard.services.applier.fakes import FakeClock
from mallard.services.applier.pipeline import Pipeline

pytestmark = pytest.mark.integration

INT, UUID = column_type({"type": "int32"}), column_type({"type": "string", "name": "io.debezium.data.Uuid"})
TEXT = column_type({"type": "string"})
IDS = TableSchema("public.ids", ("id", "u"), (INT, UUID), ("id",))
NOTES = TableSchema("public.notes", ("id", "v"), (INT, TEXT), ("id",))
GOOD = "0b0e4a6c-8d3f-4b52-9a43-2f5d7b8e1c90"


def tx(xid: int, *events: tuple[TableSchema, tuple]) -> Transaction:
    return Transaction(xid, 1000 + xid, 0, [
        ChangeEvent(f"mallard.{schema.stream}", 0, xid * 10 + order, schema.stream, "c", xid, order, 0, (row[0],), row,
                    frozenset(), schema)
        for order, (schema, row) in enumerate(events, start=1)])


def test_a_value_duckdb_refuses_is_terminal_and_a_probe_rolls_back(tmp_path):
    replica = DuckDBReplica(str(tmp_path / "r.duckdb"))
    good = [tx(1, (IDS, (1, GOOD)), (NOTES, (1, "a")))]
    replica.commit(replica.prepare(reduce(good), good))
    bad = [tx(2, (IDS, (2, "not a uuid")), (NOTES, (2, "b")))]
    batch = replica.prepare(reduce(bad), bad)
    assert isinstance(replica.probe(batch), TerminalError)
    ok = [tx(3, (NOTES, (3, "c")))]
    assert replica.probe(replica.prepare(reduce(ok), ok)) is None
    with pytest.raises(TerminalError, match="Conversion Error"):
        replica.commit(replica.prepare(reduce(bad), bad))
    # Nothing of the probes nor of the refused commit is in the replica.
    assert replica.con.execute("SELECT count(*) FROM notes").fetchone() == (1,)
    assert replica.applied_position()[0] == 1001
    replica.close()


def test_driver_errors_translate_by_kind():
    import duckdb

    con = duckdb.connect()
    for sql, kind in (("SELECT 'x'::INT", TerminalError), ("SELECT * FROM nowhere", TerminalError),
                      ("SELECT error('boom')", TerminalError)):
        with pytest.raises(duckdb.Error) as e:
            con.execute(sql)
        assert isinstance(translate(e.value), kind)
    assert isinstance(translate(duckdb.IOException("IO Error: disk full")), TransientError)
    assert isinstance(translate(duckdb.Error("Out of Memory Error: failed to allocate")), TransientError)  # C API path
    assert isinstance(translate(duckdb.Error("Constraint Error: duplicate key")), TerminalError)
    assert isinstance(translate(duckdb.FatalException("database invalidated")), duckdb.FatalException)  # stops


def test_the_pipeline_bisects_a_refused_batch_to_its_event_and_applies_the_rest(tmp_path, caplog):
    replica = DuckDBReplica(str(tmp_path / "r.duckdb"))
    pipeline = Pipeline(replica=replica, lock=threading.Lock(), clock=FakeClock(), stopping=threading.Event(),
                        log=logging.getLogger("mallard.applier"))
    batch = [tx(x, (IDS, (x, GOOD)), (NOTES, (x, f"n{x}"))) for x in range(1, 20)]
    batch.insert(11, tx(50, (NOTES, (50, "n50")), (IDS, (50, "not a uuid")), (NOTES, (51, "n51"))))
    batch += [tx(x, (IDS, (x, GOOD)), (NOTES, (x, f"n{x}"))) for x in range(60, 70)]
    pipeline.start()
    pipeline.put("cdc", batch)
    pipeline.stop()
    applied = [item for item in pipeline.done()]
    assert len(applied) == 1
    done = applied[0]
    assert [(e.stream, e.key) for e, _ in done.set_aside] == [("public.ids", (50,))]
    assert "Conversion Error" in done.set_aside[0][1]
    assert done.stats.transactions == len(batch)
    # The other stream went on, whole; the refused one kept what came before, and waits for its snapshot.
    assert replica.con.execute("SELECT count(*) FROM notes").fetchone() == (len(batch) + 1,)
    assert replica.tables["public.ids"].status == NEEDS_RESNAPSHOT and replica.tables["public.notes"].status == OK
    assert replica.con.execute("SELECT max(id) FROM ids").fetchone() == (11,)
    assert replica.applied_position()[0] == 1000 + 69
    replica.close()
    reopened = DuckDBReplica(str(tmp_path / "r.duckdb"))  # the mark is remembered
    assert reopened.tables["public.ids"].status == NEEDS_RESNAPSHOT
    reopened.close()
