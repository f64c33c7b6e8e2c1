import json

import pytest

from mallard.config.connector import load_connector_config_file
from mallard.core.connector import (
    REQUIRED,
    ConnectorConfigError,
    parse_connector_config,
    placeholders,
    resolve_placeholders,
)
from mallard.config.settings import DEFAULT_CONNECTOR_CONFIG


def repo_config():
    return load_connector_config_file(DEFAULT_CONNECTOR_CONFIG)


def doc(**overrides):
    config = dict(repo_config().config)
    for k, v in overrides.items():
        if v is None:
            config.pop(k.replace("_", "."), None)
        else:
            config[k.replace("_", ".")] = v
    return json.dumps({"name": "x", "config": config})


def test_repo_config_meets_what_mallard_relies_on():
    config = repo_config()
    for key, value in REQUIRED.items():
        assert config.config[key] == value
    assert config.topic_prefix == "mallard"
    assert config.tables == ["public.customers", "public.products", "public.orders"]
    assert placeholders(config) == {
        "MALLARD_PG_HOST", "MALLARD_PG_PORT", "MALLARD_PG_USER", "MALLARD_PG_PASSWORD", "MALLARD_PG_DATABASE",
    }


@pytest.mark.parametrize("key", sorted(REQUIRED))
def test_each_required_setting_is_enforced_by_name(key):
    config = dict(repo_config().config)
    config[key] = "something-else"
    with pytest.raises(ConnectorConfigError, match=key.replace(".", r"\.")):
        parse_connector_config(json.dumps({"name": "x", "config": config}), source="f.json")


@pytest.mark.parametrize("text, message", [
    ("{not json", "not JSON"),
    ('{"config": {}}', "expected"),
    ('["a"]', "expected"),
])
def test_malformed_files_are_named(text, message):
    with pytest.raises(ConnectorConfigError, match=f"f.json: {message}"):
        parse_connector_config(text, source="f.json")


def test_topic_prefix_is_required():
    with pytest.raises(ConnectorConfigError, match="topic.prefix"):
        parse_connector_config(doc(topic_prefix=""), "f")


def test_placeholders_resolve_like_connects_env_provider():
    env = {"MALLARD_PG_HOST": "db", "MALLARD_PG_PORT": "5433", "MALLARD_PG_USER": "u",
           "MALLARD_PG_PASSWORD": "s3cret", "MALLARD_PG_DATABASE": "shop"}
    resolved = resolve_placeholders(repo_config(), env)
    assert resolved.config["database.hostname"] == "db"
    assert resolved.config["database.port"] == "5433"
    assert resolved.config["database.password"] == "s3cret"
    assert not placeholders(resolved)


def test_missing_variables_are_all_named():
    with pytest.raises(ConnectorConfigError, match="MALLARD_PG_DATABASE, MALLARD_PG_HOST"):
        resolve_placeholders(repo_config(), {"MALLARD_PG_PORT": "1", "MALLARD_PG_USER": "u", "MALLARD_PG_PASSWORD": "p"})


def test_topic_names():
    config = repo_config()
    assert config.cdc_topic("public.orders") == "mallard.public.orders"
    assert config.transaction_topic == "mallard.transaction"


def test_the_applier_subscribes_to_table_topics_only():
    import re

    from mallard.core.connector import cdc_topic_pattern

    pattern = re.compile(cdc_topic_pattern("mallard"))
    assert pattern.match("mallard.public.orders") and pattern.match("mallard.sales.new_table")
    assert not pattern.match("mallard.transaction")
    assert not pattern.match("__debezium-heartbeat.mallard") and not pattern.match("mallardx.public.t")
    assert not pattern.match("mallard.dead-letter")


def test_the_table_list_is_derived_from_the_replication_config(tmp_path):
    from mallard.config.connector import derive_connector_config, load_connector_config_file
    from mallard.config.replication import load_config
    from mallard.config.settings import DEFAULT_CONNECTOR_CONFIG, REPO_ROOT

    demo = REPO_ROOT / "demo" / "replication.yaml"
    streams = list(load_config(demo).streams)
    # the shipped file agrees with the shipped config (docker-compose's applier reads it as is) ...
    assert load_connector_config_file(DEFAULT_CONNECTOR_CONFIG).tables == streams
    # ... and what the local stack and `connector register --replication-config` run is derived from it
    config_file = tmp_path / "r.yaml"
    config_file.write_text("streams:\n  public.orders:\n  shop.invoices:\n")
    out = tmp_path / "connector.json"
    derived = derive_connector_config(DEFAULT_CONNECTOR_CONFIG, config_file, out)
    assert derived.tables == ["public.orders", "shop.invoices"]
    again = load_connector_config_file(out)
    assert again.tables == ["public.orders", "shop.invoices"]
    assert again.config["database.password"] == "${env:MALLARD_PG_PASSWORD}"  # placeholders kept, no secret written
