"""Stream names (mallard/core/names.py): every table name Postgres accepts, read as
Postgres reads it, spelled one way, quoted in SQL, mapped to Debezium's topic and
table.include.list entry — with hostile names (quotes, dots, commas, spaces, unicode,
keywords, SQL after the name)."""
from __future__ import annotations

import re

import pytest
from pglast import parse_sql
from pglast.keywords import COL_NAME_KEYWORDS, RESERVED_KEYWORDS, TYPE_FUNC_NAME_KEYWORDS, UNRESERVED_KEYWORDS

from mallard.core import names
from mallard.core.connector import ConnectorConfig, parse_connector_config, with_streams
from mallard.core.replica_sql import target_name, target_schema, target_table
from mallard.core.replication import ConfigError, default_target, parse_config
from mallard.core.status import dead_letters_by_stream

HOSTILE = [
    ("public", "orders"),
    ("public", "Order Items"),
    ("Sales Dept", "Big Buyers"),
    ("a.b", "c.d"),
    ("x", 'say "hi"'),
    ('"', '""'),
    ("public", "a,b"),
    ("public", "a$b"),
    ("public", "$x"),
    ("public", "1st"),
    ("public", "café"),
    ("Ünïcødé", "表"),
    ("public", "😀 emoji"),
    ("public", " lead and trail "),
    ("public", "tab\there"),
    ("public", "new\nline"),
    ("public", "back\\slash"),
    ("public", "semi; DROP TABLE x; --"),
    ("public", "(?i).*"),
    ("public", "user"),
    ("select", "from"),
    ("order", "t"),
    ("int", "t"),
    ("public", "x" * 63),
    ("public", "é" * 31),
]


@pytest.mark.parametrize("schema,table", HOSTILE)
def test_every_name_has_one_spelling_that_postgres_reads_back(schema, table):
    spelled = names.stream_name(schema, table)
    assert names.parse_stream(spelled) == (schema, table)
    assert names.canonical(spelled) == spelled
    # the quoted SQL form names the same table to Postgres' own parser
    relation = parse_sql(f"SELECT FROM {names.quoted(spelled)}")[0].stmt.fromClause[0]
    assert (relation.schemaname, relation.relname) == (schema, table)


def test_plain_names_keep_the_spelling_they_always_had():
    for schema, table in [("public", "orders"), ("shop", "invoices"), ("public", "user"), ("_mallard", "heartbeat"),
                          ("public", "a$b")]:
        assert names.stream_name(schema, table) == f"{schema}.{table}"


def test_one_table_however_it_is_written():
    for written in ['public."Order Items"', '"public"."Order Items"', ' public . "Order Items" ',
                    'PUBLIC."Order Items"'.lower().replace("order items", "Order Items"),
                    'U&"public".U&"Order\\0020Items"']:
        assert names.canonical(written) == 'public."Order Items"', written
    assert names.canonical('"public"."orders"') == "public.orders"
    assert names.canonical('"Sales Dept"."Big Buyers"') == '"Sales Dept"."Big Buyers"'


@pytest.mark.parametrize("text,why", [
    ("orders", "the schema is required"),
    ("", "empty"),
    ("   ", "empty"),
    ("a.b.c", "expected <schema>.<table>"),
    ("public.", "ends with a dot"),
    (".orders", "'.' is not an identifier"),
    ("public.Orders", "write \"Orders\" (quoted)"),
    ("Public.orders", "folds the unquoted 'Public'"),
    ('public.""', "zero-length"),
    ('public."unterminated', "unterminated"),
    ("public.t; DROP TABLE x", "unexpected ';'"),
    ("public.t -- comment", "unexpected '-- comment'"),
    ("public.t /* c */", "unexpected"),
    ("public.t x", "unexpected"),
    ("public.t AS x", "unexpected"),
    ("public.'t'", "is not an identifier"),
    ("public.1t", "trailing junk"),
    ("order.t", "syntax error"),
    ("public.t\x00", "NUL"),
    ("public." + "x" * 64, "longer than Postgres' 63 bytes"),
    ('public."' + "é" * 32 + '"', "longer than Postgres' 63 bytes"),
    ("public." + " " * 2000 + "t", "longer than 1024 characters"),
])
def test_what_is_not_a_stream_name_is_refused_saying_why(text, why):
    with pytest.raises(names.StreamNameError, match=re.escape(why)):
        names.parse_stream(text)
    assert not names.is_stream(text)


def test_every_keyword_round_trips_in_either_place():
    for word in [*RESERVED_KEYWORDS, *TYPE_FUNC_NAME_KEYWORDS, *COL_NAME_KEYWORDS, *UNRESERVED_KEYWORDS]:
        for schema, table in ((word, "t"), ("s", word), (word, word)):
            assert names.parse_stream(names.stream_name(schema, table)) == (schema, table), (schema, table)


def test_the_topic_is_debeziums_sanitized_name():
    assert names.cdc_topic("mallard", "public.orders") == "mallard.public.orders"
    assert names.cdc_topic("mallard", 'public."Order Items"') == "mallard.public.Order_Items"
    assert names.cdc_topic("mallard", '"Sales Dept"."Big Buyers"') == "mallard.Sales_Dept.Big_Buyers"
    assert names.cdc_topic("mallard", '"a.b"."c.d"') == "mallard.a.b.c.d"  # a dot is a topic character: kept
    assert names.cdc_topic("mallard", 'public."café"') == "mallard.public.caf_"
    assert names.cdc_topic("mallard", 'public."😀"') == "mallard.public.__"  # one Java char per UTF-16 unit
    assert names.cdc_topic("mallard", 'public."a-b_c"') == "mallard.public.a-b_c"
    assert names.cdc_topic("mallard", 'public."   "') == "mallard.public"  # Debezium leaves a blank part out
    long = names.cdc_topic("mallard", names.stream_name("s" * 63, "t" * 63))
    assert len(long) == 4 + 1 + 63 + 1 + 63 + 3 and long.startswith("mallard.")
    assert len(names.cdc_topic("p" * 200, names.stream_name("s" * 63, "t" * 63))) == names.MAX_TOPIC_LENGTH
    # two tables, one topic: why events are routed by their source block, never by topic
    assert names.cdc_topic("m", 'public."Order Items"') == names.cdc_topic("m", 'public."Order_Items"')


@pytest.mark.parametrize("schema,table", HOSTILE)
def test_the_applier_subscription_matches_every_table_topic(schema, table):
    from mallard.core.connector import cdc_topic_pattern

    topic = names.cdc_topic("mallard", names.stream_name(schema, table))
    if not table.strip():
        return  # a blank name is left out of the topic (Debezium's rule): no table topic
    assert re.search(cdc_topic_pattern("mallard"), topic), topic
    assert not re.search(cdc_topic_pattern("mallard"), "mallard.transaction")


@pytest.mark.parametrize("schema,table", HOSTILE)
def test_the_include_list_entry_matches_exactly_that_table_and_reads_back(schema, table):
    stream = names.stream_name(schema, table)
    entry = names.include_entry(stream)
    assert names.stream_of_include(entry) == stream
    # Debezium matches the entry (a Java regex; Python's is the same for what re.escape
    # writes) against '<schema>.<table>', case-insensitively unless (?-i) says otherwise
    pattern = re.compile(entry, re.IGNORECASE)
    assert pattern.fullmatch(f"{schema}.{table}")
    if table.lower() != table.upper() and entry != f"{schema}.{table}":  # a plain entry matches any case
        assert not pattern.fullmatch(f"{schema}.{table.swapcase()}")


def test_the_include_list_splits_as_debezium_does_and_keeps_plain_names_readable():
    streams = ["public.orders", 'public."a,b"', '"Sales Dept"."Big Buyers"', 'public." x "']
    config = with_streams(parse_connector_config(
        '{"name": "c", "config": {"connector.class": "io.debezium.connector.postgresql.PostgresConnector", '
        '"plugin.name": "pgoutput", "snapshot.mode": "no_data", "skipped.operations": "none", '
        '"provide.transaction.metadata": "true", "decimal.handling.mode": "string", "datatype.propagate.source.type": ".+\\\\.numeric", '
        '"interval.handling.mode": "string", "key.converter.schemas.enable": "true", '
        '"value.converter.schemas.enable": "true", "topic.prefix": "mallard"}}'), streams)
    value = config.config["table.include.list"]
    assert value.startswith("public.orders,(?-i:public[.]a\\,b),")
    assert config.tables == streams
    # a hand-written regex entry stays what it is
    assert ConnectorConfig("c", {"table.include.list": "public\\..*, shop.orders"}).tables == ["public\\..*",
                                                                                              "shop.orders"]
    assert config.cdc_topic('public."a,b"') == "mallard.public.a_b"


def test_the_replication_config_takes_any_name_written_as_sql_writes_it():
    config = parse_config('streams:\n  public."Order Items":\n  \'"Sales Dept"."Big Buyers"\':\n'
                          '    target: \'"Sales Dept"."Big Buyers"\'\n  "public.orders":\n'
                          'schedules:\n  s:\n    cron: "0 6 * * *"\n    streams: [\'"public"."Order Items"\']\n')
    assert list(config.streams) == ['public."Order Items"', '"Sales Dept"."Big Buyers"', "public.orders"]
    assert config.schedules["s"].streams == ('public."Order Items"',)
    assert config.streams['public."Order Items"'].target == '"Order Items"'
    assert config.streams['"Sales Dept"."Big Buyers"'].target == '"Sales Dept"."Big Buyers"'
    assert config.stream('"public"."Order Items"') is config.streams['public."Order Items"']
    assert config.streams['public."Order Items"'].line == 2


@pytest.mark.parametrize("yaml,message", [
    ("streams:\n  public.Orders:\n", "r.yaml:2: streams.public.Orders: a stream is '<schema>.<table>': "),
    ("streams:\n  public.orders:\n  '\"public\".\"orders\"':\n", "r.yaml:3: "),
    ("streams:\n  'public.t; DROP TABLE x':\n", "unexpected ';'"),
    ("streams:\n  public.t:\n    target: 'a.b.c'\n", "r.yaml:3: streams.public.t.target: "),
    ("streams:\n  public.t:\nschedules:\n  s:\n    cron: '0 6 * * *'\n    streams: [public.T]\n",
     "r.yaml:6: schedules.s.streams[0]: "),
])
def test_a_bad_name_in_the_config_is_one_line_naming_its_line(yaml, message):
    with pytest.raises(ConfigError) as e:
        parse_config(yaml, "r.yaml")
    assert message in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_duckdb_names_of_any_stream():
    assert default_target('public."Order Items"') == '"Order Items"'
    assert default_target('"Sales Dept"."Big Buyers"') == '"Sales Dept"."Big Buyers"'
    assert target_name('public."Order Items"') == '"main"."Order Items"'
    assert target_name('"a.b"."c""d"') == '"a.b"."c""d"'
    assert target_schema('"a.b"."c""d"') == '"a.b"' and target_table('"a.b"."c""d"') == '"c""d"'
    assert names.split_quoted('"a"".b"."c.d"') == ('a".b', "c.d")
    assert names.parse_table("Orders") == (None, "Orders")  # DuckDB keeps an unquoted name's case
    assert names.parse_table('"Sales Dept"."Big Buyers"') == ("Sales Dept", "Big Buyers")
    with pytest.raises(ValueError):
        names.split_quoted("main.orders")


def test_dead_letters_of_a_sanitized_topic_count_for_its_stream():
    letters = [("mallard.public.Order_Items", None), ("mallard.snapshots", 'public."Order Items"'),
               ("mallard.public.orders", None)]
    by_stream, other = dead_letters_by_stream(letters, "mallard", "mallard.snapshots", ['public."Order Items"'])
    assert by_stream == {'public."Order Items"': 2, "public.orders": 1} and other == {}
    shared = ['public."Order Items"', 'public."Order_Items"']  # one topic, two tables: the topic is named
    by_stream, other = dead_letters_by_stream(letters[:1], "mallard", "mallard.snapshots", shared)
    assert by_stream == {} and other == {"mallard.public.Order_Items": 1}
