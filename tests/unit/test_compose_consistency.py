"""docker-compose.yml cannot run here (no Docker engine): check it agrees with the code."""
import re
from pathlib import Path

import yaml

from mallard.config.connector import load_connector_config_file
from mallard.core.connector import placeholders
from mallard.config.settings import DEFAULT_CONNECTOR_CONFIG, REPO_ROOT
from mallard.stack.local import LocalStack, StackSettings
from mallard.services.applier.config import ApplierSettings
from mallard.services.scheduler.config import SchedulerSettings
from mallard.services.snapshotter.config import SnapshotterSettings

COMPOSE = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
MALLARD_SERVICES = {"snapshotter": SnapshotterSettings, "applier": ApplierSettings, "scheduler": SchedulerSettings}
ALL_SETTINGS = list(MALLARD_SERVICES.values())
CONNECTOR = load_connector_config_file(DEFAULT_CONNECTOR_CONFIG)
LOCAL_ONLY: set[str] = set()


def env_names(settings_cls) -> set[str]:
    return {f"MALLARD_{name.upper()}" for name in settings_cls.model_fields}


def container_path_to_repo(path: str) -> Path:
    """Dockerfile copies the repo's folders under /app."""
    assert path.startswith("/app/"), path
    return REPO_ROOT / path.removeprefix("/app/")


def test_the_stack_has_every_part():
    assert {"postgres", "kafka", "connect", "connector-init", *MALLARD_SERVICES} <= set(SERVICES)
    one_shot = {"connector-init", "replica-dir"}  # they exit 0; what needs them waits for that
    for name, svc in SERVICES.items():
        if name not in one_shot:
            assert "healthcheck" in svc, f"{name} has no health check"
    for name in one_shot:
        assert any(name in (s.get("depends_on") or {}) and s["depends_on"][name]["condition"] ==
                   "service_completed_successfully" for s in SERVICES.values()), name


def test_the_applier_publishes_its_read_copy_where_the_compose_profile_reads_it():
    from mallard.config.deployment import BUILT_IN_PROFILES

    applier = SERVICES["applier"]
    copy = applier["environment"]["MALLARD_READ_COPY_PATH"]
    host, container = next(v.split(":") for v in applier["volumes"] if v.startswith("./"))
    assert copy.startswith(container + "/") and "replica-dir" in applier["depends_on"]
    assert BUILT_IN_PROFILES["compose"]["replica_file"] == host.removeprefix("./") + copy.removeprefix(container)


def test_kafka_is_real_apache_kafka_in_kraft_mode():
    kafka = SERVICES["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    assert kafka["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"


def test_kafka_and_debezium_are_the_versions_the_local_stack_pins():
    from mallard.stack.jvm import pinned_versions

    pinned = pinned_versions()
    assert SERVICES["kafka"]["image"] == f"apache/kafka:{pinned['kafka']}"
    assert SERVICES["connect"]["image"] == f"quay.io/debezium/connect:{pinned['debezium']}"


def test_every_image_tag_is_pinned_to_a_release():
    images = [svc["image"] for svc in SERVICES.values() if "image" in svc and "build" not in svc]
    assert images
    for image in images:
        tag = image.rsplit(":", 1)[1] if ":" in image else ""
        assert re.fullmatch(r"v?\d+\.\d+(\.\d+)?([.-]\w+)?", tag), f"{image}: pin a release tag (x.y or x.y.z)"


def test_kafka_keeps_its_log_on_its_volume_under_a_fixed_cluster_id():
    kafka = SERVICES["kafka"]
    log_dir = kafka["environment"]["KAFKA_LOG_DIRS"]
    assert any(v.split(":")[1] == log_dir and v.split(":")[0] in COMPOSE["volumes"] for v in kafka["volumes"])
    assert re.fullmatch(r"[A-Za-z0-9_-]{22}", kafka["environment"]["CLUSTER_ID"])


def test_services_that_need_the_slot_wait_for_the_connector_and_up_wait_can_return():
    for name in MALLARD_SERVICES:
        deps = SERVICES[name]["depends_on"]
        assert deps["connector-init"]["condition"] == "service_completed_successfully", name


def test_connect_resolves_every_placeholder_of_the_connector_config():
    env = SERVICES["connect"]["environment"]
    assert env["CONNECT_CONFIG_PROVIDERS"] == "env"
    assert env["CONNECT_CONFIG_PROVIDERS_ENV_CLASS"].endswith("EnvVarConfigProvider")
    assert placeholders(CONNECTOR) <= set(env)


def test_connector_init_registers_the_repo_config_file():
    cmd = SERVICES["connector-init"]["command"]
    assert cmd[:3] == ["mallard", "connector", "register"]
    config_path = cmd[cmd.index("--config") + 1]
    assert container_path_to_repo(config_path).resolve() == DEFAULT_CONNECTOR_CONFIG.resolve()
    assert cmd[cmd.index("--connect-url") + 1] == "http://connect:8083"


def test_postgres_has_logical_wal_a_wal_bound_and_the_demo_schema():
    pg = SERVICES["postgres"]
    assert "wal_level=logical" in pg["command"]
    assert any(c.startswith("max_slot_wal_keep_size=") for c in pg["command"])
    mounts = {dst: (REPO_ROOT / src).resolve() for src, dst, *_ in
              (v.split(":") for v in pg["volumes"] if v.startswith("./"))}
    init = [src for dst, src in mounts.items() if dst.startswith("/docker-entrypoint-initdb.d/")]
    assert sorted(p.name for p in init) == ["10-mallard.sh", "20-mallard-ddl-signal.sql"]
    script = (REPO_ROOT / "docker" / "postgres" / "10-mallard.sh").read_text()
    shop = [dst for dst, src in mounts.items() if src == (REPO_ROOT / "demo" / "shop.sql").resolve()]
    assert shop and f"\\i {shop[0]}" in script
    assert "pg_isready -h 127.0.0.1" in pg["healthcheck"]["test"][1]
    env = SERVICES["applier"]["environment"]
    assert pg["environment"]["POSTGRES_DB"] == env["MALLARD_PG_DATABASE"]
    assert env["MALLARD_PG_HOST"] == "postgres"


def test_the_compose_postgres_gets_the_ddl_signal_the_local_stack_installs():
    from mallard.stack.roles import COMPOSE_PUBLICATION, rewrite_signal_script

    assert f"CREATE PUBLICATION {COMPOSE_PUBLICATION} " in (REPO_ROOT / "docker" / "postgres" / "10-mallard.sh").read_text()
    written = (REPO_ROOT / "docker" / "postgres" / "20-mallard-ddl-signal.sql").read_text()
    assert written == rewrite_signal_script(COMPOSE_PUBLICATION), "stale: run python -m mallard.stack.roles"


def test_each_part_connects_as_its_own_least_privileged_role():
    from mallard.config.settings import PostgresRoleSettings

    defaults = PostgresRoleSettings.model_fields
    script = (REPO_ROOT / "docker" / "postgres" / "10-mallard.sh").read_text()
    pg = SERVICES["postgres"]["environment"]
    assert pg["POSTGRES_USER"] not in {"mallard", "mallard_debezium", "mallard_snapshotter"}  # the superuser only sets up
    debezium, snapshotter = defaults["pg_debezium_user"].default, defaults["pg_snapshotter_user"].default
    assert SERVICES["connect"]["environment"]["MALLARD_PG_USER"] == debezium
    assert f"CREATE ROLE {debezium} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE REPLICATION" in script
    for name in MALLARD_SERVICES:
        assert SERVICES[name]["environment"]["MALLARD_PG_USER"] == snapshotter, name
    assert f"CREATE ROLE {snapshotter} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION" in script
    assert "SUPERUSER " not in script.replace("NOSUPERUSER", "")


def test_mallard_services_run_their_modules_with_known_settings():
    known = set().union(*(env_names(s) for s in ALL_SETTINGS))
    for name, settings_cls in MALLARD_SERVICES.items():
        svc = SERVICES[name]
        assert svc["command"] == ["python", "-m", f"mallard.services.{name}"]
        assert (REPO_ROOT / "services" / name / "__main__.py").exists()
        env = svc["environment"]
        unknown = {k for k in env if k.startswith("MALLARD_")} - known
        assert not unknown, f"{name}: variables no settings class reads: {unknown}"
        port = env["MALLARD_HEALTH_PORT"]
        assert f"http://127.0.0.1:{port}/healthz" in svc["healthcheck"]["test"]
        assert env["MALLARD_HEALTH_HOST"] == "0.0.0.0"


def test_services_get_the_same_settings_as_in_the_local_stack():
    local = LocalStack(StackSettings()).service_env(health_port=1)
    for name, settings_cls in MALLARD_SERVICES.items():
        wanted = {k for k in local if k.startswith("MALLARD_")} & env_names(settings_cls) - LOCAL_ONLY
        missing = wanted - set(SERVICES[name]["environment"])
        assert not missing, f"{name}: the local stack sets {missing}, docker-compose does not"


def test_topic_names_agree_with_the_connector_and_settings():
    env = SERVICES["applier"]["environment"]
    assert env["MALLARD_TOPIC_PREFIX"] == CONNECTOR.topic_prefix
    defaults = SchedulerSettings()
    assert env["MALLARD_CONTROL_TOPIC"] == defaults.control_topic
    assert env["MALLARD_SNAPSHOT_TOPIC"] == defaults.snapshot_topic
    bootstrap = env["MALLARD_KAFKA_BOOTSTRAP_SERVERS"]
    assert bootstrap in SERVICES["kafka"]["environment"]["KAFKA_ADVERTISED_LISTENERS"].replace("INTERNAL://", "")
    assert SERVICES["connect"]["environment"]["BOOTSTRAP_SERVERS"] == bootstrap


def test_the_image_contains_every_package():
    import tomllib

    dockerfile = (REPO_ROOT / "Dockerfile").read_text()
    copied = set(re.findall(r"^COPY (\S+) /src/", dockerfile, re.M))
    setuptools = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = {"mallard", *setuptools["package-dir"].values()}  # every folder the wheel is built from
    assert folders <= copied and "debezium" in folders
    assert all(svc.get("build") == "." for n, svc in SERVICES.items() if n in MALLARD_SERVICES or n == "connector-init")


def test_no_other_topic_looks_like_a_table_topic_to_the_applier():
    import re

    from mallard.core.connector import cdc_topic_pattern

    pattern = re.compile(cdc_topic_pattern(CONNECTOR.topic_prefix))
    topics = [v for svc in SERVICES.values() for k, v in (svc.get("environment") or {}).items()
              if k.endswith("_TOPIC") and isinstance(v, str)]
    assert topics and not [t for t in topics if pattern.match(t)]


def test_the_snapshotter_reads_the_repo_connector_config_in_its_container():
    path = SERVICES["snapshotter"]["environment"]["MALLARD_CONNECTOR_CONFIG"]
    assert container_path_to_repo(path).resolve() == DEFAULT_CONNECTOR_CONFIG.resolve()


def test_published_ports_listen_on_loopback_only():
    published = [(name, port) for name, svc in SERVICES.items() for port in svc.get("ports", [])]
    assert published
    for name, port in published:
        spec = port if isinstance(port, str) else f"{port.get('host_ip', '')}:{port.get('published')}"
        assert isinstance(port, (str, dict)) and spec.startswith("127.0.0.1:"), \
            f"{name} publishes {port!r} on every interface: bind it to 127.0.0.1"


def test_the_applier_http_port_is_not_published():
    # /query and /tables read the replica: reachable from inside the compose network only.
    assert "ports" not in SERVICES["applier"]
    for name in MALLARD_SERVICES:
        assert not SERVICES[name].get("expose"), f"{name} exposes ports"


def test_the_monitoring_profile_runs_official_prometheus_and_grafana_on_the_shipped_files():
    prometheus, grafana = SERVICES["prometheus"], SERVICES["grafana"]
    assert prometheus["image"].startswith("prom/prometheus:v") and grafana["image"].startswith("grafana/grafana:")
    assert prometheus["profiles"] == grafana["profiles"] == ["monitoring"]
    assert not [n for n, svc in SERVICES.items() if n not in ("prometheus", "grafana") and svc.get("profiles")]

    def mounts(svc: dict) -> dict[str, Path]:
        return {dst: (REPO_ROOT / src).resolve() for src, dst, *_ in
                (v.split(":") for v in svc["volumes"] if v.startswith("./"))}

    config = [a for a in prometheus["command"] if a.startswith("--config.file=")][0].split("=", 1)[1]
    pm = mounts(prometheus)
    assert pm[config] == (REPO_ROOT / "monitoring" / "prometheus.yml").resolve()
    scrape = yaml.safe_load(pm[config].read_text())
    for rules in scrape["rule_files"]:  # relative to the config file, in the container as in the repo
        assert pm[str(Path(config).parent / rules)] == (REPO_ROOT / "monitoring" / rules).resolve()
    # Each job scrapes a service's health port, inside the compose network.
    targets = {job["job_name"]: job["static_configs"][0]["targets"] for job in scrape["scrape_configs"]}
    for name in MALLARD_SERVICES:
        port = SERVICES[name]["environment"]["MALLARD_HEALTH_PORT"]
        assert targets[f"mallard-{name}"] == [f"{name}:{port}"]
    gm = mounts(grafana)
    provisioning = gm["/etc/grafana/provisioning"]
    assert provisioning == (REPO_ROOT / "monitoring" / "grafana" / "provisioning").resolve()
    provider = yaml.safe_load((provisioning / "dashboards" / "mallard.yml").read_text())["providers"][0]
    dashboards = [dst for dst, src in gm.items() if src == (REPO_ROOT / "monitoring" / "grafana" / "dashboard.json").resolve()]
    assert dashboards and Path(dashboards[0]).parent == Path(provider["options"]["path"])
    datasource = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())["datasources"][0]
    assert datasource["url"] == "http://prometheus:9090"
