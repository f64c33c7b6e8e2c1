"""The local stack's roles without a server: the statements, which credentials each service
gets, where the passwords live, and what `stack status` shows of them."""
import json
import os
import stat

import pytest

from mallard.stack import roles
from mallard.stack.local import SERVICE_ROLES, LocalStack, StackError, StackSettings

ROLES = roles.Roles(owner="mallard", debezium="mallard_debezium", snapshotter="mallard_snapshotter")


@pytest.fixture
def stack(monkeypatch, tmp_path):
    for name in [k for k in os.environ if k.startswith("MALLARD_")]:
        monkeypatch.delenv(name)
    return LocalStack(StackSettings(home=tmp_path / "home", replication_config="", pg_password="owner-pw"))


def test_debezium_gets_replication_and_select_only():
    statements = roles.debezium_statements(ROLES, "shop", ["public"])
    assert statements[0] == "CREATE ROLE \"mallard_debezium\" LOGIN REPLICATION PASSWORD '<password>'"
    assert 'GRANT SELECT ON ALL TABLES IN SCHEMA "public" TO "mallard_debezium"' in statements
    assert 'ALTER DEFAULT PRIVILEGES FOR ROLE "mallard" GRANT SELECT ON TABLES TO "mallard_debezium"' in statements
    text = " ".join(statements)
    for word in ("SUPERUSER", "INSERT", "UPDATE", "DELETE", "ALL PRIVILEGES", "CREATE ON", "TEMPORARY"):
        assert word not in text, word


def test_the_snapshotter_gets_select_and_stats_only():
    statements = roles.snapshotter_statements(ROLES, "shop", ["public", "sales"])
    assert statements[0] == "CREATE ROLE \"mallard_snapshotter\" LOGIN PASSWORD '<password>'"
    assert 'GRANT USAGE ON SCHEMA "sales" TO "mallard_snapshotter"' in statements
    assert statements[-1] == 'GRANT pg_read_all_stats TO "mallard_snapshotter"'
    assert "REPLICATION" not in " ".join(statements)


def test_each_service_runs_as_its_role(stack):
    stack.home.mkdir(parents=True)
    passwords = stack._new_passwords()
    assert stat.S_IMODE(os.stat(stack.secrets_file).st_mode) == 0o600
    assert set(passwords) == {"admin", "debezium", "snapshotter"} and len(set(passwords.values())) == 3
    assert SERVICE_ROLES["mallard.services.snapshotter"] == "snapshotter"
    connect = stack.connect_env()  # the worker resolves the connector's ${env:MALLARD_PG_*} from it
    assert (connect["MALLARD_PG_USER"], connect["MALLARD_PG_PASSWORD"]) == ("mallard_debezium", passwords["debezium"])
    snapshotter = stack.service_env(1, "snapshotter")
    assert (snapshotter["MALLARD_PG_USER"], snapshotter["MALLARD_PG_PASSWORD"]) == ("mallard_snapshotter",
                                                                                    passwords["snapshotter"])
    assert stack.service_env(1)["MALLARD_PG_PASSWORD"] == "owner-pw"
    assert "admin" not in SERVICE_ROLES.values()  # no service gets the superuser


def test_a_cluster_without_the_roles_passwords_is_refused_with_the_fix(stack):
    with pytest.raises(StackError, match=r"down --purge"):
        stack.as_role("admin")
    with pytest.raises(StackError):
        stack.service_env(1, "debezium")  # never falls back to another role's credentials


def test_status_masks_every_password_unless_asked(stack):
    stack.home.mkdir(parents=True)
    passwords = stack._new_passwords()
    masked = stack.status()
    text = json.dumps(masked)
    assert not [p for p in [*passwords.values(), "owner-pw"] if p in text]
    dsns = {r: v["dsn"] for r, v in masked["postgres"]["roles"].items()}
    assert dsns["debezium"].startswith("postgresql://mallard_debezium:***@127.0.0.1:")
    assert masked["postgres"]["dsn"].startswith("postgresql://mallard:***@")
    shown = stack.status(show_secrets=True)
    assert shown["postgres"]["dsn"].startswith("postgresql://mallard:owner-pw@")
    assert f"mallard_admin:{passwords['admin']}@" in shown["postgres"]["roles"]["admin"]["dsn"]


def test_the_capture_trigger_adds_only_the_configured_tables_as_the_admin():
    """Issue 18: a configured table created after `up` joins the publication as it is
    created; the function is the admin's (SECURITY DEFINER, a fixed search_path) and its
    table list is literal SQL, quoted."""
    import pglast

    from mallard.stack.roles import capture_trigger_statements

    create, revoke = capture_trigger_statements("mallard_publication", ["public.late", 'public."O\'Brien Ltd"'],
                                                "mallard_publication_inserts", ["public.late"])
    pglast.parse_sql(create)  # one valid statement
    assert "SECURITY DEFINER SET search_path = pg_catalog" in create
    # (schema, table) pairs as Postgres stores the names: no spelling to parse in SQL
    assert "unnest(ARRAY['public', 'public']::text[], ARRAY['late', 'O''Brien Ltd']::text[])" in create
    assert "unnest(ARRAY['public']::text[], ARRAY['late']::text[])" in create  # REPLICA IDENTITY FULL first
    assert "ALTER PUBLICATION %I ADD TABLE %I.%I" in create and "RAISE WARNING" in create
    # a table without a key goes to the inserts-only publication (Postgres keeps accepting its writes)
    assert "target := 'mallard_publication_inserts'" in create
    assert revoke.startswith("REVOKE ALL ON FUNCTION") and revoke.endswith("() FROM PUBLIC")
    empty, _ = capture_trigger_statements("p", [])
    assert "unnest(ARRAY[]::text[], ARRAY[]::text[])" in empty and "target := NULL" in empty
