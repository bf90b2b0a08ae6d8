-- Parquet files are rolled from PostgreSQL (issue 12): a loaded record waits in raw_data,
-- `parquet_pending`, until a roll claims it into a file of a useful size. Rows written by
-- loaders of the previous version keep the default (false): those loaders write their own
-- per-batch files.
-- `payload_text` is the payload exactly as the raw Parquet file must hold it (jsonb normalizes
-- whitespace and key order); it is kept only until the raw file is published.
ALTER TABLE raw_data
    ADD COLUMN parquet_pending BOOLEAN NOT NULL DEFAULT false,
    ADD COLUMN payload_bytes   INTEGER,
    ADD COLUMN payload_text    TEXT;

-- What is waiting, per partition, with what the roll decision needs (size and age).
CREATE INDEX raw_data_parquet_pending_idx ON raw_data (topic, kafka_partition, kafka_offset)
    INCLUDE (payload_bytes, created_at) WHERE parquet_pending;
-- A file is rebuilt from the rows that name it (processed files had an index since migration 2).
CREATE INDEX raw_data_raw_file_idx ON raw_data (raw_file) WHERE raw_file IS NOT NULL;

-- 'pending': claimed, the object is to be created from the rows that name it.
-- 'rewrite': published, to be replaced from its (recomputed) rows (`--reprocess`).
-- 'staged':  written by a loader of the previous version to its local _staging directory.
ALTER TABLE parquet_files DROP CONSTRAINT parquet_files_state_check;
ALTER TABLE parquet_files ADD CONSTRAINT parquet_files_state_check
    CHECK (state IN ('staged', 'pending', 'rewrite', 'published'));
ALTER TABLE parquet_files ALTER COLUMN staged_path DROP NOT NULL;
-- Bumped by every rewrite request, so a slow writer of an older version cannot mark a newer
-- request done.
ALTER TABLE parquet_files ADD COLUMN generation BIGINT NOT NULL DEFAULT 0;
DROP INDEX parquet_files_staged_idx;
CREATE INDEX parquet_files_unpublished_idx ON parquet_files (created_at) WHERE state <> 'published';
