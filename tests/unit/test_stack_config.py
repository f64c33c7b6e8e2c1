"""Which replication config a local stack runs (issue 18): only what it was told to
replicate — the demo's tables only with the demo."""
import pytest

from mallard.stack.local import StackError, stack_replication_config

DEMO = "/repo/demo/replication.yaml"


def test_the_demo_stack_runs_the_demo_config_by_default():
    assert stack_replication_config(DEMO, named=False, demo_stack=True, own_connector=False) == DEMO


def test_a_named_config_is_run_with_or_without_the_demo():
    for demo in (True, False):
        assert stack_replication_config("/mine.yaml", named=True, demo_stack=demo, own_connector=False) == "/mine.yaml"


def test_without_the_demo_the_default_demo_config_is_not_run():
    assert stack_replication_config(DEMO, named=False, demo_stack=False, own_connector=True) == ""


def test_no_config_means_the_connector_configs_own_tables_only_when_they_are_the_users_or_the_demos():
    assert stack_replication_config("", named=True, demo_stack=True, own_connector=False) == ""
    assert stack_replication_config("", named=True, demo_stack=False, own_connector=True) == ""


@pytest.mark.parametrize("configured,named", [(DEMO, False), ("", True)])
def test_nothing_to_replicate_is_refused_in_one_line_saying_what_to_give(configured, named):
    with pytest.raises(StackError) as e:
        stack_replication_config(configured, named=named, demo_stack=False, own_connector=False)
    assert "nothing to replicate" in str(e.value) and "MALLARD_REPLICATION_CONFIG" in str(e.value)
    assert "\n" not in str(e.value)
