-- Compaction (`loader compact`, LAKE_COMPACT_INTERVAL): small published files of one partition
-- and date are rewritten as one file of about a roll's size, in one table commit that removes
-- them (`dataChange: false`).
--
-- The compacted file is a file like any other: its records name it (raw_file / processed_file
-- are moved to it in the transaction that registers it), so a `--reprocess` rewrites it. The
-- files it replaces stay in the ledger as 'compacted', naming it in `compacted_into`, with the
-- object that held them: until its commit lands they are what the table holds, and the commit
-- (whoever makes it, after any crash) removes exactly those objects.
--
-- 'compact':   registered, its object is built from its members' objects and committed.
-- 'compacted': replaced by `compacted_into`; final.
ALTER TABLE parquet_files
    ADD COLUMN compacted_into TEXT,
    -- Payload bytes of the records in the file: what the roll size counts, and what tells a
    -- small file from a full one.
    ADD COLUMN input_bytes    BIGINT;

ALTER TABLE parquet_files DROP CONSTRAINT parquet_files_state_check;
ALTER TABLE parquet_files ADD CONSTRAINT parquet_files_state_check
    CHECK (state IN ('staged', 'pending', 'rewrite', 'adopt', 'compact', 'published', 'compacted', 'failed'));

UPDATE parquet_files f
SET input_bytes = coalesce((SELECT sum(coalesce(r.payload_bytes, 0)) FROM raw_data r WHERE r.raw_file = f.path), 0)
WHERE f.dataset = 'raw';
UPDATE parquet_files f
SET input_bytes = coalesce((SELECT sum(coalesce(r.payload_bytes, 0)) FROM raw_data r WHERE r.processed_file = f.path), 0)
WHERE f.dataset = 'processed';

-- A compaction looks for small published files; a compacted file's members are found by it.
CREATE INDEX parquet_files_small_idx ON parquet_files (dataset, topic, kafka_partition, first_offset)
    INCLUDE (input_bytes) WHERE state = 'published';
CREATE INDEX parquet_files_compacted_into_idx ON parquet_files (compacted_into) WHERE compacted_into IS NOT NULL;
-- Files still to write: compacted ones are final, like published ones.
DROP INDEX parquet_files_unpublished_idx;
CREATE INDEX parquet_files_unpublished_idx ON parquet_files (created_at)
    WHERE state NOT IN ('published', 'compacted', 'failed');
