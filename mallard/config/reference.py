"""docs/settings.md, generated from the settings' own field descriptions, so the reference
cannot drift from the code (tests/unit/test_settings_reference.py checks it is current).

    python -m mallard.config.reference > docs/settings.md
"""
from __future__ import annotations

from pydantic_settings import BaseSettings

HEADER = """# Settings reference

Generated from the settings' field descriptions by `python -m mallard.config.reference`
(do not edit by hand). Every setting is a `MALLARD_*` environment variable; a value the
environment does not set comes from the replication config where it has one (`source`:
the `MALLARD_PG_*` settings, `target.path`: `MALLARD_DUCKDB_PATH`), else the default.
Each service's `python -m mallard.services.<name> --help` prints its own list.
"""


def _groups() -> list[tuple[str, type[BaseSettings], tuple[type[BaseSettings], ...]]]:
    """(title, settings class, classes whose fields were listed before it)."""
    from mallard.config.settings import KafkaSettings, PostgresSettings, ServiceSettings
    from mallard.services.applier.config import ApplierSettings
    from mallard.services.scheduler.config import SchedulerSettings
    from mallard.services.snapshotter.config import SnapshotterSettings
    from mallard.stack.local import StackSettings

    common = (ServiceSettings, PostgresSettings)
    return [
        ("Kafka and topics (every service and the CLI)", KafkaSettings, ()),
        ("Source Postgres (every service and the CLI)", PostgresSettings, ()),
        ("Every service", ServiceSettings, (KafkaSettings,)),
        ("Applier", ApplierSettings, common),
        ("Snapshotter", SnapshotterSettings, common),
        ("Scheduler", SchedulerSettings, common),
        ("Local stack (`mallard stack`)", StackSettings, (PostgresSettings,)),
    ]


def _default(field: object) -> str:
    default = getattr(field, "default", None)
    value = getattr(default, "get_secret_value", lambda: default)()
    if getattr(default, "get_secret_value", None):
        return "(secret)"
    from mallard.config.settings import REPO_ROOT

    # Paths in the checkout are shown relative to it: the reference is the same on every machine.
    text = str(value).replace(str(REPO_ROOT) + "/", "") if value not in (None, "") else ""
    return f"`{text}`" if text else "empty"


def render() -> str:
    out = [HEADER]
    for title, cls, listed in _groups():
        before = {name for c in listed for name in c.model_fields}
        rows = [(name, f) for name, f in cls.model_fields.items() if name not in before]
        if not rows:
            continue
        out += [f"\n## {title}\n", "| variable | default | what it is |", "|---|---|---|"]
        for name, f in rows:
            text = " ".join((f.description or "").split()).replace("|", "\\|")
            out.append(f"| `MALLARD_{name.upper()}` | {_default(f).replace('|', chr(92) + '|')} | {text} |")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    print(render(), end="")
