"""The wheel installs one top-level package, `mallard`: the services and the message
contracts keep their folders but install as mallard.services and mallard.schemas (never
as `services`/`schemas`, which would collide with other projects), and the connector
config ships as package data."""
import subprocess
import sys
import zipfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_the_wheel_installs_only_the_mallard_namespace(tmp_path):
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                          "-w", str(tmp_path), str(REPO_ROOT)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    (wheel,) = tmp_path.glob("mallard-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top == {"mallard"}, top
    for expected in ("mallard/services/applier/__main__.py", "mallard/schemas/snapshot.py",
                     "mallard/schemas/json/snapshot.message.v1.json", "mallard/debezium/postgres-connector.json"):
        assert expected in names, expected
    assert not [n for n in names if "__pycache__" in n]


def test_the_default_connector_config_is_package_data():
    from mallard.config.settings import DEFAULT_CONNECTOR_CONFIG

    assert DEFAULT_CONNECTOR_CONFIG.name == "postgres-connector.json" and DEFAULT_CONNECTOR_CONFIG.is_file()


def test_the_layout_the_readme_describes_matches_the_tree():
    """docs/development.md's layout section names folders that exist, and every package is named."""
    layout = (REPO_ROOT / "docs" / "development.md").read_text()
    for folder in ("mallard/core", "mallard/adapters", "mallard/config", "mallard/ops", "mallard/runtime",
                   "mallard/stack", "mallard/cli", "services", "schemas", "debezium", "jvm"):
        assert f"`{folder}/`" in layout, folder
        assert (REPO_ROOT / folder).is_dir(), folder
