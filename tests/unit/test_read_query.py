"""What the applier's /query runs: one read, nothing else (mallard.core.read_query).

The statement types and tokens come from DuckDB's own parser and tokenizer, as the
adapter hands them in; the decision is the pure function's."""
import duckdb
import pytest

from mallard.core.read_query import REFUSED_CALLS, calls, refusal, tokens


def why(sql: str) -> str | None:
    statements = [(s.type.name, s.query) for s in duckdb.extract_statements(sql)]
    return refusal(sql, statements, tokens(sql, [(o, t.name) for o, t in duckdb.tokenize(sql)]))


READS = [
    "SELECT 1",
    "select * from orders where id = 3",
    "SELECT count(*) FROM orders;",
    "  SELECT 1 -- a comment; DELETE FROM orders\n",
    "/* leading; comment */ SELECT 1",
    "WITH x AS (SELECT 1 AS a) SELECT * FROM x",
    "WITH RECURSIVE t(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM t WHERE n < 3) SELECT * FROM t",
    "FROM orders",
    "VALUES (1), (2)",
    "SHOW TABLES",
    "SHOW ALL TABLES",
    "SHOW orders",
    "DESCRIBE orders",
    "DESCRIBE SELECT 1",
    "SUMMARIZE orders",
    "(SELECT 1) UNION (SELECT 2)",
    "SELECT 'COMMIT; DELETE FROM orders'",
    "SELECT $$a; DROP TABLE orders$$",
    "SELECT query FROM log_lines",  # a column named like a refused function: not a call
    "SELECT \"checkpoint\" FROM t",
    "SELECT * FROM duckdb_tables()",
    "SELECT * FROM information_schema.columns WHERE table_name = 'orders'",
    "SELECT * FROM range(10)",
    "SELECT sum(x) OVER (ORDER BY y) FROM t",
    "SELECT * FROM _mallard.snapshots ORDER BY started_at DESC LIMIT 1",
]


@pytest.mark.parametrize("sql", READS)
def test_one_read_runs(sql):
    assert why(sql) is None


REFUSED = [
    ("COMMIT; DELETE FROM orders WHERE id < 10", "2 statements"),
    ("ROLLBACK; DELETE FROM orders; BEGIN", "3 statements"),
    ("SELECT 1; SELECT 2", "2 statements"),
    ("DELETE FROM orders", "DELETE statement ("),
    ("UPDATE orders SET status = 'x'", "UPDATE statement ("),
    ("INSERT INTO orders VALUES (1)", "INSERT statement ("),
    ("COMMIT", "TRANSACTION statement ("),
    ("BEGIN", "TRANSACTION statement ("),
    ("COPY orders TO '/tmp/x.csv'", "COPY statement ("),
    ("COPY (SELECT 1) TO '/tmp/x'", "COPY statement ("),
    ("EXPORT DATABASE '/tmp/x'", "EXPORT statement ("),
    ("ATTACH '/tmp/x.db'", "ATTACH statement ("),
    ("DETACH x", "DETACH statement ("),
    ("SET GLOBAL threads = 1", "SET statement ("),
    ("SET threads = 1", "SET statement ("),
    ("RESET threads", "statement"),
    ("USE memory", "SET statement ("),
    ("INSTALL httpfs", "LOAD statement ("),
    ("LOAD httpfs", "LOAD statement ("),
    ("PRAGMA enable_profiling", "PRAGMA statement ("),
    ("PRAGMA table_info('orders')", "PRAGMA (PRAGMA table_info"),
    ("CALL pragma_version()", "CALL statement ("),
    ("CHECKPOINT", "CALL statement ("),
    ("CREATE TABLE pwned AS SELECT 1", "CREATE statement ("),
    ("CREATE MACRO m() AS 1", "CREATE statement ("),
    ("DROP TABLE orders", "DROP statement ("),
    ("ALTER TABLE orders ADD COLUMN x INT", "ALTER statement ("),
    ("EXPLAIN ANALYZE DELETE FROM orders", "EXPLAIN statement ("),
    ("VACUUM", "statement"),
    ("PIVOT orders ON status", "statements"),
    ("SELECT * FROM enable_logging(storage := 'file', storage_path := '/tmp/')", "enable_logging() changes"),
    ("SELECT * FROM main.\"ENABLE_PROFILING\"()", "enable_profiling() changes"),
    ("SELECT * FROM checkpoint()", "checkpoint() changes"),
    ("SELECT * FROM force_checkpoint()", "force_checkpoint() changes"),
    ("SELECT * FROM truncate_duckdb_logs()", "truncate_duckdb_logs() changes"),
    ("SELECT * FROM query('SELECT * FROM enable_logging()')", "query() runs SQL text"),
    ("SELECT * FROM json_execute_serialized_sql(json_serialize_sql('SELECT 1'))", "json_execute_serialized_sql()"),
    ("SELECT * FROM read_csv('/etc/passwd')", "read_csv() reads files"),
    ("SELECT * FROM Read_Text /* hidden */ ('/etc/hostname')", "read_text() reads files"),
    ("SELECT * FROM glob('/etc/*')", "glob() reads files"),
    ("WITH x AS (SELECT * FROM read_blob('/etc/shadow')) SELECT * FROM x", "read_blob() reads files"),
]


@pytest.mark.parametrize("sql, reason", REFUSED)
def test_anything_else_is_refused_naming_it(sql, reason):
    got = why(sql)
    assert got is not None and reason in got, got


@pytest.mark.parametrize("sql", ["", "   ", ";", "-- only a comment"])
def test_no_statement_is_refused(sql):
    assert why(sql).startswith("no statement")


def test_a_long_statement_is_named_by_its_beginning():
    got = why("COPY orders TO '/tmp/" + "x" * 200 + "'")
    assert "COPY orders TO" in got and len(got) < 200


def test_calls_are_words_before_a_parenthesis_only():
    toks = [("select", "keyword"), ("query", "identifier"), (",", "operator"), ("count", "identifier"),
            ("(", "operator"), ("*", "operator"), (")", "operator"), ("in", "keyword"), ("(", "operator")]
    assert calls(toks) == ["count", "in"]


def test_a_quoted_name_keeps_its_case_and_an_unquoted_one_is_lowered():
    sql = 'SELECT "MiXed", PLAIN'
    toks = tokens(sql, [(o, t.name) for o, t in duckdb.tokenize(sql)])
    assert [t for t, _ in toks] == ["select", "MiXed", ",", "plain"]


def test_handmade_input_without_duckdb():
    # The pure function on its own: one SELECT statement, but starting with a word no read starts with.
    assert "PRAGMA" in refusal("PRAGMA x", [("SELECT", "SELECT 1")], [("pragma", "keyword"), ("x", "identifier")])
    assert refusal("SELECT 1", [("SELECT", "SELECT 1")], [("select", "keyword"), ("1", "numeric_const")]) is None


def test_every_refused_function_exists_in_this_duckdb():
    # The list is DuckDB 1.5's: a name that no longer exists would hide one that replaced it.
    names = {r[0] for r in duckdb.connect().execute("SELECT DISTINCT function_name FROM duckdb_functions()").fetchall()}
    assert set(REFUSED_CALLS) <= names, set(REFUSED_CALLS) - names
