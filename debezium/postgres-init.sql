-- docker-compose's Postgres, after the demo schema (the local stack does the same in
-- mallard/stack/roles.py and local.py): the heartbeat table Debezium's
-- heartbeat.action.query updates, and the publication, which the connector config
-- leaves alone (publication.autocreate.mode=disabled). The heartbeat table is in the
-- publication but not in table.include.list: Debezium decodes its change, so the slot's
-- position moves on while the captured tables are quiet, and emits no event for it.
CREATE SCHEMA IF NOT EXISTS _mallard;
CREATE TABLE IF NOT EXISTS _mallard.heartbeat (id int PRIMARY KEY, ts timestamptz NOT NULL DEFAULT now());
INSERT INTO _mallard.heartbeat (id) VALUES (1) ON CONFLICT (id) DO NOTHING;
CREATE PUBLICATION mallard_publication FOR TABLE public.customers, public.products, public.orders, _mallard.heartbeat;
