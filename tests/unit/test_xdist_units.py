"""The suite's own scheduling (tests/xdist_units.py): units of work, longest first."""
from __future__ import annotations

from types import SimpleNamespace

from tests import xdist_units


def item(nodeid: str, *fixtures: str, module: object = None) -> SimpleNamespace:
    return SimpleNamespace(nodeid=nodeid, fixturenames=fixtures, module=module or SimpleNamespace())


def test_tests_on_a_session_stack_are_one_unit_unless_their_module_has_its_own():
    own = SimpleNamespace(stack=object())
    assert xdist_units.unit_of(item("tests/integration/test_a.py::t", "stack")) == "session stack"
    assert xdist_units.unit_of(item("tests/integration/test_a.py::t", "stack", "cdc_stack")) == "session cdc_stack"
    assert xdist_units.unit_of(item("tests/integration/test_b.py::t", "stack", module=own)) == "tests/integration/test_b.py"
    assert xdist_units.unit_of(item("tests/unit/test_c.py::t[1]")) == "tests/unit/test_c.py"


def test_units_are_ordered_longest_first_and_keep_their_tests_together_in_order():
    items = [item("tests/unit/test_pure.py::a"), item("tests/integration/test_new.py::a"),
             item("tests/integration/test_torture.py::a"), item("tests/integration/test_x.py::a", "stack"),
             item("tests/unit/test_pure.py::b"), item("tests/integration/test_new.py::b"),
             item("tests/integration/test_y.py::a", "stack"), item("tests/integration/test_other.py::a")]
    xdist_units.longest_first(items)
    assert [i.nodeid for i in items] == [
        "tests/integration/test_x.py::a", "tests/integration/test_y.py::a",  # the session stack's unit
        "tests/integration/test_torture.py::a",  # listed in EXPECTED_S
        "tests/integration/test_new.py::a", "tests/integration/test_new.py::b",  # not listed: in their order
        "tests/integration/test_other.py::a",
        "tests/unit/test_pure.py::a", "tests/unit/test_pure.py::b"]  # pure tests last
