"""Every service has an entry point whose --help says what it does and lists its settings."""
import subprocess
import sys

import pytest

from mallard.services.applier.config import ApplierSettings
from mallard.services.scheduler.config import SchedulerSettings
from mallard.services.snapshotter.config import SnapshotterSettings
from mallard.stack.local import StackSettings

SERVICES = {
    "snapshotter": (SnapshotterSettings, "consistent REPEATABLE READ"),
    "applier": (ApplierSettings, "only writer of the DuckDB file"),
    "scheduler": (SchedulerSettings, "cron schedules"),
}


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_help_says_what_the_service_does_and_lists_every_setting(name):
    settings_cls, phrase = SERVICES[name]
    out = subprocess.run([sys.executable, "-m", f"mallard.services.{name}", "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    text = " ".join(out.stdout.split())
    assert phrase in text
    for field in settings_cls.model_fields:
        assert f"MALLARD_{field.upper()}" in out.stdout
    if "pg_password" in settings_cls.model_fields:  # the default password is masked
        assert "(default: ***)" in out.stdout.split("MALLARD_PG_PASSWORD")[1].split("\n")[0]


@pytest.mark.parametrize("settings_cls", [s for s, _ in SERVICES.values()] + [StackSettings])
def test_every_setting_is_documented(settings_cls):
    undocumented = [n for n, f in settings_cls.model_fields.items() if not (f.description or "").strip()]
    assert not undocumented


def test_settings_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("MALLARD_KAFKA_BOOTSTRAP_SERVERS", "kafka:9092")
    monkeypatch.setenv("MALLARD_PG_PASSWORD", "s3cret")
    s = SnapshotterSettings()
    assert s.kafka_bootstrap_servers == "kafka:9092"
    assert "s3cret" not in repr(s) and "s3cret" not in s.pg_dsn(with_password=False)
    assert s.pg_dsn().startswith("postgresql://mallard:s3cret@")


def test_mallard_cli_help():
    out = subprocess.run([sys.executable, "-m", "mallard.cli.main", "stack", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "up" in out.stdout and "down" in out.stdout and "status" in out.stdout
