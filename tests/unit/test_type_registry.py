"""The type registry: every row says everything (or says it falls back), its parts agree
with each other, and it is the only place a type is named: the CDC decoder, the snapshot
encoder and verify take their tables from it, so a new row is all a new type needs."""
from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import mallard.core
from mallard.core import type_registry as reg
from mallard.core.pgtypes import column_type
from mallard.core.snapshot_encoding import connect_schema
from mallard.core.type_registry import (ENUM, NOT_HASHED, READ_AS_TEXT, REGISTRY, ColumnType, PgColumn, PgType,
                                        Snapshot, VerifyAs)
from mallard.core.verify import Column, canon

ROW_IDS = [",".join(r.names) or (r.arrives_as[0].name or r.arrives_as[0].connect) for r in REGISTRY]
CONSUMERS = ("pgtypes.py", "snapshot_encoding.py", "verify.py")


def _schema(arrival: reg.Arrival) -> dict:
    """A Connect schema the arrival stands for (parameters for the ones that take some)."""
    schema = {"type": arrival.connect, "parameters": {"scale": "2", "connect.decimal.precision": "12"}}
    return {**schema, "name": arrival.name} if arrival.name else schema


@pytest.mark.parametrize("row", REGISTRY, ids=ROW_IDS)
def test_every_row_fills_every_column_or_says_it_falls_back(row: PgType):
    assert all(isinstance(n, str) and n for n in row.names)
    assert row.arrives_as, "a type arrives as at least one Connect schema"
    for arrival in row.arrives_as:
        assert arrival.connect
        column = arrival.column if isinstance(arrival.column, ColumnType) else arrival.column(_schema(arrival))
        assert isinstance(column, ColumnType) and column.known
        assert column.duckdb and column.transport and callable(column.decode)
    s = row.snapshot
    assert isinstance(s, Snapshot)  # READ_AS_TEXT is the explicit fallback
    assert (isinstance(s.schema, dict) and s.schema.get("type")) or callable(s.schema)
    assert callable(s.encode)
    assert (isinstance(s.json, str) and "{0}" in s.json) or callable(s.json)
    assert "{0}" in s.select
    if row.names:
        assert row.verify, "a named type says how verify compares it"
    for way in row.verify:
        assert isinstance(way, VerifyAs) and way.duckdb and all(d == d.upper() for d in way.duckdb)
        assert "{" in way.canon.pg and "{" in way.canon.duck
    if not row.names and row is not ENUM:  # only a Connect schema: nothing to snapshot or verify
        assert s is READ_AS_TEXT and row.verify == NOT_HASHED


@pytest.mark.parametrize("row", [r for r in REGISTRY if r.names], ids=[i for i, r in zip(ROW_IDS, REGISTRY) if r.names])
def test_a_rows_parts_agree(row: PgType):
    """What a snapshot declares arrives as one of the row's schemas, and verify compares the
    DuckDB type the column is made into."""
    arrivals = {(a.connect, a.name) for a in row.arrives_as}
    for name in row.names:
        for typmod in (-1, 3, ((12 << 16) | 2) + 4):
            col = PgColumn("c", name, typmod)
            schema = connect_schema(col)
            ct = column_type(schema)
            if row.snapshot is not READ_AS_TEXT:
                assert (schema["type"], schema.get("name")) in arrivals
            else:  # read as text, made whatever its Connect schema makes of it
                ct = column_type(_schema(row.arrives_as[0]))
            assert isinstance(canon(Column("c", name, ct.duckdb)), reg.Canon), (name, ct.duckdb)


def test_a_type_has_one_row():
    names = [n for r in REGISTRY for n in r.names]
    assert len(names) == len(set(names))


def _string_constants(path: Path) -> set[str]:
    """Every string literal in a module but its docstrings."""
    tree = ast.parse(path.read_text())
    docs = {id(n.body[0].value) for n in ast.walk(tree)
            if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef)) and n.body
            and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
    return {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)
            and id(n) not in docs}


# Words that are also a type's name, used there for something else.
HOMONYMS = {
    "pgtypes.py": {"name": "a Connect schema's key", "json": "the wire kind of any JSON value"},
    # the key kinds verify ranges over: the registry's rows give them (VerifyAs.key)
    "verify.py": {w.key: "a key kind" for r in REGISTRY for w in r.verify if w.key},
}


@pytest.mark.parametrize("module", CONSUMERS)
def test_the_registry_is_the_only_place_a_type_is_named(module):
    """No Postgres type name and no Connect logical name in the modules that read the registry."""
    type_names = {n for r in REGISTRY for n in r.names}
    connect_names = {a.name for r in REGISTRY for a in r.arrives_as if a.name}
    core = Path(mallard.core.__file__).parent
    found = {s for s in _string_constants(core / module) if s in type_names | connect_names}
    found -= set(HOMONYMS.get(module, {}))
    assert not found, f"{module} names types the registry holds: {sorted(found)}"


def test_one_new_row_is_all_a_new_type_needs():
    """A row for a type nobody knows (tsvector here) reaches the CDC decoder, the snapshot
    encoder and verify, with no other change: before it, each falls back."""
    code = textwrap.dedent('''
        import json, sys
        from mallard.core import type_registry as reg
        if sys.argv[1] == "with":
            reg.REGISTRY += (reg.PgType(
                ("tsvector",),
                (reg.arrives("string", "x.mallard.Tsvector", "VARCHAR", "string", reg._str),),
                reg.Snapshot({"type": "string", "name": "x.mallard.Tsvector"}, reg.as_is, "to_json({0})::text"),
                (reg.VerifyAs(("VARCHAR",), reg.Canon("{}::text", "CAST({} AS VARCHAR)")),)),)
        from mallard.core.pgtypes import column_type
        from mallard.core.snapshot_encoding import PgColumn, connect_schema, json_expression, select_expression
        from mallard.core.verify import Column, canon
        col = PgColumn("v", "tsvector")
        ct = column_type({"type": "string", "name": "x.mallard.Tsvector"})
        print(json.dumps({"cdc": [ct.duckdb, ct.known], "schema": connect_schema(col),
                          "select": select_expression(col), "json": json_expression(col),
                          "canon": str(canon(Column("v", "tsvector", "VARCHAR")))}))
    ''')

    def run(which: str) -> dict:
        import json

        out = subprocess.run([sys.executable, "-c", code, which], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    before, after = run("without"), run("with")
    assert before["cdc"] == ["VARCHAR", False] and after["cdc"] == ["VARCHAR", True]
    assert before["schema"] == {"type": "string", "optional": True, "field": "v"}
    assert after["schema"] == {"type": "string", "name": "x.mallard.Tsvector", "optional": True, "field": "v"}
    assert (before["select"], after["select"]) == ('"v"::text', '"v"')
    assert (before["json"], after["json"]) == ('to_json("v"::text)::text', 'to_json("v")::text')
    assert "no common canonical text" in before["canon"] and "{}::text" in after["canon"]
