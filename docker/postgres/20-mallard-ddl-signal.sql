-- Written by `python -m mallard.stack.roles` (mallard/stack/roles.py, rewrite_signal_statements):
-- the DDL event trigger of docs/applier.md, "Schema changes". Do not edit.
CREATE UNLOGGED TABLE IF NOT EXISTS "_mallard"."columns_seen" (relid oid, attnum int2, attname name, atttypid oid, atttypmod int4, PRIMARY KEY (relid, attnum));
REVOKE ALL ON "_mallard"."columns_seen" FROM PUBLIC;
INSERT INTO "_mallard"."columns_seen" SELECT a.attrelid, a.attnum, a.attname, a.atttypid, a.atttypmod FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace WHERE a.attnum > 0 AND NOT a.attisdropped AND c.relkind IN ('r', 'p') AND NOT EXISTS (SELECT 1 FROM "_mallard"."columns_seen" s WHERE s.relid = c.oid) AND EXISTS (SELECT 1 FROM pg_publication_tables t WHERE t.pubname = ANY (ARRAY['mallard_publication']::text[]) AND t.schemaname = n.nspname AND t.tablename = c.relname);
CREATE OR REPLACE FUNCTION "_mallard"."signal_rewrites"() RETURNS event_trigger LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $mallard$
DECLARE
    altered record;
    changes text;
BEGIN
    FOR altered IN
        SELECT DISTINCT c.oid AS relid, n.nspname, c.relname, d.command_tag = 'ALTER TABLE' AS alter_table
        FROM pg_event_trigger_ddl_commands() d
        JOIN pg_class c ON c.oid = d.objid AND d.classid = 'pg_class'::regclass
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE c.relkind IN ('r', 'p')
          AND EXISTS (SELECT 1 FROM pg_publication_tables t WHERE t.pubname = ANY (ARRAY['mallard_publication']::text[])
                      AND t.schemaname = n.nspname AND t.tablename = c.relname)
    LOOP
        BEGIN
            IF altered.alter_table THEN
                IF NOT EXISTS (SELECT 1 FROM "_mallard"."columns_seen" WHERE relid = altered.relid) THEN
                    changes := 'altered before mallard saw its columns';
                ELSE
                    SELECT string_agg(CASE
                            WHEN s.attnum IS NULL THEN 'column ' || quote_ident(a.attname) || ' added with a default'
                            WHEN s.attname <> a.attname THEN 'column ' || quote_ident(s.attname::text) || ' renamed to '
                                                             || quote_ident(a.attname)
                            ELSE 'column ' || quote_ident(a.attname) || ' changed type to '
                                 || format_type(a.atttypid, a.atttypmod) END, '; ' ORDER BY a.attnum)
                    INTO changes
                    FROM pg_attribute a
                    LEFT JOIN "_mallard"."columns_seen" s ON s.relid = a.attrelid AND s.attnum = a.attnum
                    WHERE a.attrelid = altered.relid AND a.attnum > 0 AND NOT a.attisdropped
                      AND ((s.attnum IS NULL AND (a.atthasdef OR a.attidentity <> '' OR a.attgenerated <> ''))
                           OR s.attname <> a.attname OR s.atttypid <> a.atttypid OR s.atttypmod <> a.atttypmod);
                END IF;
                IF changes IS NOT NULL THEN
                    PERFORM pg_logical_emit_message(true, 'mallard.ddl', json_build_object(
                        'v', 1, 'schema', altered.nspname, 'table', altered.relname, 'changes', changes)::text);
                END IF;
            END IF;
            DELETE FROM "_mallard"."columns_seen" WHERE relid = altered.relid;
            INSERT INTO "_mallard"."columns_seen" SELECT attrelid, attnum, attname, atttypid, atttypmod FROM pg_attribute
                WHERE attrelid = altered.relid AND attnum > 0 AND NOT attisdropped;
        EXCEPTION WHEN OTHERS THEN  -- never fail the application's DDL: its next row event still says it
            RAISE WARNING 'mallard: % altered, not signalled: %', altered.nspname || '.' || altered.relname, SQLERRM;
        END;
    END LOOP;
END$mallard$;
REVOKE ALL ON FUNCTION "_mallard"."signal_rewrites"() FROM PUBLIC;
CREATE EVENT TRIGGER "mallard_signal_rewrites" ON ddl_command_end WHEN TAG IN ('CREATE TABLE', 'CREATE TABLE AS', 'SELECT INTO', 'ALTER TABLE') EXECUTE FUNCTION "_mallard"."signal_rewrites"();
