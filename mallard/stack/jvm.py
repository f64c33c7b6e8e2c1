"""Apache Kafka's KRaft broker and a Kafka Connect distributed worker as plain JVM
processes, from the jars scripts/jvm-setup.sh resolves (jvm/pom.xml -> .jvm/).

Everything here builds command lines, properties and folders; nothing starts a
process or opens a connection at import time. The caller spawns the argv lists
(mallard.stack.processes.spawn) and owns the processes. The only network code is
Connect's REST API (register a connector, read its status), in plain urllib.
"""
from __future__ import annotations

import base64
import json
import re
import time
import urllib.error
import urllib.request
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mallard.config.settings import REPO_ROOT

POM = REPO_ROOT / "jvm" / "pom.xml"
JVM_HOME = REPO_ROOT / ".jvm"
SETUP_HINT = "run: bash scripts/jvm-setup.sh"

BROKER_MAIN = "kafka.Kafka"
STORAGE_TOOL_MAIN = "kafka.tools.StorageTool"
CONNECT_MAIN = "org.apache.kafka.connect.cli.ConnectDistributed"
FILE_CONFIG_PROVIDER = "org.apache.kafka.common.config.provider.FileConfigProvider"
ENV_CONFIG_PROVIDER = "org.apache.kafka.common.config.provider.EnvVarConfigProvider"
JSON_CONVERTER = "org.apache.kafka.connect.json.JsonConverter"
DEBEZIUM_PLUGIN = "debezium-connector-postgres"


class JvmError(RuntimeError):
    """The JVM stack's artifacts or configuration are not usable; the message says why."""


# -- pinned versions and resolved artifacts -------------------------------------------


def pinned_versions(pom: Path = POM) -> dict[str, str]:
    """The versions jvm/pom.xml pins: {'kafka': ..., 'debezium': ...} (one source of truth
    that docker-compose's image tags are checked against)."""
    try:
        root = ET.parse(pom).getroot()
    except (OSError, ET.ParseError) as e:
        raise JvmError(f"{pom}: cannot read the pom: {e}") from None
    ns = {"m": "http://maven.apache.org/POM/4.0.0"}
    props = root.find("m:properties", ns)
    found = {}
    for key in ("kafka", "debezium"):
        el = props.find(f"m:version.{key}", ns) if props is not None else None
        if el is None or not (el.text or "").strip():
            raise JvmError(f"{pom}: <properties> has no <version.{key}>")
        found[key] = el.text.strip()
    return found


@dataclass(frozen=True)
class Artifacts:
    """Where jvm-setup.sh put the jars: ``<root>/kafka`` (one classpath for the broker,
    the storage tool and Connect) and ``<root>/plugins`` (Connect's plugin.path)."""

    root: Path = JVM_HOME

    @property
    def kafka_lib(self) -> Path:
        return self.root / "kafka"

    @property
    def plugin_path(self) -> Path:
        return self.root / "plugins"

    def classpath(self) -> str:
        jars = sorted(self.kafka_lib.glob("*.jar"))
        if not any(j.name.startswith("kafka_2.13-") for j in jars):
            raise JvmError(f"Kafka's jars are missing from {self.kafka_lib}; {SETUP_HINT}")
        return ":".join(str(j) for j in jars)

    def check_plugin(self) -> Path:
        folder = self.plugin_path / DEBEZIUM_PLUGIN
        if not any(folder.glob(f"{DEBEZIUM_PLUGIN}-*.jar")):
            raise JvmError(f"Debezium's connector plugin is missing from {folder}; {SETUP_HINT}")
        return folder


# -- properties files ---------------------------------------------------------------


def _escape(text: str, key: bool) -> str:
    out = []
    for i, ch in enumerate(text):
        if ch == "\\":
            out.append("\\\\")
        elif ch in "=:#!" or (ch == " " and (key or i == 0)):
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        elif ord(ch) < 0x20 or ord(ch) > 0x7E:
            units = ch.encode("utf-16-be")  # beyond the BMP: a surrogate pair, as Java writes it
            out.extend(f"\\u{int.from_bytes(units[j:j + 2], 'big'):04x}" for j in range(0, len(units), 2))
        else:
            out.append(ch)
    return "".join(out)


def render_properties(props: Mapping[str, str], header: str = "") -> str:
    """A java.util.Properties file (ISO-8859-1 safe: non-ASCII is \\u-escaped), keys sorted."""
    lines = [f"# {line}" for line in header.splitlines()]
    lines += [f"{_escape(k, key=True)}={_escape(str(v), key=False)}" for k, v in sorted(props.items())]
    return "\n".join(lines) + "\n"


def parse_properties(text: str) -> dict[str, str]:
    """Enough of java.util.Properties to read what render_properties and Kafka write
    (meta.properties): ``key=value`` lines, comments, backslash escapes; no line
    continuations."""
    out = {}
    for raw in text.splitlines():
        line = raw.lstrip()
        if not line or line[0] in "#!":
            continue
        m = re.match(r"((?:\\.|[^=:\s\\])*)\s*[=:\s]\s*(.*)$", line) or re.match(r"((?:\\.|[^\\])*)()$", line)
        key, value = m.group(1), m.group(2)
        out[_unescape(key)] = _unescape(value)
    return out


def _unescape(text: str) -> str:
    def sub(m: re.Match) -> str:
        s = m.group(0)
        if s.startswith("\\u"):
            return chr(int(s[2:], 16))
        return {"\\n": "\n", "\\r": "\r", "\\t": "\t"}.get(s, s[1:])

    joined = re.sub(r"\\u[0-9a-fA-F]{4}|\\.", sub, text)
    # \u pairs beyond the BMP come out as two surrogates: join them into one character.
    return joined.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")


def write_file(path: Path, text: str) -> Path:
    """Write through a temporary file: a crash never leaves half a config behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    tmp.touch(mode=0o600)  # a config may hold the stack's Kafka passwords: this user's only
    tmp.write_text(text, encoding="latin-1" if path.suffix == ".properties" else "utf-8")
    tmp.replace(path)
    return path


LOG4J2_CONSOLE = """\
# Everything to stdout: the stack redirects each process's output to its log file.
status = warn
appender.console.type = Console
appender.console.name = STDOUT
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = {level}
rootLogger.appenderRef.stdout.ref = STDOUT
# Quiet the chattiest loggers at INFO.
logger.kafka.name = kafka
logger.kafka.level = {quiet}
logger.apache.name = org.apache.kafka
logger.apache.level = {quiet}
logger.reflections.name = org.reflections
logger.reflections.level = error
# Debezium's own metrics: under load it warns once per event that their queue is full.
logger.measurements.name = io.debezium.metrics.stats.MeasurementCollector
logger.measurements.level = error
"""


def log4j2_config(level: str = "INFO", quiet: str = "WARN") -> str:
    return LOG4J2_CONSOLE.format(level=level, quiet=quiet)


# -- the JVM command line -------------------------------------------------------------

_HEAP = re.compile(r"^[1-9][0-9]*[kmgKMG]$")


def java_command(main_class: str, args: list[str], *, classpath: str, heap: str, log4j_config: Path | None = None,
                 java: str = "java", extra_opts: tuple[str, ...] = ()) -> list[str]:
    """argv for one JVM: explicit maximum heap (the machines have 2 cores and are
    shared), G1 with short pauses, exit on OOM instead of limping on."""
    if not _HEAP.match(heap):
        raise JvmError(f"heap {heap!r}: expected a size such as 512m or 1g")
    argv = [java, f"-Xmx{heap}", "-Xms64m", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20",
            "-XX:+ExitOnOutOfMemoryError", "-Djava.awt.headless=true"]
    if log4j_config is not None:
        argv.append(f"-Dlog4j2.configurationFile={log4j_config}")
    return [*argv, *extra_opts, "-cp", classpath, main_class, *args]


# -- the broker: one node, KRaft combined mode ------------------------------------------


def new_cluster_id() -> str:
    """A Kafka cluster id: 16 random bytes, base64url without padding (Kafka's Uuid form),
    never starting with '-' (the storage tool would take it for an option, as Kafka's own
    Uuid.randomUuid avoids)."""
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not cid.startswith("-"):
            return cid


_CLUSTER_ID = re.compile(r"^[A-Za-z0-9_-]{22}$")


@dataclass(frozen=True)
class KafkaSecurity:
    """SASL_SSL on the broker's client listener: PLAIN credentials over TLS, with a CA made
    for this stack. ``client`` is what the services, the CLI and Connect log in as."""

    ca_file: Path
    keystore: Path
    keystore_password: str
    broker_password: str
    client_user: str
    client_password: str

    def java_client(self) -> dict[str, str]:
        """A Java client's properties (Connect's worker, producer, consumer, admin)."""
        return {"security.protocol": "SASL_SSL", "sasl.mechanism": "PLAIN",
                "sasl.jaas.config": _plain_jaas(self.client_user, self.client_password),
                "ssl.truststore.type": "PEM", "ssl.truststore.location": str(self.ca_file)}

    def librdkafka(self) -> dict[str, str]:
        """librdkafka's properties (the services and the CLI)."""
        return {"security.protocol": "SASL_SSL", "sasl.mechanism": "PLAIN", "sasl.username": self.client_user,
                "sasl.password": self.client_password, "ssl.ca.location": str(self.ca_file)}


def _plain_jaas(user: str, password: str, **users: str) -> str:
    extra = "".join(f' user_{name}="{secret}"' for name, secret in users.items())
    return f'org.apache.kafka.common.security.plain.PlainLoginModule required username="{user}" password="{password}"{extra};'


def make_tls_material(folder: Path, keystore_password: str, host: str = "127.0.0.1") -> tuple[Path, Path]:
    """A CA and the broker's certificate (for ``host``, signed by it) in a PKCS#12 keystore,
    made once with openssl: (CA certificate, keystore)."""
    import subprocess

    ca_key, ca_crt = folder / "ca.key", folder / "ca.crt"
    key, csr, crt, p12 = folder / "broker.key", folder / "broker.csr", folder / "broker.crt", folder / "broker.p12"
    if ca_crt.exists() and p12.exists():
        return ca_crt, p12
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o700)
    san = folder / "san.cnf"
    san.write_text(f"subjectAltName=IP:{host},DNS:localhost\n")
    steps = [
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(ca_key), "-out", str(ca_crt),
         "-days", "3650", "-subj", "/CN=mallard local stack CA"],
        ["openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr),
         "-subj", f"/CN={host}"],
        ["openssl", "x509", "-req", "-in", str(csr), "-CA", str(ca_crt), "-CAkey", str(ca_key), "-CAcreateserial",
         "-out", str(crt), "-days", "3650", "-extfile", str(san)],
        ["openssl", "pkcs12", "-export", "-in", str(crt), "-inkey", str(key), "-certfile", str(ca_crt),
         "-out", str(p12), "-passout", f"pass:{keystore_password}"],
    ]
    for argv in steps:
        result = subprocess.run(argv, capture_output=True, text=True)
        if result.returncode != 0:
            raise JvmError(f"broker TLS: {' '.join(argv[:2])} failed: {(result.stderr or result.stdout).strip()}")
    return ca_crt, p12


@dataclass(frozen=True)
class BrokerConfig:
    """A one-node broker+controller whose log lives under ``home`` and survives restarts."""

    home: Path
    port: int
    controller_port: int
    heap: str = "512m"
    jvm_opts: tuple[str, ...] = ()
    """Extra JVM options (StackSettings.jvm_opts), after mallard's own."""
    node_id: int = 1
    host: str = "127.0.0.1"
    num_partitions: int = 1
    retention_hours: int = 168
    retention_bytes: int = -1
    """Per partition; -1: time only. The log stays on disk either way, not in memory."""
    segment_bytes: int = 64 * 1024 * 1024
    security: KafkaSecurity | None = None
    """SASL_SSL on the client listener (and between the node and itself); None: PLAINTEXT."""

    def __post_init__(self) -> None:
        for name in ("port", "controller_port"):
            value = getattr(self, name)
            if not 0 < value < 65536:
                raise JvmError(f"broker {name} {value}: not a TCP port")
        if self.port == self.controller_port:
            raise JvmError(f"broker: port and controller_port are both {self.port}")

    @property
    def log_dir(self) -> Path:
        return self.home / "data"

    @property
    def properties_file(self) -> Path:
        return self.home / "server.properties"

    @property
    def log4j_file(self) -> Path:
        return self.home / "log4j2.properties"

    @property
    def cluster_id_file(self) -> Path:
        return self.home / "cluster.id"

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.port}"

    def properties(self) -> dict[str, str]:
        h = self.host
        return {
            "process.roles": "broker,controller",
            "node.id": str(self.node_id),
            "controller.quorum.voters": f"{self.node_id}@{h}:{self.controller_port}",
            "listeners": f"PLAINTEXT://{h}:{self.port},CONTROLLER://{h}:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://{h}:{self.port}",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "inter.broker.listener.name": "PLAINTEXT",
            "controller.listener.names": "CONTROLLER",
            "log.dirs": str(self.log_dir),
            # One node: every internal topic with one replica, or they are never created.
            "offsets.topic.replication.factor": "1",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "default.replication.factor": "1",
            "min.insync.replicas": "1",
            "num.partitions": str(self.num_partitions),
            "group.initial.rebalance.delay.ms": "0",
            # Kafka keeps its log on disk and drops old segments: memory stays flat.
            "log.retention.hours": str(self.retention_hours),
            "log.retention.bytes": str(self.retention_bytes),
            "log.segment.bytes": str(self.segment_bytes),
            "log.retention.check.interval.ms": "300000",
            # Few threads: the machine has 2 cores shared with Postgres, Connect and the services.
            "num.network.threads": "2",
            "num.io.threads": "4",
            "num.recovery.threads.per.data.dir": "1",
            "background.threads": "4",
            "auto.create.topics.enable": "true",
            **self._security_properties(),
        }

    def _security_properties(self) -> dict[str, str]:
        sec, h = self.security, self.host
        if sec is None:
            return {}
        return {
            "listeners": f"SASL_SSL://{h}:{self.port},CONTROLLER://{h}:{self.controller_port}",
            "advertised.listeners": f"SASL_SSL://{h}:{self.port}",
            "listener.security.protocol.map": "SASL_SSL:SASL_SSL,CONTROLLER:PLAINTEXT",
            "inter.broker.listener.name": "SASL_SSL",
            "sasl.enabled.mechanisms": "PLAIN",
            "sasl.mechanism.inter.broker.protocol": "PLAIN",
            "listener.name.sasl_ssl.plain.sasl.jaas.config": _plain_jaas(
                "broker", sec.broker_password, broker=sec.broker_password, **{sec.client_user: sec.client_password}),
            "ssl.keystore.type": "PKCS12",
            "ssl.keystore.location": str(sec.keystore),
            "ssl.keystore.password": sec.keystore_password,
            "ssl.truststore.type": "PEM",
            "ssl.truststore.location": str(sec.ca_file),
        }

    def cluster_id(self) -> str:
        """The cluster id this broker keeps: the one its log dir was formatted with, else the
        one saved in ``cluster.id``, else a new one (saved). Formatting again with another id
        would make the broker refuse its own data."""
        meta = self.log_dir / "meta.properties"
        if meta.exists():
            formatted = parse_properties(meta.read_text(encoding="latin-1")).get("cluster.id", "")
            if formatted:
                return formatted
        if self.cluster_id_file.exists():
            kept = self.cluster_id_file.read_text().strip()
            if not _CLUSTER_ID.match(kept):
                raise JvmError(f"{self.cluster_id_file}: {kept!r} is not a Kafka cluster id")
            return kept
        cid = new_cluster_id()
        write_file(self.cluster_id_file, cid + "\n")
        return cid

    def is_formatted(self) -> bool:
        return (self.log_dir / "meta.properties").exists()

    def write_config(self) -> None:
        write_file(self.properties_file, render_properties(self.properties(), "Written by mallard; edits are overwritten."))
        write_file(self.log4j_file, log4j2_config())

    def format_command(self, artifacts: Artifacts, java: str = "java") -> list[str]:
        """``kafka-storage format``, run once before the first start (the storage tool
        refuses a formatted dir, so a second call cannot wipe anything)."""
        return java_command(STORAGE_TOOL_MAIN, ["format", "--cluster-id", self.cluster_id(), "--config",
                                                str(self.properties_file)],
                            classpath=artifacts.classpath(), heap="256m", log4j_config=self.log4j_file, java=java,
                            extra_opts=self.jvm_opts)

    def command(self, artifacts: Artifacts, java: str = "java") -> list[str]:
        return java_command(BROKER_MAIN, [str(self.properties_file)], classpath=artifacts.classpath(), heap=self.heap,
                            log4j_config=self.log4j_file, java=java, extra_opts=self.jvm_opts)


# -- Kafka Connect: one distributed worker ------------------------------------------------


@dataclass(frozen=True)
class ConnectConfig:
    """A distributed-mode worker: its own state in three Kafka topics, Debezium on plugin.path."""

    home: Path
    bootstrap_servers: str
    rest_port: int
    plugin_path: Path
    heap: str = "512m"
    jvm_opts: tuple[str, ...] = ()
    """Extra JVM options (StackSettings.jvm_opts), after mallard's own."""
    group_id: str = "mallard-connect"
    config_topic: str = "mallard-connect-configs"
    offset_topic: str = "mallard-connect-offsets"
    status_topic: str = "mallard-connect-status"
    offset_flush_interval_ms: int = 5000
    """How often source offsets (Debezium's LSN) are committed; Debezium confirms the
    slot's position only then, so this bounds both replay after a crash and held WAL."""
    client_security: dict[str, str] | None = None
    """A Java client's security properties for the broker (KafkaSecurity.java_client)."""

    def __post_init__(self) -> None:
        if not 0 < self.rest_port < 65536:
            raise JvmError(f"connect rest_port {self.rest_port}: not a TCP port")
        if not self.bootstrap_servers:
            raise JvmError("connect: bootstrap_servers is empty")

    @property
    def properties_file(self) -> Path:
        return self.home / "connect-distributed.properties"

    @property
    def log4j_file(self) -> Path:
        return self.home / "log4j2.properties"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.rest_port}"

    def properties(self) -> dict[str, str]:
        return {
            "bootstrap.servers": self.bootstrap_servers,
            "group.id": self.group_id,
            "config.storage.topic": self.config_topic,
            "offset.storage.topic": self.offset_topic,
            "status.storage.topic": self.status_topic,
            "config.storage.replication.factor": "1",
            "offset.storage.replication.factor": "1",
            "status.storage.replication.factor": "1",
            "offset.storage.partitions": "5",
            "status.storage.partitions": "1",
            "offset.flush.interval.ms": str(self.offset_flush_interval_ms),
            # One worker: when it loses the broker for longer than its session it stops the
            # connector and task (KAFKA-9184), and when it rejoins the default (5 min) kept
            # them unassigned, waiting for a worker that will not come back: reassign at once.
            "scheduled.rebalance.max.delay.ms": "0",
            "key.converter": JSON_CONVERTER,
            "value.converter": JSON_CONVERTER,
            "key.converter.schemas.enable": "true",
            "value.converter.schemas.enable": "true",
            "plugin.path": str(self.plugin_path),
            # Every plugin here (Kafka's own, Debezium's) ships ServiceLoader manifests: reading
            # them instead of scanning every class saves ~15 s of start-up on 2 cores.
            "plugin.discovery": "service_load",
            "listeners": f"http://127.0.0.1:{self.rest_port}",
            "rest.advertised.host.name": "127.0.0.1",
            "rest.advertised.port": str(self.rest_port),
            # ${env:...} in a connector config is resolved by the worker, from its own
            # environment (as compose's CONNECT_CONFIG_PROVIDERS=env), ${file:...} from files.
            "config.providers": "env,file",
            "config.providers.env.class": ENV_CONFIG_PROVIDER,
            "config.providers.file.class": FILE_CONFIG_PROVIDER,
            # Debezium creates its own topics (topic.creation.* in the connector config).
            "topic.creation.enable": "true",
            # The worker's own clients, and those of every task (Debezium's producer).
            **{f"{prefix}{k}": v for k, v in (self.client_security or {}).items()
               for prefix in ("", "producer.", "consumer.", "admin.")},
        }

    def write_config(self) -> None:
        write_file(self.properties_file, render_properties(self.properties(), "Written by mallard; edits are overwritten."))
        write_file(self.log4j_file, log4j2_config())

    def command(self, artifacts: Artifacts, java: str = "java") -> list[str]:
        return java_command(CONNECT_MAIN, [str(self.properties_file)], classpath=artifacts.classpath(),
                            heap=self.heap, log4j_config=self.log4j_file, java=java, extra_opts=self.jvm_opts)


# -- Connect's REST API ---------------------------------------------------------------


@dataclass(frozen=True)
class ConnectorState:
    ready: bool
    """The connector and every task are RUNNING."""
    failed: str = ""
    """Non-empty: the first line of a FAILED connector's or task's trace."""
    detail: str = ""


def judge_status(status: Mapping[str, Any]) -> ConnectorState:
    """Read ``GET /connectors/<name>/status``: ready when the connector and at least one
    task run and none failed; failed with the trace's first line."""
    connector = status.get("connector") or {}
    tasks = status.get("tasks") or []
    for what, part in [("connector", connector), *((f"task {t.get('id', '?')}", t) for t in tasks)]:
        if part.get("state") == "FAILED":
            trace = (part.get("trace") or "").strip()
            return ConnectorState(False, f"{what} FAILED: {trace.splitlines()[0] if trace else 'no trace'}")
    states = f"connector {connector.get('state', 'absent')}, tasks " + (
        ", ".join(str(t.get("state")) for t in tasks) or "none yet")
    ready = connector.get("state") == "RUNNING" and bool(tasks) and all(t.get("state") == "RUNNING" for t in tasks)
    return ConnectorState(ready, "", states)


def _request(url: str, method: str = "GET", body: Any = None, timeout: float = 10.0) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json",
                                                                          "Accept": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        raw = resp.read()
    return json.loads(raw) if raw else None


def connect_info(url: str, timeout: float = 5.0) -> dict[str, Any]:
    """``GET /``: the worker's version, commit and Kafka cluster id (its health probe)."""
    return _request(url.rstrip("/") + "/", timeout=timeout)


def connector_status(url: str, name: str, timeout: float = 5.0) -> ConnectorState:
    """The connector's state now (after a worker restart it comes back from Connect's
    config topic by itself: no registration needed)."""
    return judge_status(_request(f"{url.rstrip('/')}/connectors/{name}/status", timeout=timeout))


def _lifecycle(url: str, name: str, method: str, path: str = "", timeout: float = 30.0) -> Any:
    """One call of Connect's REST API on a connector; JvmError with Connect's message."""
    target = f"{url.rstrip('/')}/connectors/{name}{path}"
    try:
        return _request(target, method, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 404:
            raise JvmError(f"no connector {name} at {url}") from None
        raise JvmError(f"connector {name}: Connect answered {e.code}: {_error_message(e)}") from None
    except (urllib.error.URLError, ConnectionError, TimeoutError) as e:
        raise JvmError(f"Kafka Connect does not answer at {url} ({e})") from None


def connector_status_document(url: str, name: str, timeout: float = 30.0) -> dict[str, Any]:
    """``GET /connectors/<name>/status``: the connector's and each task's state, with the
    worker and a failed part's trace."""
    return _lifecycle(url, name, "GET", "/status", timeout=timeout)


def connector_config(url: str, name: str) -> dict[str, Any]:
    """The config as Connect holds it (``${env:...}`` placeholders unresolved: no secret)."""
    return _lifecycle(url, name, "GET", "/config")


def restart_connector(url: str, name: str) -> None:
    """Restart the connector and every task, failed ones included."""
    _lifecycle(url, name, "POST", "/restart?includeTasks=true&onlyFailed=false")


def pause_connector(url: str, name: str) -> None:
    _lifecycle(url, name, "PUT", "/pause")


def resume_connector(url: str, name: str) -> None:
    _lifecycle(url, name, "PUT", "/resume")


def delete_connector(url: str, name: str) -> None:
    _lifecycle(url, name, "DELETE")


def render_status(status: Mapping[str, Any]) -> list[str]:
    """Lines for a person: the connector, each task, and a failed one's whole trace."""
    connector = status.get("connector") or {}
    lines = [f"connector {status.get('name', '?')}: {connector.get('state', '?')} on {connector.get('worker_id', '?')}"]
    if connector.get("trace"):
        lines += ["  " + line for line in str(connector["trace"]).splitlines()]
    for task in status.get("tasks") or []:
        lines.append(f"  task {task.get('id', '?')}: {task.get('state', '?')} on {task.get('worker_id', '?')}")
        if task.get("trace"):
            lines += ["    " + line for line in str(task["trace"]).splitlines()]
    return lines


def connector_offsets(url: str, name: str, timeout: float = 10.0) -> list[dict[str, Any]]:
    """``GET /connectors/<name>/offsets``: the source offsets Connect has committed for it
    (Debezium's LSN and txId), from Connect's offset topic."""
    return (_request(f"{url.rstrip('/')}/connectors/{name}/offsets", timeout=timeout) or {}).get("offsets", [])


def register_connector(url: str, name: str, config: Mapping[str, str], *, timeout: float = 180.0,
                       sleep: Callable[[float], None] = time.sleep) -> ConnectorState:
    """PUT the connector's config (idempotent: creates or updates) and wait until the
    connector and its task are RUNNING. Raises JvmError on FAILED or timeout.

    Placeholders such as ``${env:MALLARD_PG_PASSWORD}`` go as they are: the worker
    resolves them from its own environment, so no secret crosses the REST API."""
    base = f"{url.rstrip('/')}/connectors/{name}"
    deadline = time.monotonic() + timeout
    delay, registered, state = 0.5, False, ConnectorState(False, "", "not registered")
    while True:
        try:
            if not registered:
                try:
                    current = _request(base + "/config", timeout=10)
                except urllib.error.HTTPError as e:
                    if e.code != 404:
                        raise
                    current = None
                # The same config again would restart the connector for nothing.
                if current is None or {k: v for k, v in current.items() if k != "name"} != \
                        {k: v for k, v in config.items() if k != "name"}:
                    _request(base + "/config", "PUT", dict(config), timeout=30)
                registered = True
            state = judge_status(_request(base + "/status", timeout=10))
            if state.failed:
                raise JvmError(f"connector {name}: {state.failed}")
            if state.ready:
                return state
        except urllib.error.HTTPError as e:
            # 404 right after the PUT (status not written yet) and 409 (a rebalance) pass;
            # 400/500 name a bad config: say so now rather than at the timeout.
            if e.code not in (404, 409):
                raise JvmError(f"connector {name}: Connect answered {e.code}: {_error_message(e)}") from None
        except (urllib.error.URLError, ConnectionError, TimeoutError) as e:
            state = ConnectorState(False, "", f"Connect not answering at {url}: {e}")
        if time.monotonic() + delay > deadline:
            raise JvmError(f"connector {name}: not RUNNING after {timeout:.0f}s ({state.detail})")
        sleep(delay)
        delay = min(delay * 2, 5.0)


def _error_message(e: urllib.error.HTTPError) -> str:
    """Connect's message, on one line: an invalid config lists its errors on the lines
    after the first, and they are what a user can act on."""
    try:
        message = str(json.loads(e.read()).get("message", ""))
    except (OSError, ValueError, AttributeError):
        return str(e.reason or "")
    lines = [line.strip() for line in message.splitlines()
             if line.strip() and not line.startswith("You can also find the above list of errors")]
    return " ".join(lines) or str(e.reason or "")


# -- a process's resident memory ----------------------------------------------------------


def rss_bytes(pid: int) -> int | None:
    """Resident set size from /proc (None when the process is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None
