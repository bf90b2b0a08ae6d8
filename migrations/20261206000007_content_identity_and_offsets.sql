-- Content identity across key kinds (docs/DESIGN.md, "Record identity"): the same bytes are the
-- same record whether they arrive with the extractor's headers (record_key `fetch:<id>`) or
-- without (record_key `sha256:<digest>`). The digest becomes unique, so PostgreSQL itself
-- decides, under concurrent loaders on other partitions too, that a copy is a re-delivery.
--
-- Rows loaded twice under both kinds before this migration (the hole it closes) stay, and
-- nothing is rewritten: of each set of rows sharing a digest, the extractor's row (else the
-- first loaded) keeps the digest and the others lose it (NULL, as for rows loaded before
-- migration 3). A copy's own record_key, `sha256:<hex>`, still names its bytes.
UPDATE raw_data r
SET payload_sha256 = NULL
FROM (
    SELECT raw_id,
           row_number() OVER (
               PARTITION BY payload_sha256
               ORDER BY (record_key LIKE 'fetch:%') DESC, created_at, raw_id
           ) AS nth
    FROM raw_data
    WHERE payload_sha256 IS NOT NULL
) d
WHERE d.raw_id = r.raw_id AND d.nth > 1;
CREATE UNIQUE INDEX raw_data_payload_sha256_key ON raw_data (payload_sha256);

-- Offsets kept where the data is: per consumer group and partition, the next offset whose
-- records (and everything before it) this database holds. Written in the batch's own
-- transaction, so a database restored from a backup, or a promoted standby, holds the offsets
-- that match its rows; on assignment the loader starts from here, not from the offset committed
-- to Kafka (still committed, for lag and tools). `loader replay --execute` moves both.
CREATE TABLE consumer_offsets (
    group_id        TEXT        NOT NULL,
    topic           TEXT        NOT NULL,
    kafka_partition INTEGER     NOT NULL,
    next_offset     BIGINT      NOT NULL CHECK (next_offset >= 0),
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_by      TEXT        NOT NULL,
    PRIMARY KEY (group_id, topic, kafka_partition)
);
