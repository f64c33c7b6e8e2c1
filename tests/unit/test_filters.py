"""The snapshot filter validator: one boolean expression, checked by Postgres' parser."""
import pytest

from mallard.core.filters import FilterError, check_filter

ACCEPTED = [
    # (filter, its deparsed form where that is worth pinning down; None: not checked)
    ('"id" % 5 = 0', "id % 5 = 0"),
    ('"Item ID" % 5 = 0', '"Item ID" % 5 = 0'),
    ("name LIKE 'a%'", "name LIKE 'a%'"),
    ("name NOT LIKE '%b_'", None),
    ("name ILIKE 'A%'", "name ILIKE 'A%'"),
    ("id > 10", "id > 10"),
    ("id >= 1 AND id < 100", "id >= 1 AND id < 100"),
    ("id = 1 OR id = 2", None),
    ("NOT (id = 1)", None),
    ("id IN (1, 2, 3)", "id IN (1, 2, 3)"),
    ("id NOT IN (1, 2)", None),
    ("id BETWEEN 1 AND 10", "id BETWEEN 1 AND 10"),
    ("id NOT BETWEEN 1 AND 10", None),
    ("note IS NULL", "note IS NULL"),
    ("note IS NOT NULL", None),
    ("flag IS TRUE", None),
    ("a IS DISTINCT FROM b", None),
    ("a IS NOT DISTINCT FROM 3", None),
    ("name = 'x''); DROP TABLE t; --'", "name = 'x''); DROP TABLE t; --'"),  # a literal: data, not SQL
    ("name = 'a;b' OR name = '/* not a comment */'", None),
    ("lower(name) = 'bob'", "lower(name) = 'bob'"),
    ("upper(name) LIKE 'B%'", None),
    ("length(name) > 3", None),
    ("abs(balance) < 100.5", None),
    ("created_at > now() - interval '7 days'", None),
    ("created_at >= current_date - 30", None),
    ("date_trunc('month', created_at) = '2024-01-01'", None),
    ("extract(year FROM created_at) = 2024", None),
    ("date_part('dow', created_at) IN (0, 6)", None),
    ("coalesce(status, 'new') <> 'done'", None),
    ("nullif(qty, 0) IS NULL", None),
    ("greatest(a, b) > least(c, d)", None),
    ("CASE WHEN qty > 10 THEN 'big' ELSE 'small' END = 'big'", None),
    ("CASE kind WHEN 1 THEN true ELSE false END", None),
    ("id::text LIKE '1%'", None),
    ("CAST(price AS numeric(10, 2)) > 9.99", None),
    ("created_at AT TIME ZONE 'UTC' > '2024-01-01'", None),
    ("substring(name FROM 1 FOR 2) = 'ab'", None),
    ("position('x' IN name) > 0", None),
    ("trim(name) <> ''", None),
    ("name || '-' || code = 'a-b'", None),
    ("id = ANY(ARRAY[1, 2, 3])", None),
    ("tags @> ARRAY['red']", None),
    ("payload ->> 'kind' = 'order'", None),
    ("name ~ '^[a-z]+$'", None),
    ("price * qty - discount / 2 + 1 > 100 AND qty ^ 2 > 4", None),
    ("-id < 0", None),
    ("uid = '00000000-0000-0000-0000-000000000000'::uuid", None),
    ("TRUE", "TRUE"),
    ("pg_catalog.lower(name) = 'x'", None),
    ("E'\\\\' = name", None),
    ("id % 5 = 0\n", None),
]

REFUSED = [
    # (filter, a part of the error message)
    ("1=1); CREATE TABLE public.pwned AS SELECT current_user; --", "';'"),
    ("1=1) ; CREATE TABLE public.pwned AS SELECT current_user", "';'"),
    ("1=1; COPY (SELECT 1) TO PROGRAM 'id > /tmp/x'", "';'"),
    ("COPY (SELECT 1) TO PROGRAM 'touch /tmp/x'", "not a valid SQL expression"),
    ("true) UNION SELECT 1 FROM pg_authid WHERE (true", "not a valid SQL expression"),
    ("1=1 UNION SELECT 1", "statement around it"),
    ("1=1 GROUP BY 1", "statement around it"),
    ("1=1 ORDER BY 1", "statement around it"),
    ("1=1 LIMIT 1", "statement around it"),
    ("1=1 FOR UPDATE", "statement around it"),
    ("id IN (SELECT id FROM other)", "subquery"),
    ("EXISTS (SELECT 1)", "subquery"),
    ("id = (SELECT max(id) FROM t)", "subquery"),
    ("id IN (WITH x AS (DELETE FROM t RETURNING id) SELECT id FROM x)", "subquery"),
    ("pg_sleep(10) IS NOT NULL", "function pg_sleep() is not allowed"),
    ("set_config('search_path', 'evil', false) = ''", "function set_config() is not allowed"),
    ("dblink_exec('host=x', 'DROP TABLE t') = ''", "function dblink_exec() is not allowed"),
    ("lo_import('/etc/passwd') > 0", "function lo_import() is not allowed"),
    ("pg_read_file('/etc/passwd') <> ''", "function pg_read_file() is not allowed in a filter (allowed: "),
    ("length(pg_read_file('/etc/passwd')) > 0", "pg_read_file()"),
    ("pg_catalog.pg_read_file('/etc/passwd') <> ''", "pg_catalog.pg_read_file()"),
    ("public.lower(name) = 'x'", "function public.lower()"),
    ("nextval('s') > 0", "nextval()"),
    ("txid_current() > 0", "txid_current()"),
    ("count(*) > 0", "count()"),
    ("lower(DISTINCT name) = 'x'", "aggregates"),
    ("$1 = 1", "parameter ($n)"),
    ("t.id = 1", "column 't.id'"),
    ("public.t.id = 1", "column 'public.t.id'"),
    ("1 = 1 -- and more", "comments"),
    ("1 = 1 /* hidden */", "comments"),
    ("", "empty"),
    ("   \n\t", "empty"),
    (None, "empty"),
    ("id::regclass IS NOT NULL", "cast to regclass"),
    ("'pg_read_file'::regproc IS NOT NULL", "cast to regproc"),
    ("id::public.evil = 1", "cast to public.evil"),
    ("current_user = 'postgres'", "CURRENT_USER"),
    ("session_user = 'x'", "SESSION_USER"),
    ("id OPERATOR(public.===) 1", "operator public.==="),
    ("id === 1", "operator ==="),
    ("a COLLATE \"C\" > 'b'", "COLLATE"),
    ("(a, b) = (1, 2)", "row constructor"),
    ("arr[1] = 2", "subscript"),
    ("name SIMILAR TO 'a%'", "SIMILAR"),
    ("id = 1 AND", "not a valid SQL expression"),
    ("'unterminated", "not a valid SQL expression"),
    ("x" * 200_001, "at most"),
    ("id = 1\x00", "NUL"),
    ("lower(name) OVER () = 'a'", "window"),
    ("lower(VARIADIC ARRAY['a']) = 'a'", "VARIADIC"),
    ("xmlparse(document '<a/>') IS NULL", "XML"),
    ("DEFAULT", "DEFAULT is not allowed"),
]


def test_enough_cases():
    assert len(ACCEPTED) >= 30 and len(REFUSED) >= 30


@pytest.mark.parametrize("text,deparsed", ACCEPTED, ids=[a for a, _ in ACCEPTED])
def test_accepted(text, deparsed):
    out = check_filter(text)
    if deparsed is not None:
        assert out == deparsed
    assert check_filter(out) == out  # the deparsed form checks again, unchanged: it is what runs


@pytest.mark.parametrize("text,message", REFUSED, ids=[repr(r)[:60] for r, _ in REFUSED])
def test_refused(text, message):
    with pytest.raises(FilterError) as caught:
        check_filter(text)
    assert message in str(caught.value)


def test_a_literal_keeps_its_content():
    """Quotes, semicolons and comment markers inside a literal stay data, quoted as such."""
    out = check_filter("note = 'it''s; -- /* fine */'")
    assert out == "note = 'it''s; -- /* fine */'"


def test_the_incremental_filter_of_a_hostile_state_is_a_literal():
    """An incremental run's state comes from Kafka: whatever it holds, it is one quoted literal."""
    from mallard.core.incremental import incremental_filter

    hostile = "0'); COPY (SELECT 1) TO PROGRAM 'touch /tmp/x'; --"
    out = check_filter(incremental_filter("updated_at", hostile))
    assert out == "updated_at > " + "'" + hostile.replace("'", "''") + "'"


def test_a_repair_filter_of_a_thousand_keys_is_accepted():
    keys = ", ".join(f"CAST('{i:08d}-0000-0000-0000-000000000000' AS UUID)" for i in range(1000))
    assert check_filter(f'"id" IN ({keys})').startswith("id IN (CAST('00000000-")
