#!/bin/sh
# docker-compose's Postgres, set up with least privilege (the roles `mallard stack`
# creates, mallard/stack/roles.py): the image's superuser only runs this script; the
# shop is owned by `mallard`, Debezium streams as `mallard_debezium` (REPLICATION +
# SELECT), the services read as `mallard_snapshotter` (SELECT). The publication is
# made here, by the superuser, so Debezium need not own the tables (the connector
# config leaves it alone: publication.autocreate.mode=disabled). It also holds the
# heartbeat table that Debezium's heartbeat.action.query updates, the one table its
# role may write: Debezium decodes that change, so the slot's position moves on while
# the captured tables are quiet (the local stack does the same: mallard/stack/roles.py).
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
     -v owner_pw="$MALLARD_PG_OWNER_PASSWORD" \
     -v debezium_pw="$MALLARD_PG_DEBEZIUM_PASSWORD" \
     -v snapshotter_pw="$MALLARD_PG_SNAPSHOTTER_PASSWORD" <<'SQL'
CREATE ROLE mallard LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION PASSWORD :'owner_pw';
CREATE ROLE mallard_debezium LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE REPLICATION PASSWORD :'debezium_pw';
CREATE ROLE mallard_snapshotter LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION PASSWORD :'snapshotter_pw';
ALTER DATABASE shop OWNER TO mallard;
REVOKE CONNECT, TEMPORARY ON DATABASE shop FROM PUBLIC;
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
ALTER SCHEMA public OWNER TO mallard;
GRANT CONNECT ON DATABASE shop TO mallard_debezium, mallard_snapshotter;
GRANT USAGE ON SCHEMA public TO mallard_debezium, mallard_snapshotter;
ALTER DEFAULT PRIVILEGES FOR ROLE mallard GRANT SELECT ON TABLES TO mallard_debezium, mallard_snapshotter;
ALTER DEFAULT PRIVILEGES FOR ROLE mallard GRANT USAGE ON SCHEMAS TO mallard_debezium, mallard_snapshotter;
GRANT pg_read_all_stats TO mallard_snapshotter, mallard;
SET ROLE mallard;
\i /docker-mallard/shop.sql
RESET ROLE;
CREATE SCHEMA _mallard AUTHORIZATION mallard;
CREATE TABLE _mallard.heartbeat (id int PRIMARY KEY, ts timestamptz NOT NULL DEFAULT now());
ALTER TABLE _mallard.heartbeat OWNER TO mallard;
INSERT INTO _mallard.heartbeat (id) VALUES (1);
GRANT USAGE ON SCHEMA _mallard TO mallard_debezium;
GRANT SELECT, UPDATE ON _mallard.heartbeat TO mallard_debezium;
CREATE PUBLICATION mallard_publication FOR TABLE public.customers, public.products, public.orders, _mallard.heartbeat;
SQL
