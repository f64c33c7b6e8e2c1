"""Which deployment the CLI talks to: option > variable > profile > local stack, masked
secrets, and a profile file that refuses what it cannot use in one line."""
import json

import pytest

from mallard.core.deployment import ADDRESSES, ENV_NAMES, ProfileError, mask_dsn, parse_profiles, resolve

LOCAL = {"bootstrap_server": "127.0.0.1:19092", "applier_url": "http://127.0.0.1:18082",
         "connect_url": "http://127.0.0.1:18084", "pg_dsn": "", "config": "demo/replication.yaml"}
PROFILE = {"bootstrap_server": "kafka.example:9093", "applier_url": "http://applier.example:8082",
           "connect_url": "http://connect.example:8083", "pg_dsn": "postgresql://ro@db.example/shop",
           "config": "prod.yaml", "replica_file": "/mnt/replica/mallard.duckdb",
           "kafka": {"security.protocol": "SASL_SSL", "sasl.password": "${KAFKA_PW}"}}


def test_nothing_given_is_the_local_stack():
    dep = resolve({}, {}, None, None, LOCAL)
    assert dep.bootstrap_server == "127.0.0.1:19092" and dep.is_local_stack and dep.kafka == {}
    assert dep.origin["bootstrap_server"] == "local stack" and dep.origin["pg_dsn"] == "unset"


@pytest.mark.parametrize("name", ADDRESSES)
def test_each_address_takes_the_first_of_option_variable_profile_local(name):
    env = {ENV_NAMES[name]: "from-env", "KAFKA_PW": "s3cret"}
    assert getattr(resolve({name: "from-option"}, env, PROFILE, "prod", LOCAL), name) == "from-option"
    assert getattr(resolve({}, env, PROFILE, "prod", LOCAL), name) == "from-env"
    dep = resolve({}, {"KAFKA_PW": "s3cret"}, PROFILE, "prod", LOCAL)
    assert getattr(dep, name) == PROFILE[name] and dep.origin[name] == "profile prod"
    assert not dep.is_local_stack


def test_kafka_security_from_the_profile_resolved_and_the_environment_over_it():
    dep = resolve({}, {"KAFKA_PW": "s3cret"}, PROFILE, "prod", LOCAL)
    assert dep.kafka == {"security.protocol": "SASL_SSL", "sasl.password": "s3cret"}
    dep = resolve({}, {"KAFKA_PW": "s3cret", "MALLARD_KAFKA_SECURITY_PROTOCOL": "SSL"}, PROFILE, "prod", LOCAL)
    assert dep.kafka["security.protocol"] == "SSL"
    with pytest.raises(ProfileError, match="KAFKA_PW"):
        resolve({}, {}, PROFILE, "prod", LOCAL)


def test_shown_masks_every_secret():
    dep = resolve({"pg_dsn": "postgresql://u:hunter2@h:5432/d"}, {"KAFKA_PW": "s3cret"}, PROFILE, "prod", LOCAL)
    text = repr(dep.shown())
    assert "hunter2" not in text and "s3cret" not in text and "u:***@h:5432" in text


@pytest.mark.parametrize("dsn,masked", [
    ("postgresql://u:p@h/d", "postgresql://u:***@h/d"),
    ("postgresql://u@h/d", "postgresql://u@h/d"),
    ("host=h password=p user=u", "host=h password=*** user=u"),
    ("host=h password='a b' user=u", "host=h password=*** user=u"),
    ("", ""),
])
def test_mask_dsn(dsn, masked):
    assert mask_dsn(dsn) == masked


def test_a_profile_file_parses():
    profiles = parse_profiles("profiles:\n  prod:\n    bootstrap_server: k:9093\n    kafka:\n      security.protocol: SSL\n")
    assert profiles == {"prod": {"bootstrap_server": "k:9093", "kafka": {"security.protocol": "SSL"}}}
    assert parse_profiles("") == {}


@pytest.mark.parametrize("text,message", [
    ("profiles: [1", "p.yaml:1: not valid YAML"),
    ("prod: {}", "expected a mapping with one key, 'profiles'"),
    ("profiles:\n  prod:\n    kafak_url: x\n", "profiles.prod.kafak_url: unknown setting"),
    ("profiles:\n  prod:\n    kafka:\n      sasl.password: hunter2\n", "a secret must be an environment reference"),
    ("profiles:\n  prod:\n    kafka:\n      bootstrap.servers: x\n", "only security.protocol, sasl.* and ssl.*"),
    ("profiles:\n  prod:\n    pg_dsn: postgresql://u:hunter2@h/d\n", "password in the DSN must be an environment"),
    ("profiles:\n  'a b': {}\n", "a profile name is letters"),
])
def test_a_bad_profile_file_is_one_line_naming_what_is_wrong(text, message):
    with pytest.raises(ProfileError) as e:
        parse_profiles(text, "p.yaml")
    assert message in str(e.value) and "\n" not in str(e.value) and "hunter2" not in str(e.value)


def test_postgres_tls_settings_reach_libpq():
    """sslmode and certificates go from the settings to libpq (a refused sslmode proves it)."""
    import psycopg2

    from mallard.adapters import postgres
    from mallard.config.settings import PostgresSettings

    params = PostgresSettings(pg_host="127.0.0.1", pg_port=1, pg_sslmode="bogus").pg_params()
    assert params["sslmode"] == "bogus"
    with pytest.raises((postgres.SourceError, psycopg2.ProgrammingError)) as e:
        postgres.connect(**params, timeout=1)
    assert "sslmode" in str(e.value)


# -- the replication config: the environment over what `stack up` recorded (issue 18) ----------

def _recorded_stack(tmp_path, monkeypatch, recorded_config: str) -> None:
    """A home where an earlier `stack up` left ``recorded_config`` in stack.json."""
    import json

    for name in [n for n in __import__("os").environ if n.startswith("MALLARD_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("MALLARD_HOME", str(tmp_path))
    (tmp_path / "stack.json").write_text(json.dumps({"replication_config": recorded_config, "pg_port": 15999}))


def _config(tmp_path, name: str, source: str = "") -> str:
    path = tmp_path / f"{name}.yaml"
    path.write_text(source + f"streams:\n  public.{name}:\n")
    return str(path)


def test_the_exported_config_wins_over_the_one_stack_up_recorded(tmp_path, monkeypatch, capsys):
    from mallard.cli.main import main
    from mallard.config.deployment import resolve_deployment

    _recorded_stack(tmp_path, monkeypatch, _config(tmp_path, "recorded"))
    exported = _config(tmp_path, "exported")
    monkeypatch.setenv("MALLARD_REPLICATION_CONFIG", exported)
    dep = resolve_deployment({})
    assert dep.config == exported and dep.origin["config"] == "environment"
    assert main(["config", "check", "--offline"]) == 0
    assert capsys.readouterr().out.startswith(f"{exported}: ok: 1 stream(s) (public.exported")
    monkeypatch.delenv("MALLARD_REPLICATION_CONFIG")  # nothing exported: the stack's own
    assert resolve_deployment({}).origin["config"] == "local stack"


def test_the_exported_config_names_the_source_commands_connect_to(tmp_path, monkeypatch, capsys):
    """``config check`` checks the tables in the Postgres the exported config names, not
    in the local stack's (a MALLARD_PG_* variable still wins over the file)."""
    from mallard.cli.main import main
    from mallard.config.deployment import config_source, stack_settings

    _recorded_stack(tmp_path, monkeypatch, _config(tmp_path, "recorded"))
    exported = _config(tmp_path, "exported", "source:\n  type: postgres\n  host: 127.0.0.1\n  port: 1\n"
                                             "  database: elsewhere\n")
    monkeypatch.setenv("MALLARD_REPLICATION_CONFIG", exported)
    stack = stack_settings()
    source = config_source(stack, exported)
    assert (source.pg_port, source.pg_database, stack.pg_port) == (1, "elsewhere", 15999)
    assert main(["config", "check"]) == 1
    err = capsys.readouterr().err
    assert "port 1" in err and "15999" not in err, err
    monkeypatch.setenv("MALLARD_PG_PORT", "2")
    assert config_source(stack_settings(), exported).pg_port == 2


def test_query_reads_the_replica_file_when_the_applier_does_not_answer(tmp_path):
    """Compose from the host: the applier's port is not published, its read copy is on a
    host folder; the CLI reads it read-only and confined, one read only."""
    import os
    import subprocess
    import sys

    import duckdb

    copy = tmp_path / "mallard.duckdb"
    con = duckdb.connect(str(copy))
    con.execute("CREATE TABLE orders (id int, total decimal(12,2)); INSERT INTO orders VALUES (1, 649.40), (2, 1.00)")
    con.close()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLARD_")}
    env.update(MALLARD_HOME=str(tmp_path / "home"), MALLARD_REPLICA_FILE=str(copy),
               MALLARD_APPLIER_URL="http://127.0.0.1:9/")  # discard port: nothing answers

    def query(sql: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "mallard.cli.main", "query", "--json", sql], env=env,
                              capture_output=True, text=True, timeout=60)

    out = query("SELECT id, total FROM orders ORDER BY id")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["rows"] == [[1, "649.40"], [2, "1.00"]] and "read copy" in out.stderr
    for hostile in ("DELETE FROM orders", "SELECT * FROM read_csv('/etc/passwd')", "COPY orders TO '/tmp/x.csv'"):
        refused = query(hostile)
        assert refused.returncode == 1 and "mallard query:" in refused.stderr, (hostile, refused)
    assert duckdb.connect(str(copy), read_only=True).execute("SELECT count(*) FROM orders").fetchone() == (2,)
