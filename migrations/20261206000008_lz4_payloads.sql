-- The payloads are compressed with lz4 instead of pglz (issue 22). PostgreSQL compresses every
-- TOASTed value it stores; for a 100-user response (~130 KB of JSON) pglz was most of what a
-- raw row cost the database: inserting 300 such responses as jsonb and text took 2.3 s of
-- backend time with pglz and 1.2 s with lz4, for files of the same size (64 and 65 MB).
-- Only new values are compressed so; stored ones stay as they are (both read back alike).
-- A server built without lz4 (it is an option of PostgreSQL's build) keeps pglz.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_settings
               WHERE name = 'default_toast_compression' AND 'lz4' = ANY (enumvals)) THEN
        ALTER TABLE raw_data ALTER COLUMN payload SET COMPRESSION lz4,
                             ALTER COLUMN payload_text SET COMPRESSION lz4;
    ELSE
        RAISE NOTICE 'this PostgreSQL was built without lz4: raw_data payloads stay pglz-compressed';
    END IF;
END
$$;
