"""The JVM stack's command lines and config files (mallard/stack/jvm.py): pure, no JVM."""
import base64
import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mallard.config.settings import REPO_ROOT
from mallard.stack.jvm import (
    BROKER_MAIN, CONNECT_MAIN, ENV_CONFIG_PROVIDER, FILE_CONFIG_PROVIDER, JSON_CONVERTER, STORAGE_TOOL_MAIN, Artifacts,
    BrokerConfig, ConnectConfig, JvmError, java_command, judge_status, new_cluster_id, parse_properties,
    pinned_versions, render_properties, rss_bytes,
)


def fake_artifacts(tmp_path: Path) -> Artifacts:
    lib = tmp_path / "jvm" / "kafka"
    lib.mkdir(parents=True)
    for name in ("kafka_2.13-4.3.0.jar", "connect-runtime-4.3.0.jar", "kafka-clients-4.3.0.jar"):
        (lib / name).write_bytes(b"")
    return Artifacts(tmp_path / "jvm")


# -- pinned versions ----------------------------------------------------------------


def test_the_pom_pins_debezium_3_6_and_a_kafka_release():
    v = pinned_versions()
    assert re.fullmatch(r"3\.6\.\d+\.Final", v["debezium"])
    assert re.fullmatch(r"4\.\d+\.\d+", v["kafka"])


def test_a_pom_without_the_version_property_is_named(tmp_path):
    pom = tmp_path / "pom.xml"
    pom.write_text('<project xmlns="http://maven.apache.org/POM/4.0.0"><properties>'
                   "<version.kafka>4.3.0</version.kafka></properties></project>")
    with pytest.raises(JvmError, match=r"pom.xml: <properties> has no <version.debezium>"):
        pinned_versions(pom)
    (tmp_path / "bad.xml").write_text("<project")
    with pytest.raises(JvmError, match="cannot read the pom"):
        pinned_versions(tmp_path / "bad.xml")


# -- properties files ----------------------------------------------------------------

_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=30)


@given(st.dictionaries(_text.filter(bool), _text, max_size=8))
def test_properties_round_trip(props):
    text = render_properties(props, header="a header\nof two lines")
    text.encode("latin-1")  # what java.util.Properties reads: everything else is \u-escaped
    assert parse_properties(text) == props


def test_properties_escape_what_java_would_misread():
    text = render_properties({"log.dirs": "/tmp/a b", "k=x": "v:w#!", "u": "é", " lead": " sp"})
    assert "log.dirs=/tmp/a b\n" in text
    assert "k\\=x=v\\:w\\#\\!\n" in text
    assert "u=\\u00e9\n" in text
    assert "\\ lead=\\ sp\n" in text


def test_parse_reads_kafka_meta_properties():
    meta = "#\n#Tue Dec 02 10:00:00 UTC 2026\nnode.id=1\ndirectory.id=abc\nversion=1\ncluster.id=h5bzaYu1TQud-k3hdtr6-A\n"
    assert parse_properties(meta) == {"node.id": "1", "directory.id": "abc", "version": "1",
                                      "cluster.id": "h5bzaYu1TQud-k3hdtr6-A"}
    assert parse_properties("a b\nc:d\ne = f\nlonely\n") == {"a": "b", "c": "d", "e": "f", "lonely": ""}


# -- the JVM command line ----------------------------------------------------------------


def test_java_command_sets_an_explicit_heap_and_the_log_config(tmp_path):
    argv = java_command("x.Main", ["arg"], classpath="a.jar:b.jar", heap="384m", log4j_config=tmp_path / "l.properties")
    assert argv[0] == "java" and "-Xmx384m" in argv
    assert f"-Dlog4j2.configurationFile={tmp_path / 'l.properties'}" in argv
    assert argv[-4:] == ["-cp", "a.jar:b.jar", "x.Main", "arg"]


@pytest.mark.parametrize("heap", ["", "512", "-1m", "1.5g", "512mb", "0m"])
def test_a_bad_heap_is_refused(heap):
    with pytest.raises(JvmError, match="heap"):
        java_command("x.Main", [], classpath="a.jar", heap=heap)


def test_classpath_is_every_resolved_jar(tmp_path):
    artifacts = fake_artifacts(tmp_path)
    cp = artifacts.classpath().split(":")
    assert [Path(p).name for p in cp] == ["connect-runtime-4.3.0.jar", "kafka-clients-4.3.0.jar", "kafka_2.13-4.3.0.jar"]


def test_missing_artifacts_say_how_to_resolve_them(tmp_path):
    with pytest.raises(JvmError, match=r"Kafka's jars are missing from .*scripts/jvm-setup.sh"):
        Artifacts(tmp_path).classpath()
    with pytest.raises(JvmError, match=r"Debezium's connector plugin is missing from .*debezium-connector-postgres"):
        Artifacts(tmp_path).check_plugin()


# -- the broker ----------------------------------------------------------------------


def test_broker_is_one_combined_node_on_loopback_with_its_log_under_home(tmp_path):
    b = BrokerConfig(tmp_path / "broker", port=19092, controller_port=19093)
    p = b.properties()
    assert p["process.roles"] == "broker,controller"
    assert p["controller.quorum.voters"] == "1@127.0.0.1:19093"
    assert p["listeners"] == "PLAINTEXT://127.0.0.1:19092,CONTROLLER://127.0.0.1:19093"
    assert p["advertised.listeners"] == "PLAINTEXT://127.0.0.1:19092"
    assert p["controller.listener.names"] == "CONTROLLER"
    assert Path(p["log.dirs"]) == tmp_path / "broker" / "data"
    for key in ("offsets.topic.replication.factor", "transaction.state.log.replication.factor",
                "transaction.state.log.min.isr", "default.replication.factor"):
        assert p[key] == "1", key
    assert p["log.retention.hours"] == "168" and "log.segment.bytes" in p
    assert b.bootstrap_servers == "127.0.0.1:19092"


@pytest.mark.parametrize("port,controller", [(0, 19093), (70000, 19093), (19092, 19092)])
def test_broker_refuses_bad_ports(tmp_path, port, controller):
    with pytest.raises(JvmError, match="broker"):
        BrokerConfig(tmp_path, port=port, controller_port=controller)


def test_new_cluster_id_is_kafkas_uuid_form():
    cid = new_cluster_id()
    assert re.fullmatch(r"[A-Za-z0-9_-]{22}", cid)
    assert len(base64.urlsafe_b64decode(cid + "==")) == 16
    assert cid != new_cluster_id()


def test_cluster_id_is_created_once_and_kept(tmp_path):
    b = BrokerConfig(tmp_path / "broker", 19092, 19093)
    first = b.cluster_id()
    assert (tmp_path / "broker" / "cluster.id").read_text().strip() == first
    assert BrokerConfig(tmp_path / "broker", 29092, 29093).cluster_id() == first


def test_a_formatted_log_dir_keeps_its_own_cluster_id(tmp_path):
    b = BrokerConfig(tmp_path / "broker", 19092, 19093)
    b.cluster_id_file.parent.mkdir(parents=True)
    b.cluster_id_file.write_text("AAAAAAAAAAAAAAAAAAAAAA\n")
    b.log_dir.mkdir()
    (b.log_dir / "meta.properties").write_text("node.id=1\nversion=1\ncluster.id=h5bzaYu1TQud-k3hdtr6-A\n")
    assert b.is_formatted()
    assert b.cluster_id() == "h5bzaYu1TQud-k3hdtr6-A"


def test_a_damaged_cluster_id_file_is_named_not_replaced(tmp_path):
    b = BrokerConfig(tmp_path / "broker", 19092, 19093)
    b.cluster_id_file.parent.mkdir(parents=True)
    b.cluster_id_file.write_text("not an id\n")
    with pytest.raises(JvmError, match=r"cluster.id: 'not an id' is not a Kafka cluster id"):
        b.cluster_id()
    assert b.cluster_id_file.read_text() == "not an id\n"


def test_broker_commands(tmp_path):
    artifacts = fake_artifacts(tmp_path)
    b = BrokerConfig(tmp_path / "broker", 19092, 19093, heap="512m")
    b.write_config()
    assert parse_properties(b.properties_file.read_text(encoding="latin-1")) == b.properties()
    assert "rootLogger.level" in b.log4j_file.read_text()
    fmt = b.format_command(artifacts)
    i = fmt.index(STORAGE_TOOL_MAIN)
    assert fmt[i + 1:] == ["format", "--cluster-id", b.cluster_id(), "--config", str(b.properties_file)]
    run = b.command(artifacts)
    assert "-Xmx512m" in run and run[-2:] == [BROKER_MAIN, str(b.properties_file)]
    assert run[run.index("-cp") + 1] == artifacts.classpath()


# -- Kafka Connect ---------------------------------------------------------------------


def test_connect_worker_is_distributed_with_its_state_in_kafka(tmp_path):
    c = ConnectConfig(tmp_path / "connect", "127.0.0.1:19092", 18083, tmp_path / "plugins")
    p = c.properties()
    assert p["bootstrap.servers"] == "127.0.0.1:19092"
    assert {p["config.storage.topic"], p["offset.storage.topic"], p["status.storage.topic"]} == {
        "mallard-connect-configs", "mallard-connect-offsets", "mallard-connect-status"}
    for kind in ("config", "offset", "status"):
        assert p[f"{kind}.storage.replication.factor"] == "1"
    assert p["key.converter"] == p["value.converter"] == JSON_CONVERTER
    assert p["key.converter.schemas.enable"] == p["value.converter.schemas.enable"] == "true"
    assert p["plugin.path"] == str(tmp_path / "plugins")
    assert p["listeners"] == "http://127.0.0.1:18083"
    assert c.url == "http://127.0.0.1:18083"


def test_the_one_worker_takes_its_connector_back_at_once_after_losing_kafka(tmp_path):
    # It stops the connector when the broker is gone longer than its session; by default
    # the rejoined worker then waits 5 minutes for the "departed" one before reassigning.
    p = ConnectConfig(tmp_path, "127.0.0.1:19092", 18083, tmp_path).properties()
    assert p["scheduled.rebalance.max.delay.ms"] == "0"
    assert "CONNECT_SCHEDULED_REBALANCE_MAX_DELAY_MS: 0" in (REPO_ROOT / "docker-compose.yml").read_text()


def test_connect_resolves_env_and_file_placeholders_like_compose(tmp_path):
    p = ConnectConfig(tmp_path, "127.0.0.1:19092", 18083, tmp_path).properties()
    providers = p["config.providers"].split(",")
    assert {"env", "file"} <= set(providers)
    assert p["config.providers.env.class"] == ENV_CONFIG_PROVIDER
    assert p["config.providers.file.class"] == FILE_CONFIG_PROVIDER
    # compose names the same provider class under the same alias ('env', as in ${env:...}).
    compose = (REPO_ROOT / "docker-compose.yml").read_text()
    assert f"CONNECT_CONFIG_PROVIDERS_ENV_CLASS: {ENV_CONFIG_PROVIDER}" in compose


def test_connect_command_and_files(tmp_path):
    artifacts = fake_artifacts(tmp_path)
    c = ConnectConfig(tmp_path / "connect", "127.0.0.1:19092", 18083, artifacts.plugin_path, heap="448m")
    c.write_config()
    assert parse_properties(c.properties_file.read_text(encoding="latin-1")) == c.properties()
    argv = c.command(artifacts)
    assert "-Xmx448m" in argv and argv[-2:] == [CONNECT_MAIN, str(c.properties_file)]


@pytest.mark.parametrize("kwargs,match", [({"rest_port": 0}, "rest_port"), ({"bootstrap_servers": ""}, "bootstrap")])
def test_connect_refuses_bad_settings(tmp_path, kwargs, match):
    args = {"home": tmp_path, "bootstrap_servers": "127.0.0.1:1", "rest_port": 8083, "plugin_path": tmp_path, **kwargs}
    with pytest.raises(JvmError, match=match):
        ConnectConfig(**args)


def test_the_named_classes_are_in_the_resolved_jars():
    artifacts = Artifacts()
    if not artifacts.kafka_lib.is_dir():
        pytest.skip("run scripts/jvm-setup.sh first")
    classes = set()
    for jar in artifacts.kafka_lib.glob("*.jar"):
        with zipfile.ZipFile(jar) as z:
            classes.update(n[:-6].replace("/", ".") for n in z.namelist() if n.endswith(".class"))
    for name in (BROKER_MAIN, STORAGE_TOOL_MAIN, CONNECT_MAIN, ENV_CONFIG_PROVIDER, FILE_CONFIG_PROVIDER, JSON_CONVERTER):
        assert name in classes, name
    plugin = artifacts.check_plugin()
    assert any(plugin.glob("postgresql-*.jar")), "Debezium's plugin brings the JDBC driver"
    # The plugin must not carry its own Kafka: Connect's classes would clash with it.
    assert not any(plugin.glob("kafka-clients-*.jar")) and not any(plugin.glob("connect-api-*.jar"))


# -- Connect's connector status ---------------------------------------------------------


def test_running_connector_and_task_is_ready():
    s = judge_status({"name": "m", "connector": {"state": "RUNNING"}, "tasks": [{"id": 0, "state": "RUNNING"}]})
    assert s.ready and not s.failed
    assert s.detail == "connector RUNNING, tasks RUNNING"


@pytest.mark.parametrize("status,detail", [
    ({"connector": {"state": "RUNNING"}, "tasks": []}, "connector RUNNING, tasks none yet"),
    ({"connector": {"state": "RUNNING"}, "tasks": [{"id": 0, "state": "UNASSIGNED"}]}, "tasks UNASSIGNED"),
    ({"connector": {"state": "PAUSED"}, "tasks": [{"id": 0, "state": "PAUSED"}]}, "connector PAUSED"),
    ({"connector": {"state": "UNASSIGNED"}, "tasks": [{"id": 0, "state": "RUNNING"}]}, "connector UNASSIGNED"),
    ({}, "connector absent, tasks none yet"),
])
def test_not_yet_ready(status, detail):
    s = judge_status(status)
    assert not s.ready and not s.failed
    assert detail in s.detail


def test_a_failed_task_is_reported_with_its_trace_first_line():
    s = judge_status({"connector": {"state": "RUNNING"}, "tasks": [
        {"id": 0, "state": "FAILED", "trace": "org.apache.kafka.connect.errors.ConnectException: "
                                             "password authentication failed\n\tat io.debezium..."}]})
    assert not s.ready
    assert s.failed == "task 0 FAILED: org.apache.kafka.connect.errors.ConnectException: password authentication failed"


def test_a_failed_connector_is_reported():
    s = judge_status({"connector": {"state": "FAILED"}, "tasks": []})
    assert s.failed == "connector FAILED: no trace"


# -- the rest ----------------------------------------------------------------------------


def test_rss_of_a_live_and_a_gone_process():
    assert rss_bytes(os.getpid()) > 1 << 20
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    assert rss_bytes(proc.pid) is None


def test_importing_the_module_connects_to_nothing():
    code = ("import sys, mallard.stack.jvm; "
            "print([m for m in ('confluent_kafka', 'psycopg2', 'duckdb') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO_ROOT)
    assert out.stdout.strip() == "[]"


def test_a_new_cluster_id_never_starts_with_a_dash():
    from mallard.stack.jvm import new_cluster_id

    assert not any(new_cluster_id().startswith("-") for _ in range(2000))


def test_connects_refusal_of_a_config_keeps_the_errors_it_lists():
    import io
    import urllib.error

    from mallard.stack.jvm import _error_message

    body = json.dumps({"error_code": 400, "message": (
        "Connector configuration is invalid and contains the following 1 error(s):\n"
        "slot.name: Valid replication slot name must contain only digits, lowercase characters and underscores\n"
        "You can also find the above list of errors at the endpoint `/connector-plugins/{connectorType}/config/validate`")})
    error = urllib.error.HTTPError("http://x", 400, "Bad Request", {}, io.BytesIO(body.encode()))
    message = _error_message(error)
    assert message.startswith("Connector configuration is invalid") and "slot.name: Valid replication slot" in message
    assert "You can also find" not in message and "\n" not in message


def test_extra_jvm_options_come_after_mallards_own_on_every_jvm(tmp_path, monkeypatch):
    from mallard.stack.local import LocalStack, StackSettings

    monkeypatch.delenv("MALLARD_JVM_OPTS", raising=False)

    artifacts = fake_artifacts(tmp_path)
    stack = LocalStack(StackSettings(home=tmp_path / "home", replication_config="",
                                     jvm_opts="-XX:TieredStopAtLevel=1  -Dmallard.note='two words'"))
    for argv in (stack.broker.command(artifacts), stack.broker.format_command(artifacts),
                 stack.connect.command(artifacts)):
        i = argv.index("-XX:TieredStopAtLevel=1")
        assert argv[i + 1] == "-Dmallard.note=two words" and argv.index("-XX:+UseG1GC") < i < argv.index("-cp")
    assert "-XX:TieredStopAtLevel=1" not in LocalStack(StackSettings(home=tmp_path / "h2")).broker.command(artifacts)
