"""How the suite's tests are handed to xdist's workers (scripts/test.sh: ``--dist loadfile``).

``loadfile`` keeps a file on one worker, so a file's module fixtures (a stack of its own)
start once. But the session stacks (``stack``, ``cdc_stack``) are per worker: with tests
using them in many files, every worker started both and kept them idling to the end, each
stack's JVMs taking CPU the suite lacks (bench/RESULTS.md). Here the tests on one session
stack are one unit of work, given to one worker, so each session stack starts once; and as
they run together, the stack stops after the unit's last test (tests/conftest.py).

Each worker writes which unit each of its tests belongs to (it knows their fixtures);
the controller hands out xdist's own ``LoadFileScheduling``'s work with each test named
``<unit>::<test>``, so that its units are ours. Only xdist's public surface is used: the
``pytest_configure_node`` and ``pytest_xdist_make_scheduler`` hooks, the ``Scheduling``
protocol, and ``LoadFileScheduling`` through that protocol.
"""
from __future__ import annotations

import json
import tempfile
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

SHARED_STACKS = ("cdc_stack", "stack")
"""Session fixtures: each test using one runs in that fixture's unit (cdc_stack first, for a
test using both)."""

UNITS_KEY = "mallard_units_folder"

EXPECTED_S = {
    "session cdc_stack": 200, "session stack": 190,
    "tests/integration/test_large_transaction.py": 160, "tests/integration/test_torture.py": 100,
    "tests/integration/test_verify.py": 80, "tests/integration/test_operating.py": 80,
    "tests/integration/test_stack.py": 75, "tests/integration/test_incremental.py": 65,
    "tests/integration/test_faults.py": 60, "tests/integration/test_monitoring.py": 60,
    "tests/integration/test_check.py": 55, "tests/integration/test_keyless.py": 50,
    "tests/integration/test_config_apply.py": 50, "tests/integration/test_hostile_events.py": 50,
    "tests/integration/test_snapshot_merge.py": 50, "tests/integration/test_applier_crash.py": 45,
    "tests/integration/test_kafka_security.py": 45, "tests/integration/test_cdc_to_kafka.py": 35,
    "tests/integration/test_keyless_merge.py": 35, "tests/integration/test_durability.py": 30,
    "tests/unit/test_typed_decoding.py": 20, "tests/unit/test_logs.py": 15,
}
"""A unit's seconds on a worker, from a run of the suite (2026-12-04, ``--durations=0``).
Rough, and only an order: the longest units are handed out first, so that no worker is
left alone with one at the end while the short ones fill in around them."""
UNLISTED_INTEGRATION_S = 20.0
"""A unit not listed, under tests/integration/: a stack's start, a few polls."""
UNLISTED_TEST_S = 0.05
"""Per test, in a unit not listed elsewhere: the pure tests."""


def unit_of(item: pytest.Item) -> str:
    module = getattr(item, "module", None)
    for name in SHARED_STACKS:
        # A module may define a stack of its own under the same name: that one is its file's.
        if name in getattr(item, "fixturenames", ()) and not hasattr(module, name):
            return f"session {name}"
    return item.nodeid.split("::", 1)[0]


def expected_s(unit: str, tests: int) -> float:
    if unit in EXPECTED_S:
        return EXPECTED_S[unit]
    return UNLISTED_INTEGRATION_S if unit.startswith("tests/integration/") else UNLISTED_TEST_S * tests


def longest_first(items: list[pytest.Item]) -> None:
    """Sort ``items`` in place: units by their expected time, longest first; a unit's tests
    together, in their order. (xdist keeps it: ``register`` turns its reorder off.)"""
    units = [unit_of(item) for item in items]
    tests, first = Counter(units), {}
    for i, unit in enumerate(units):
        first.setdefault(unit, i)
    order = sorted(range(len(items)), key=lambda i: (-expected_s(units[i], tests[units[i]]), first[units[i]], i))
    items[:] = [items[i] for i in order]


def handed_units(config: pytest.Config) -> bool:
    """This process is a worker the controller hands units to."""
    return UNITS_KEY in getattr(config, "workerinput", {})


def write_units(config: pytest.Config, items: list[pytest.Item]) -> None:
    """On a worker: which unit each collected test belongs to, for the controller."""
    if handed_units(config):
        path = Path(config.workerinput[UNITS_KEY]) / f"{config.workerinput['workerid']}.json"
        path.write_text(json.dumps({item.nodeid: unit_of(item) for item in items}))


def session_units_done(item: pytest.Item, nextitem: pytest.Item | None) -> list[str]:
    """On a worker handed units: the session stacks whose unit ``item`` ended (their tests
    run together, so none comes after). Elsewhere (serial runs): none, the stacks stay up."""
    if not handed_units(item.config) or nextitem is None or unit_of(nextitem) == unit_of(item):
        return []
    return [name for name in SHARED_STACKS if unit_of(item) == f"session {name}"]


class UnitScheduling:
    """``LoadFileScheduling`` over tests named ``<unit>::<nodeid>``: its files are our units."""

    def __init__(self, inner: Any, folder: Path):
        self.inner, self.folder = inner, folder
        self.named: dict[str, str] = {}

    @property
    def nodes(self) -> list[Any]:
        return self.inner.nodes

    @property
    def collection_is_completed(self) -> bool:
        return self.inner.collection_is_completed

    @property
    def tests_finished(self) -> bool:
        return self.inner.tests_finished

    @property
    def has_pending(self) -> bool:
        return self.inner.has_pending

    def add_node(self, node: Any) -> None:
        self.inner.add_node(node)

    def add_node_collection(self, node: Any, collection: Sequence[str]) -> None:
        path = self.folder / f"{node.workerinput['workerid']}.json"
        units = json.loads(path.read_text()) if path.exists() else {}
        for nodeid in collection:  # a test the worker did not write down keeps its file's unit
            self.named[nodeid] = f"{units.get(nodeid) or nodeid.split('::', 1)[0]}::{nodeid}"
        self.inner.add_node_collection(node, [self.named[nodeid] for nodeid in collection])

    def mark_test_complete(self, node: Any, item_index: int, duration: float = 0) -> None:
        self.inner.mark_test_complete(node, item_index, duration)

    def mark_test_pending(self, item: str) -> None:
        self.inner.mark_test_pending(self.named.get(item, item))

    def remove_pending_tests_from_node(self, node: Any, indices: Sequence[int]) -> None:
        self.inner.remove_pending_tests_from_node(node, indices)

    def remove_node(self, node: Any) -> str | None:
        crashed = self.inner.remove_node(node)
        return crashed.split("::", 1)[1] if crashed else crashed

    def schedule(self) -> None:
        self.inner.schedule()


class SharedStackUnits:
    """The controller's side, registered only where xdist runs with ``--dist loadfile``."""

    def __init__(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="mallard-xdist-units-"))

    def pytest_configure_node(self, node: Any) -> None:
        node.workerinput[UNITS_KEY] = str(self.folder)

    @pytest.hookimpl(tryfirst=True)
    def pytest_xdist_make_scheduler(self, config: pytest.Config, log: Any) -> Any:
        from xdist.scheduler import LoadFileScheduling

        return UnitScheduling(LoadFileScheduling(config, log), self.folder)

    def pytest_unconfigure(self) -> None:
        for path in self.folder.glob("*.json"):
            path.unlink()
        self.folder.rmdir()


def register(config: pytest.Config) -> None:
    if (config.pluginmanager.hasplugin("xdist") and not hasattr(config, "workerinput")
            and config.getoption("dist", "no") == "loadfile" and config.getoption("numprocesses", None)):
        config.pluginmanager.register(SharedStackUnits(), "mallard-shared-stack-units")
        # xdist would hand the units out by their number of tests (--loadscope-reorder),
        # not in the order longest_first gave them.
        config.option.loadscopereorder = False
