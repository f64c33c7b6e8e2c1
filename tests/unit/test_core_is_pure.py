"""The core imports no Kafka, Postgres or DuckDB client, and nothing connects at import time."""
import ast
import subprocess
import sys
from pathlib import Path

import mallard.core

CLIENTS = {"confluent_kafka", "kafka", "psycopg2", "psycopg", "duckdb", "faust"}


def test_core_modules_import_no_client():
    core = Path(mallard.core.__file__).parent
    offenders = []
    for path in core.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] in CLIENTS or n.startswith("mallard.adapters")]
    assert not offenders


def test_importing_every_module_opens_no_connection():
    """Import all modules: none may open a connection or start a process (a JVM) as it is imported."""
    code = (
        "import importlib, pkgutil, socket, subprocess, sys\n"
        "def refuse(*args, **kwargs):\n"
        "    raise AssertionError(f'connection or process at import time: {args!r}')\n"
        "socket.socket.connect = socket.socket.connect_ex = refuse\n"
        "socket.create_connection = refuse\n"
        "subprocess.Popen.__init__ = refuse\n"
        "import mallard, services, schemas\n"
        "for pkg in (mallard, services, schemas):\n"
        "    for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + '.'):\n"
        "        if not m.name.endswith('__main__'):\n"
        "            importlib.import_module(m.name)\n"
        "print('ok')\n"
    )
    env = {"MALLARD_KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1", "MALLARD_PG_PORT": "1", "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
