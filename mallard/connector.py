"""The connector config file on disk, and its registration with Kafka Connect
(docker-compose: the ``connector-init`` service runs ``mallard connector register``)."""
from __future__ import annotations

import json
import logging
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path

from mallard.core.connector_config import ConnectorConfig, parse_connector_config, resolve_placeholders, with_streams

log = logging.getLogger("mallard.connector")


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
    config's streams (placeholders kept). The local stack points every service at it."""
    from mallard.replication import load_config

    config = with_streams(load_connector_config_file(connector_config), list(load_config(replication_config).streams))
    doc = {"name": config.name, "config": config.config}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    tmp.replace(out)
    return config


def register(connect_url: str, config: ConnectorConfig, timeout: float = 300.0) -> str:
    """PUT the config (placeholders unresolved: Connect resolves them from its own
    environment) and wait until the connector's task runs. Returns its state."""
    url = f"{connect_url.rstrip('/')}/connectors/{config.name}"
    body = json.dumps(config.config).encode()
    deadline = time.monotonic() + timeout
    delay = 1.0
    registered = False
    while True:
        try:
            if not registered:
                req = urllib.request.Request(f"{url}/config", data=body, method="PUT",
                                             headers={"Content-Type": "application/json"})
                urllib.request.urlopen(req, timeout=30).close()
                registered = True
                log.info("registered connector %s at %s", config.name, connect_url)
            with urllib.request.urlopen(f"{url}/status", timeout=30) as resp:
                status = json.loads(resp.read())
            tasks = status.get("tasks", [])
            if tasks and all(t.get("state") == "RUNNING" for t in tasks):
                return "RUNNING"
            if any(t.get("state") == "FAILED" for t in tasks):
                trace = next(t.get("trace", "") for t in tasks if t.get("state") == "FAILED")
                raise RuntimeError(f"connector {config.name} failed: {trace.splitlines()[0] if trace else 'no trace'}")
        except (urllib.error.URLError, ConnectionError, TimeoutError) as e:  # Connect still starting: transient
            if time.monotonic() > deadline:
                raise RuntimeError(f"Kafka Connect at {connect_url} not reachable: {e}") from None
        if time.monotonic() > deadline:
            raise RuntimeError(f"connector {config.name} not RUNNING after {timeout:.0f}s")
        time.sleep(delay)
        delay = min(delay * 2, 10.0)


