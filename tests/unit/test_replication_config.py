"""The replication config: the demo file, and every invalid config fails with one line naming file, line and key."""
import pytest

from mallard.core.replication import ConfigError, parse_config, resolve_env
from mallard.config.settings import REPO_ROOT

DEMO = REPO_ROOT / "demo" / "replication.yaml"

GOOD = """\
defaults:
  mode: full-refresh
streams:
  public.customers:
  public.orders:
    mode: incremental
    primary_key: id
    update_key: updated_at
schedules:
  daily:
    cron: "0 6 * * *"
    streams: "*"
  orders:
    cron: "0 12,18 * * *"
    timezone: Europe/Berlin
    streams: [public.orders]
"""


def test_demo_config():
    from mallard.config.replication import load_config

    c = load_config(DEMO)
    assert list(c.streams) == ["public.customers", "public.products", "public.orders"]
    assert c.streams["public.customers"].mode == "full-refresh"
    orders = c.streams["public.orders"]
    assert (orders.mode, orders.primary_key, orders.update_key) == ("incremental", ("id",), "updated_at")
    assert c.schedules["daily"].streams == ("public.customers", "public.products", "public.orders")
    assert c.schedules["daily"].cron.expression == "0 6 * * *"
    assert c.schedules["orders"].streams == ("public.orders",)
    assert c.schedules["orders"].cron.hours == (12, 18)


def test_defaults_apply_and_zone():
    c = parse_config(GOOD)
    assert c.streams["public.customers"].mode == "full-refresh"
    assert c.streams["public.customers"].target == "customers"
    assert str(c.schedules["orders"].cron.tz) == "Europe/Berlin"


def one_line(text: str) -> str:
    with pytest.raises(ConfigError) as e:
        parse_config(text, "r.yaml")
    message = str(e.value)
    assert "\n" not in message
    return message


def test_unknown_mode():
    assert one_line(GOOD.replace("mode: incremental", "mode: fast")) == \
        "r.yaml:6: streams.public.orders.mode: unknown mode 'fast' (expected full-refresh or incremental)"


def test_unknown_default_mode():
    assert one_line(GOOD.replace("mode: full-refresh", "mode: append")).startswith(
        "r.yaml:2: defaults.mode: unknown mode 'append'")


def test_missing_update_key():
    assert one_line(GOOD.replace("    update_key: updated_at\n", "")) == (
        "r.yaml:5: streams.public.orders: mode incremental needs an update_key (the column that grows with every "
        "insert and update, e.g. updated_at)")


def test_bad_cron():
    msg = one_line(GOOD.replace("0 12,18 * * *", "0 25 * * *"))
    assert msg.startswith("r.yaml:14: schedules.orders.cron: bad cron: hour: 25 is out of range 0-23"), msg


def test_bad_cron_field_count():
    msg = one_line(GOOD.replace('"0 6 * * *"', '"0 6 * *"'))
    assert msg.startswith("r.yaml:11: schedules.daily.cron: bad cron: '0 6 * *' has 4 field(s)"), msg


def test_bad_timezone():
    assert "unknown time zone 'Europe/Nowhere'" in one_line(GOOD.replace("Europe/Berlin", "Europe/Nowhere"))


def test_unknown_stream_in_schedule():
    assert one_line(GOOD.replace("streams: [public.orders]", "streams: [public.orders, public.invoices]")) == \
        "r.yaml:16: schedules.orders.streams[1]: unknown stream 'public.invoices' (not under streams:)"


def test_unknown_key():
    assert one_line(GOOD.replace("    primary_key: id\n", "    primary_key: id\n    upsert: yes\n")) == \
        "r.yaml:8: streams.public.orders.upsert: unknown key"


def test_literal_password_refused():
    msg = one_line("source:\n  password: hunter2\nstreams:\n  public.a:\n")
    assert msg.startswith("r.yaml:2: source.password: a password must be an environment variable reference")
    assert "hunter2" not in msg


def test_not_yaml():
    assert one_line("streams: [a\n").startswith("r.yaml:2: not valid YAML")


def test_stream_name():
    assert one_line("streams:\n  orders:\n").startswith("r.yaml:2: streams.orders: a stream is '<schema>.<table>'")


def test_no_streams():
    assert one_line("schedules: {}\n").startswith("r.yaml:1: streams: required")


def test_env_references():
    assert resolve_env("${A}:${B:-5}", {"A": "x"}) == "x:5"
    with pytest.raises(KeyError):
        resolve_env("${MISSING}", {})
    c = parse_config("source:\n  password: ${PW}\nstreams:\n  public.a:\n")
    with pytest.raises(ConfigError, match="environment variable PW is not set"):
        c.model.source.resolved({})
    assert c.model.source.resolved({"PW": "s3cret"})["password"] == "s3cret"
    assert "s3cret" not in repr(c)


def test_where_is_one_checked_expression():
    c = parse_config(GOOD.replace("  public.customers:\n", "  public.customers:\n    where: '\"id\" % 5 = 0'\n"))
    assert c.streams["public.customers"].where == "id % 5 = 0"
    msg = one_line(GOOD.replace("  public.customers:\n",
                                "  public.customers:\n    where: '1=1); CREATE TABLE public.pwned (x int); --'\n"))
    assert msg.startswith("r.yaml:5: streams.public.customers.where: a filter is one expression: ';'"), msg
    msg = one_line(GOOD.replace("  mode: full-refresh\n", "  mode: full-refresh\n  where: pg_sleep(10) IS NULL\n"))
    assert "defaults.where: function pg_sleep() is not allowed in a filter" in msg, msg


def test_a_password_reference_with_a_literal_default_is_refused_without_echoing_it():
    msg = one_line("source:\n  password: ${NOPE:-hunter2}\nstreams:\n  public.a:\n")
    assert msg.startswith("r.yaml:2: source.password: a password reference may not carry a default"), msg
    assert "hunter2" not in msg
    # an empty default keeps no secret (no password: peer auth or ~/.pgpass)
    c = parse_config("source:\n  password: ${PW:-}\nstreams:\n  public.a:\n")
    assert c.model.source.resolved({})["password"] == ""
    assert c.model.source.resolved({"PW": "s3cret"})["password"] == "s3cret"


@pytest.mark.parametrize("text, expected", [
    ("streams:\n  public.a:\n  public.b:\n  public.a:\n    mode: incremental\n",
     "r.yaml:4: streams.public.a: given twice (first on line 2)"),
    ("streams:\n  public.a:\n    mode: full-refresh\n    mode: incremental\n",
     "r.yaml:4: streams.public.a.mode: given twice (first on line 3)"),
    ("streams:\n  public.a:\nstreams:\n  public.b:\n", "r.yaml:3: streams: given twice (first on line 1)"),
    ("streams:\n  public.a:\nschedules:\n  d:\n    cron: '0 6 * * *'\n  d:\n    cron: '0 7 * * *'\n",
     "r.yaml:6: schedules.d: given twice (first on line 4)"),
])
def test_a_key_given_twice_is_refused_naming_its_line(text, expected):
    assert one_line(text).startswith(expected)


def test_merge_keys_are_not_duplicates():
    c = parse_config("streams:\n  public.a: &a\n    mode: incremental\n    update_key: u\n  public.b:\n    <<: *a\n")
    assert c.streams["public.b"].mode == "incremental"


@pytest.mark.parametrize("cron", ["0 6 31 2 *", "0 6 30 2 *", "0 0 31 4,6,9,11 *", "0 6 30,31 feb *",
                                  "0 0 31 2 */2"])
def test_a_schedule_that_never_fires_is_refused_when_read(cron):
    msg = one_line(GOOD.replace("0 12,18 * * *", cron))
    assert msg.startswith(f"r.yaml:14: schedules.orders.cron: bad cron: '{cron}' never fires"), msg


def test_a_rare_schedule_is_fine():
    assert parse_config(GOOD.replace("0 12,18 * * *", "0 0 29 2 *")).schedules["orders"].cron.days == {29}
    parse_config(GOOD.replace("0 12,18 * * *", "0 0 31 2 mon"))  # either day matches: every Monday of February


@pytest.mark.parametrize("text, start", [
    ("a: 1\nb: \x00\n", "r.yaml:2: not valid YAML: unacceptable character #x0000"),
    ("[" * 5000, "r.yaml:1: not valid YAML"),
    ("? [a]\n: 1\n", "r.yaml:1: not valid YAML: found unhashable key"),
    ("streams: !!python/object/apply:os.system ['id']\n", "r.yaml:1: not valid YAML"),
    ("---\nstreams: {}\n---\nb: 2\n", "r.yaml:3: not valid YAML"),
    ("streams:\n  public.a:\n  7:\n", "r.yaml:3: streams[7]"),
])
def test_hostile_yaml_is_one_line_naming_the_file(text, start):
    assert one_line(text).startswith(start)


def test_a_binary_or_unreadable_file_is_named(tmp_path):
    from mallard.config.replication import load_config

    binary = tmp_path / "replication.yaml"
    binary.write_bytes(b"streams:\n  public.a:\n\x89PNG\r\n\x1a\n\xff\xfe")
    with pytest.raises(ConfigError) as e:
        load_config(binary)
    assert str(e.value).startswith(f"{binary}:3: not a text file (byte 0x89 at offset 21 is not UTF-8)"), e.value
    with pytest.raises(ConfigError, match=f"^{tmp_path}: cannot read the replication config: Is a directory"):
        load_config(tmp_path)
    with pytest.raises(ConfigError, match="^.*nope.yaml: cannot read the replication config: No such file"):
        load_config(tmp_path / "nope.yaml")
    nul = tmp_path / "nul.yaml"
    nul.write_bytes(b"streams:\n  public.a:\n\x00\x00")
    with pytest.raises(ConfigError, match=f"^{nul}:3: not valid YAML"):
        load_config(nul)


def test_a_broken_config_leaves_the_settings_to_their_defaults_for_its_user_to_report(tmp_path, monkeypatch):
    """Settings read the source from the config; a config that cannot be read is reported
    by whoever uses it (in one line), not as a traceback while building settings."""
    from mallard.config.replication import load_config
    from mallard.config.settings import PostgresSettings

    config = tmp_path / "replication.yaml"
    config.write_text('source:\n  host: db.example\nstreams:\n  public.a:\nschedules:\n  d:\n    cron: "0 6 31 2 *"\n')
    monkeypatch.setenv("MALLARD_REPLICATION_CONFIG", str(config))
    monkeypatch.delenv("MALLARD_PG_HOST", raising=False)
    assert PostgresSettings().pg_host == "127.0.0.1"
    with pytest.raises(ConfigError, match=r"replication.yaml:7: schedules.d.cron: bad cron: '0 6 31 2 \*' never fires"):
        load_config(config)
