"""Services take the source Postgres from the replication config, unless a MALLARD_PG_*
variable says otherwise."""
from __future__ import annotations

import pytest

from mallard.services.snapshotter.config import SnapshotterSettings

CONFIG = """
source:
  host: db.internal
  port: 6543
  user: replicator
  password: ${SHOP_DB_PASSWORD}
  database: ${SHOP_DB:-shop}
streams:
  public.orders:
"""


@pytest.fixture
def config(tmp_path, monkeypatch):
    for name in ("MALLARD_PG_HOST", "MALLARD_PG_PORT", "MALLARD_PG_USER", "MALLARD_PG_PASSWORD", "MALLARD_PG_DATABASE"):
        monkeypatch.delenv(name, raising=False)
    path = tmp_path / "replication.yaml"
    path.write_text(CONFIG)
    monkeypatch.setenv("MALLARD_REPLICATION_CONFIG", str(path))
    return path


def test_the_source_comes_from_the_config_with_its_references_resolved(config, monkeypatch):
    monkeypatch.setenv("SHOP_DB_PASSWORD", "s3cret")
    s = SnapshotterSettings()
    assert (s.pg_host, s.pg_port, s.pg_user, s.pg_database) == ("db.internal", 6543, "replicator", "shop")
    assert s.pg_password.get_secret_value() == "s3cret" and "s3cret" not in s.pg_dsn(with_password=False)


def test_a_mallard_pg_variable_wins(config, monkeypatch):
    monkeypatch.setenv("SHOP_DB_PASSWORD", "s3cret")
    monkeypatch.setenv("MALLARD_PG_HOST", "127.0.0.1")
    assert SnapshotterSettings().pg_host == "127.0.0.1"


def test_a_reference_to_a_variable_not_set_leaves_the_default(config):
    s = SnapshotterSettings()
    assert s.pg_host == "db.internal" and s.pg_password.get_secret_value() == "mallard"


def test_the_duckdb_file_comes_from_the_config_target(tmp_path, monkeypatch):
    from mallard.services.applier.config import ApplierSettings

    path = tmp_path / "replication.yaml"
    path.write_text("target:\n  path: /data/shop.duckdb\nstreams:\n  public.orders:\n")
    monkeypatch.setenv("MALLARD_REPLICATION_CONFIG", str(path))
    monkeypatch.delenv("MALLARD_DUCKDB_PATH", raising=False)
    assert ApplierSettings().duckdb_path == "/data/shop.duckdb"
    monkeypatch.setenv("MALLARD_DUCKDB_PATH", "/elsewhere.duckdb")
    assert ApplierSettings().duckdb_path == "/elsewhere.duckdb"
