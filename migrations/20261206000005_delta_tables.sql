-- Each dataset is a Delta Lake table (`<PARQUET_URL>/raw`, `<PARQUET_URL>/processed`): a file
-- is in the lake once a commit of the table's log adds it, and objects are immutable — a rewrite
-- (`--reprocess`) writes a new object and one commit removes the old one and adds the new.
--
-- `path` stays the file's identity (records name it in raw_file / processed_file); `object` is
-- the object that holds its rows now (`path` at generation 0, `…-g<generation>.parquet` after a
-- rewrite), relative to PARQUET_URL; `table_version` the table version whose commit added it.
ALTER TABLE parquet_files
    ADD COLUMN object         TEXT,
    ADD COLUMN table_version  BIGINT,
    -- A writer's lease on the file, instead of a lock held in an open transaction across the
    -- upload: a writer that dies frees it when it runs out. Correctness never rests on it (the
    -- table's commit protocol fences writers); it only keeps two from doing the same work.
    ADD COLUMN lease_owner    UUID,
    ADD COLUMN lease_until    TIMESTAMPTZ,
    -- Why the file cannot be built (its records no longer transform): counted and alerted, and
    -- left for an operator instead of retried forever.
    ADD COLUMN failed_reason  TEXT;

-- 'adopt': a file published before the tables existed: its object is in no table and holds
-- raw_id as 16 bytes; it is rebuilt (raw_id as UUID text) into the table as a new object.
ALTER TABLE parquet_files DROP CONSTRAINT parquet_files_state_check;
ALTER TABLE parquet_files ADD CONSTRAINT parquet_files_state_check
    CHECK (state IN ('staged', 'pending', 'rewrite', 'adopt', 'published', 'failed'));

UPDATE parquet_files
SET state = 'adopt', generation = generation + 1, object = path, published_at = NULL
WHERE state = 'published';
UPDATE parquet_files SET object = path WHERE object IS NULL AND state = 'rewrite';
