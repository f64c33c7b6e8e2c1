"""The local broker with SASL_SSL (PLAIN over TLS, a CA made for the stack): the services,
Kafka Connect and the CLI replicate and inspect through it, a client without credentials
is refused, and no credential appears in a log, a --help, a /healthz or a status."""
from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request

import psycopg2
import pytest
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

pytestmark = pytest.mark.integration


def test_replication_and_inspection_through_a_sasl_ssl_broker(make_stack):
    stack = make_stack(MALLARD_KAFKA_SASL_SSL="true")
    stack.mallard("stack", "up")
    secrets = json.loads((stack.home / "secrets.json").read_text())
    kafka_secrets = [secrets[k] for k in ("kafka_keystore", "kafka_broker", "kafka_client")]
    bootstrap = stack.bootstrap_servers

    # The first snapshots, then a change by CDC: both crossed the SASL_SSL listener.
    stack.wait_for("SELECT count(*) > 0 FROM orders", [[True]], timeout=180)
    with psycopg2.connect(stack.dsn) as conn, conn.cursor() as cur:
        cur.execute("UPDATE customers SET full_name = 'through TLS' WHERE id = 1")
    conn.close()
    stack.wait_for("SELECT full_name FROM customers WHERE id = 1", [["through TLS"]], timeout=120)

    # Without credentials, or without TLS, the broker does not answer.
    for config in ({"bootstrap.servers": bootstrap},
                   {"bootstrap.servers": bootstrap, "security.protocol": "SSL",
                    "ssl.ca.location": str(stack.home / "kafka" / "tls" / "ca.crt")}):
        with pytest.raises(KafkaException):
            AdminClient({**config, "log_level": 0}).list_topics(timeout=5)

    # The CLI logs in by itself (the stack's own broker): topics, tail, status, verify.
    topics = json.loads(stack.mallard("topics", "--json").stdout)
    assert any(t["topic"] == "mallard.public.customers" for t in topics)
    tail = stack.mallard("tail", "mallard.public.customers", "--from-beginning", "--json", "--timeout", "10").stdout
    assert "through TLS" in tail
    status = stack.mallard("status", "--json").stdout
    assert json.loads(status)["services"]["applier"]["state"] == "running"
    shown = json.loads(stack.mallard("profile", "show", "--json").stdout)
    assert shown["kafka"]["security.protocol"] == "SASL_SSL" and shown["kafka"]["sasl.password"] == "***"

    # No credential anywhere an operator (or a scraper) looks.
    seen = {"status": status, "profile show": json.dumps(shown),
            "stack status": stack.mallard("stack", "status", "--json").stdout}
    for name in ("snapshotter", "applier", "scheduler"):
        seen[f"{name} --help"] = subprocess.run(
            [sys.executable, "-m", f"mallard.services.{name}", "--help"], capture_output=True, text=True,
            env={**stack.env, "MALLARD_KAFKA_SASL_PASSWORD": secrets["kafka_client"]}, timeout=60).stdout
        port = stack.ports[f"MALLARD_{name.upper()}_HEALTH_PORT"]
        for path in ("/healthz", "/metrics"):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as resp:
                    seen[f"{name} {path}"] = resp.read().decode()
            except urllib.error.HTTPError as e:
                seen[f"{name} {path}"] = e.read().decode()
    time.sleep(1)
    for log in (stack.home / "logs").glob("*.log"):
        seen[str(log)] = log.read_text(errors="replace")
    leaks = [(where, i) for where, text in seen.items() for i, secret in enumerate(kafka_secrets) if secret in text]
    assert not leaks, f"a Kafka credential appears in: {leaks}"
    properties = stack.home / "kafka" / "server.properties"
    assert "advertised.listeners=SASL_SSL" in properties.read_text() and properties.stat().st_mode & 0o077 == 0
