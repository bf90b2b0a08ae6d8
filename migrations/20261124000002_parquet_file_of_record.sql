-- Which Parquet files hold each record, so `--reprocess` can rewrite exactly the files whose
-- records it recomputes. NULL for rows loaded before this migration.
ALTER TABLE raw_data ADD COLUMN raw_file TEXT, ADD COLUMN processed_file TEXT;
CREATE INDEX raw_data_processed_file_idx ON raw_data (processed_file) WHERE processed_file IS NOT NULL;
