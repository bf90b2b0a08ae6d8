-- A record's identity is its content identity, not its position (docs/DESIGN.md, "Record
-- identity"): a topic recreated under the same name restarts its offsets, and a record
-- re-published or mirrored sits at new ones. `record_key` is `fetch:<fetch id>` for the
-- extractor's records and `sha256:<hex of the payload>` for records other tools produced;
-- `payload_sha256` tells a re-delivery (same bytes) from a conflict (other bytes).
ALTER TABLE raw_data ADD COLUMN record_key TEXT, ADD COLUMN payload_sha256 BYTEA;

-- Existing rows: a row with a fetch id (non-empty, at most 256 bytes, as the loader accepts them)
-- takes it as its identity; when a fetch id was loaded
-- more than once before this migration (re-published records, the hole this closes), the first
-- row keeps it and the later copies keep their position, so no row is lost or rewritten. Rows
-- without a fetch id keep their position too: their original bytes (which the digest needs)
-- were never stored. Their digest is unknown (NULL), so a re-delivery of such a record is taken
-- as the same record, never as a conflict. raw_id is left as it was: Parquet files carry it.
UPDATE raw_data r
SET record_key = CASE
        WHEN o.fetch_id <> '' AND length(o.fetch_id) <= 256 AND o.nth = 1 THEN 'fetch:' || o.fetch_id
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

-- A rolling upgrade runs loaders of the previous version beside this one for a while. They do
-- not know record_key: fill it for them the way this migration did (their fetch_id column holds
-- the key, the extractor's fetch id), so their inserts neither fail (which they would take for
-- bad data, and dead-letter) nor escape the identity's uniqueness (ON CONFLICT DO NOTHING sees
-- the value set here).
CREATE FUNCTION raw_data_default_record_key() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.record_key IS NULL THEN
        NEW.record_key := CASE
            WHEN NEW.fetch_id <> '' AND length(NEW.fetch_id) <= 256 THEN 'fetch:' || NEW.fetch_id
            ELSE 'position:' || NEW.topic || '/' || NEW.kafka_partition || '/' || NEW.kafka_offset
        END;
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER raw_data_default_record_key BEFORE INSERT ON raw_data
    FOR EACH ROW WHEN (NEW.record_key IS NULL) EXECUTE FUNCTION raw_data_default_record_key();
