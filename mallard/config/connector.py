"""The connector config file on disk, and its registration with Kafka Connect
(docker-compose: the ``connector-init`` service runs ``mallard connector register``)."""
from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path

from mallard.core.connector import (ConnectorConfig, parse_connector_config, resolve_placeholders,
                                    with_inserts_publication, with_streams)

log = logging.getLogger("mallard.config.connector")


def load_connector_config_file(path: Path | str, env: Mapping[str, str] | None = None) -> ConnectorConfig:
    """Parse the file; with ``env``, resolve its ``${env:NAME}`` placeholders too."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise FileNotFoundError(f"connector config {path}: {e.strerror}") from None
    config = parse_connector_config(text, source=str(path))
    return resolve_placeholders(config, env) if env is not None else config


def derive_connector_config(connector_config: Path | str, replication_config: Path | str, out: Path) -> ConnectorConfig:
    """Write ``out``: the connector config with table.include.list set from the replication
    config's streams (placeholders kept), streaming from the publication and its inserts-only
    sibling (mallard/core/keyless.py). The local stack points every service at it."""
    from mallard.config.replication import load_config

    config = with_streams(load_connector_config_file(connector_config), list(load_config(replication_config).streams))
    if config.config.get("publication.autocreate.mode") == "disabled":  # the stack keeps the publications
        config = with_inserts_publication(config)
    doc = {"name": config.name, "config": config.config}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    tmp.replace(out)
    return config


def register(connect_url: str, config: ConnectorConfig, timeout: float = 300.0) -> str:
    """PUT the config (placeholders unresolved: Connect resolves them from its own
    environment) and wait until the connector and its task run. Returns its state.
    One code path for docker-compose's connector-init and the local stack."""
    from mallard.stack.jvm import JvmError, register_connector

    try:
        register_connector(connect_url, config.name, config.config, timeout=timeout)
    except JvmError as e:
        raise RuntimeError(str(e)) from None
    log.info("connector %s RUNNING at %s", config.name, connect_url)
    return "RUNNING"
