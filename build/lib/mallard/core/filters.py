"""Snapshot filters (``--where``, a stream's ``where``, a request's ``where``), checked. Pure.

A filter is ONE boolean expression over the table's columns. It comes from the command
line, the replication config, or a request read from Kafka (untrusted), and ends up
inside ``SELECT ... WHERE (<filter>)`` on Postgres and in the applier's end-of-snapshot
delete on DuckDB. So it is parsed by Postgres' own parser (pglast), inside a fixed
statement, and its tree is walked against an allow-list: column names, constants,
operators, casts to plain types, CASE/COALESCE/NULLIF/GREATEST/LEAST, and a short
list of functions that read nothing but their arguments. What is returned is the
expression deparsed from that tree: what runs is exactly what was checked (comments
and any text outside the expression cannot survive).
"""
from __future__ import annotations

from typing import Any

from pglast import ast, parse_sql, parser
from pglast.enums import A_Expr_Kind, SQLValueFunctionOp
from pglast.stream import RawStream

MAX_FILTER_LENGTH = 200_000
"""Room for `verify --repair`'s key lists (up to 1,000 keys), far under a Kafka message."""

ALLOWED_FUNCTIONS = frozenset({
    "abs", "age", "btrim", "ceil", "ceiling", "char_length", "character_length", "concat", "date_part",
    "date_trunc", "extract", "floor", "left", "length", "lower", "ltrim", "make_date", "make_timestamp", "mod",
    "now", "octet_length", "position", "replace", "right", "round", "rtrim", "sign", "split_part", "starts_with",
    "strpos", "substr", "substring", "timezone", "to_char", "to_date", "to_number", "to_timestamp", "trim", "trunc",
    "upper",
})
"""Functions that compute from their arguments only: none reads a file, a table or a
setting, sleeps, or writes. (``timezone`` is what ``AT TIME ZONE`` parses to;
``extract``, ``position``, ``substring`` and ``btrim`` come from their SQL syntax.)"""

ALLOWED_OPERATORS = frozenset({
    "=", "<>", "!=", "<", ">", "<=", ">=", "+", "-", "*", "/", "%", "^", "||",
    "~~", "!~~", "~~*", "!~~*",  # LIKE, NOT LIKE, ILIKE, NOT ILIKE
    "~", "!~", "~*", "!~*",  # regular expressions
    "->", "->>", "#>", "#>>", "@>", "<@", "&&",  # json(b) and arrays
})

ALLOWED_TYPES = frozenset({
    "bool", "boolean", "int2", "int4", "int8", "smallint", "integer", "int", "bigint", "numeric", "decimal",
    "float4", "float8", "real", "double precision", "text", "varchar", "bpchar", "char", "character", "date",
    "time", "timetz", "timestamp", "timestamptz", "interval", "uuid", "json", "jsonb", "bytea",
})
"""Casts to these only: a cast to regclass, regproc and the like looks names up in the catalog."""

_ALLOWED_EXPR_KINDS = {
    A_Expr_Kind.AEXPR_OP, A_Expr_Kind.AEXPR_OP_ANY, A_Expr_Kind.AEXPR_OP_ALL, A_Expr_Kind.AEXPR_DISTINCT,
    A_Expr_Kind.AEXPR_NOT_DISTINCT, A_Expr_Kind.AEXPR_NULLIF, A_Expr_Kind.AEXPR_IN, A_Expr_Kind.AEXPR_LIKE,
    A_Expr_Kind.AEXPR_ILIKE, A_Expr_Kind.AEXPR_BETWEEN, A_Expr_Kind.AEXPR_NOT_BETWEEN,
    A_Expr_Kind.AEXPR_BETWEEN_SYM, A_Expr_Kind.AEXPR_NOT_BETWEEN_SYM,
}

_ALLOWED_VALUE_FUNCTIONS = {
    SQLValueFunctionOp.SVFOP_CURRENT_DATE, SQLValueFunctionOp.SVFOP_CURRENT_TIME,
    SQLValueFunctionOp.SVFOP_CURRENT_TIME_N, SQLValueFunctionOp.SVFOP_CURRENT_TIMESTAMP,
    SQLValueFunctionOp.SVFOP_CURRENT_TIMESTAMP_N, SQLValueFunctionOp.SVFOP_LOCALTIME,
    SQLValueFunctionOp.SVFOP_LOCALTIME_N, SQLValueFunctionOp.SVFOP_LOCALTIMESTAMP,
    SQLValueFunctionOp.SVFOP_LOCALTIMESTAMP_N,
}

# What a node of each kind is called in an error.
_DESCRIBED = {
    "SubLink": "a subquery", "ParamRef": "a parameter ($n)", "A_Star": "'*'", "RangeVar": "a table",
    "SelectStmt": "a SELECT", "InsertStmt": "an INSERT", "UpdateStmt": "an UPDATE", "DeleteStmt": "a DELETE",
    "CollateClause": "COLLATE", "A_Indirection": "a subscript or field selection", "RowExpr": "a row constructor",
    "GroupingFunc": "GROUPING", "XmlExpr": "an XML function", "XmlSerialize": "XMLSERIALIZE",
    "SetToDefault": "DEFAULT", "MergeSupportFunc": "MERGE_ACTION", "JsonObjectConstructor": "JSON_OBJECT",
}


class FilterError(ValueError):
    """A filter that is not one allowed boolean expression; the message says what is wrong."""


def check_filter(text: str | None) -> str:
    """The filter, deparsed from Postgres' parse tree once every node of it is allowed;
    FilterError naming what is not."""
    if text is None or not text.strip():
        raise FilterError("a filter cannot be empty: give one boolean expression, e.g. \"id\" % 5 = 0")
    if len(text) > MAX_FILTER_LENGTH:
        raise FilterError(f"a filter is at most {MAX_FILTER_LENGTH:,} characters (this one has {len(text):,})")
    if "\x00" in text:
        raise FilterError("a filter cannot contain a NUL character")
    try:
        tokens = parser.scan(text)
    except parser.ParseError as e:
        raise FilterError(f"not a valid SQL expression: {e}") from None
    for token in tokens:
        if token.name in ("SQL_COMMENT", "C_COMMENT"):
            raise FilterError(f"a filter cannot contain comments (found {text[token.start:token.end + 1]!r})")
        if token.name == "ASCII_59":
            raise FilterError("a filter is one expression: ';' is only allowed inside a string literal")
    # A newline ends the fixed statement: a trailing '--' could not hide it (comments are refused anyway).
    try:
        statements = parse_sql(f"SELECT 1 WHERE {text}\n")
    except parser.ParseError as e:
        raise FilterError(f"not a valid SQL expression: {e}") from None
    if len(statements) != 1:
        raise FilterError("a filter is one expression, not several statements")
    select = statements[0].stmt
    if not isinstance(select, ast.SelectStmt) or select.op != 0:
        raise FilterError("a filter is one boolean expression: it cannot continue the statement around it "
                          "(a set operation)")
    extra = [name for name in ("distinctClause", "intoClause", "fromClause", "groupClause", "havingClause",
                               "windowClause", "valuesLists", "sortClause", "limitOffset", "limitCount",
                               "lockingClause", "withClause", "larg", "rarg")
             if getattr(select, name, None)]
    if extra or len(select.targetList or ()) != 1 or select.groupDistinct or select.whereClause is None:
        raise FilterError("a filter is one boolean expression: it cannot continue the statement around it "
                          f"({', '.join(extra) or 'GROUP BY'})")
    _check(select.whereClause)
    return RawStream()(select.whereClause)


def _refuse(node: Any, what: str | None = None) -> None:
    kind = type(node).__name__
    raise FilterError(f"{what or _DESCRIBED.get(kind) or kind} is not allowed in a filter")


def _names(names: Any) -> list[str]:
    return [n.sval for n in names or () if isinstance(n, ast.String)]


def _check(node: Any) -> None:
    if node is None or isinstance(node, (int, float, str, bool)):
        return
    if isinstance(node, (tuple, list)):
        for item in node:
            _check(item)
        return
    if isinstance(node, ast.A_Const):
        return
    if isinstance(node, ast.ColumnRef):
        fields = node.fields or ()
        if len(fields) != 1 or not isinstance(fields[0], ast.String):
            shown = ".".join(f.sval if isinstance(f, ast.String) else "*" for f in fields)
            raise FilterError(f"column {shown!r}: a filter names columns of the table only, without a table "
                              "or schema, and not '*'")
        return
    if isinstance(node, ast.BoolExpr):
        _check(node.args)
        return
    if isinstance(node, ast.A_Expr):
        if node.kind not in _ALLOWED_EXPR_KINDS:
            raise FilterError(f"{node.kind.name.removeprefix('AEXPR_').replace('_', ' ')} is not allowed in a filter")
        names = _names(node.name)
        if node.kind in (A_Expr_Kind.AEXPR_OP, A_Expr_Kind.AEXPR_OP_ANY, A_Expr_Kind.AEXPR_OP_ALL,
                         A_Expr_Kind.AEXPR_DISTINCT, A_Expr_Kind.AEXPR_NOT_DISTINCT, A_Expr_Kind.AEXPR_NULLIF):
            if len(names) != 1 or names[0] not in ALLOWED_OPERATORS:
                raise FilterError(f"operator {'.'.join(names) or '?'} is not allowed in a filter "
                                  f"(allowed: {' '.join(sorted(ALLOWED_OPERATORS))})")
        _check(node.lexpr)
        _check(node.rexpr)
        return
    if isinstance(node, (ast.NullTest, ast.BooleanTest)):
        _check(node.arg)
        return
    if isinstance(node, ast.TypeCast):
        _check_type(node.typeName)
        _check(node.arg)
        return
    if isinstance(node, ast.CaseExpr):
        _check(node.arg)
        _check(node.args)
        _check(node.defresult)
        return
    if isinstance(node, ast.CaseWhen):
        _check(node.expr)
        _check(node.result)
        return
    if isinstance(node, (ast.CoalesceExpr, ast.MinMaxExpr)):
        _check(node.args)
        return
    if isinstance(node, ast.A_ArrayExpr):
        _check(node.elements)
        return
    if isinstance(node, ast.SQLValueFunction):
        if node.op not in _ALLOWED_VALUE_FUNCTIONS:
            raise FilterError(f"{node.op.name.removeprefix('SVFOP_')} is not allowed in a filter "
                              "(of the SQL value functions, only the current date and time are)")
        return
    if isinstance(node, ast.FuncCall):
        _check_function(node)
        return
    _refuse(node)


def _catalog_name(names: list[str]) -> str:
    """A function's or type's name, lower case, when it is unqualified or in pg_catalog;
    '?' otherwise (never on an allow-list): another schema's could be anyone's."""
    if not names or len(names) > 2 or (len(names) == 2 and names[0] != "pg_catalog"):
        return "?"
    return names[-1].lower()


def _check_function(node: ast.FuncCall) -> None:
    names = _names(node.funcname)
    name = _catalog_name(names)
    qualified = ".".join(names)
    if name not in ALLOWED_FUNCTIONS:
        raise FilterError(f"function {qualified}() is not allowed in a filter "
                          f"(allowed: {', '.join(sorted(ALLOWED_FUNCTIONS))}, and coalesce, nullif, greatest, least)")
    if node.agg_star or node.agg_distinct or node.agg_order or node.agg_filter or node.over \
            or node.agg_within_group or node.func_variadic:
        raise FilterError(f"function {qualified}(): aggregates, window functions and VARIADIC are not "
                          "allowed in a filter")
    for arg in node.args or ():
        if isinstance(arg, ast.NamedArgExpr):
            _check(arg.arg)
        else:
            _check(arg)


def _check_type(type_name: ast.TypeName) -> None:
    names = _names(type_name.names)
    name = _catalog_name(names)
    if name not in ALLOWED_TYPES or type_name.setof or type_name.pct_type:
        raise FilterError(f"a cast to {'.'.join(names) or '?'} is not allowed in a filter "
                          f"(allowed: {', '.join(sorted(ALLOWED_TYPES))})")
    for modifier in type_name.typmods or ():
        if not isinstance(modifier, ast.A_Const):
            raise FilterError(f"the type modifiers of a cast to {name} must be constants")
