-- A record's identity is its content identity, not its position (docs/DESIGN.md, "Record
-- identity"): a topic recreated under the same name restarts its offsets, and a record
-- re-published or mirrored sits at new ones. `record_key` is `fetch:<fetch id>` for the
-- extractor's records and `sha256:<hex of the payload>` for records other tools produced;
-- `payload_sha256` tells a re-delivery (same bytes) from a conflict (other bytes).
ALTER TABLE raw_data ADD COLUMN record_key TEXT, ADD COLUMN payload_sha256 BYTEA;

-- Existing rows: a row with a fetch id takes it as its identity; when a fetch id was loaded
-- more than once before this migration (re-published records, the hole this closes), the first
-- row keeps it and the later copies keep their position, so no row is lost or rewritten. Rows
-- without a fetch id keep their position too: their original bytes (which the digest needs)
-- were never stored. Their digest is unknown (NULL), so a re-delivery of such a record is taken
-- as the same record, never as a conflict. raw_id is left as it was: Parquet files carry it.
UPDATE raw_data r
SET record_key = CASE
        WHEN o.fetch_id IS NOT NULL AND o.nth = 1 THEN 'fetch:' || o.fetch_id
        ELSE 'position:' || o.topic || '/' || o.kafka_partition || '/' || o.kafka_offset
    END
FROM (
    SELECT raw_id, fetch_id, topic, kafka_partition, kafka_offset,
           row_number() OVER (PARTITION BY fetch_id ORDER BY created_at, kafka_partition, kafka_offset) AS nth
    FROM raw_data
) o
WHERE o.raw_id = r.raw_id;

ALTER TABLE raw_data
    ALTER COLUMN record_key SET NOT NULL,
    ADD CONSTRAINT raw_data_record_key_key UNIQUE (record_key),
    -- A position is no longer unique: a recreated topic reuses it.
    DROP CONSTRAINT raw_data_coordinates_key;
CREATE INDEX raw_data_coordinates_idx ON raw_data (topic, kafka_partition, kafka_offset);
