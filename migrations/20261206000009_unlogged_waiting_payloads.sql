-- The copy of a payload that waits for its raw Parquet file moves out of raw_data into an
-- UNLOGGED table (issue 22). raw_data keeps the payload as jsonb, which is what users query;
-- the raw file must hold the text as the loader stored it (jsonb keeps values, not key order or
-- whitespace), so the text waits beside it until the file is published. In raw_data that copy
-- was written to the WAL twice (insert, then the update that cleared it), replicated and
-- backed up, for a value kept only minutes: a third of a batch's WAL. Unlogged, it costs none
-- of that. After a crash PostgreSQL empties unlogged tables, and a standby never has them:
-- the raw files of records waiting then are written from the jsonb (the same JSON value, in
-- jsonb's key order), as rewritten files always were.
--
-- raw_data.payload_text stays: rows waiting from before (and loaders of the previous version
-- during a rolling upgrade) keep their copy there, and the roll reads either.
CREATE UNLOGGED TABLE raw_payload_text (
    raw_id       UUID PRIMARY KEY,
    payload_text TEXT NOT NULL
);
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_settings
               WHERE name = 'default_toast_compression' AND 'lz4' = ANY (enumvals)) THEN
        ALTER TABLE raw_payload_text ALTER COLUMN payload_text SET COMPRESSION lz4;
    END IF;
END
$$;

-- Whoever may insert into raw_data (the loader's role: SECURITY.md grants SELECT, INSERT, UPDATE
-- and no DELETE) may now also clear the waiting copies, the one table it deletes from.
DO $$
DECLARE
    writer name;
BEGIN
    FOR writer IN
        SELECT DISTINCT pg_get_userbyid(a.grantee)
        FROM pg_class c, aclexplode(c.relacl) a
        WHERE c.oid = 'raw_data'::regclass AND a.privilege_type = 'INSERT'
          AND a.grantee <> 0 AND a.grantee <> c.relowner
    LOOP
        EXECUTE format('GRANT SELECT, INSERT, DELETE ON raw_payload_text TO %I', writer);
    END LOOP;
END
$$;
