-- The loader's tables. Created only here; `loader migrate` (or `loader run` at start) applies it.

-- One row per Kafka record: (topic, partition, offset) is the natural key, and raw_id is derived
-- from it (UUIDv5), so a re-delivered record inserts nothing.
CREATE TABLE raw_data (
    raw_id          UUID PRIMARY KEY,
    topic           TEXT        NOT NULL,
    kafka_partition INTEGER     NOT NULL,
    kafka_offset    BIGINT      NOT NULL,
    fetch_id        TEXT,
    payload         JSONB       NOT NULL,
    user_count      INTEGER     NOT NULL,
    fetched_at      TIMESTAMPTZ NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT raw_data_coordinates_key UNIQUE (topic, kafka_partition, kafka_offset)
);
CREATE INDEX raw_data_fetched_at_idx ON raw_data (fetched_at);

-- One row per user per raw record: (raw_id, user_index) is the natural key.
CREATE TABLE processed_data (
    raw_id          UUID        NOT NULL REFERENCES raw_data (raw_id),
    user_index      INTEGER     NOT NULL,
    user_uuid       TEXT,
    full_name       TEXT        NOT NULL,
    title           TEXT,
    first_name      TEXT        NOT NULL,
    last_name       TEXT        NOT NULL,
    email           TEXT        NOT NULL,
    gender          TEXT,
    nationality     TEXT,
    city            TEXT,
    state           TEXT,
    country         TEXT,
    postcode        TEXT,
    date_of_birth   TIMESTAMPTZ,
    registered_date TIMESTAMPTZ NOT NULL,
    fetched_at      TIMESTAMPTZ NOT NULL,
    processed_at    TIMESTAMPTZ NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (raw_id, user_index)
);
CREATE INDEX processed_data_user_uuid_idx ON processed_data (user_uuid);
CREATE INDEX processed_data_registered_date_idx ON processed_data (registered_date);

-- The Parquet ledger: a batch's files are registered here, in the same transaction as its rows,
-- while they sit in the staging directory; once renamed into place they are marked published.
-- Start-up recovery finishes what is staged and removes staged files nobody registered.
CREATE TABLE parquet_files (
    path            TEXT PRIMARY KEY,
    staged_path     TEXT        NOT NULL,
    dataset         TEXT        NOT NULL CHECK (dataset IN ('raw', 'processed')),
    topic           TEXT        NOT NULL,
    kafka_partition INTEGER     NOT NULL,
    first_offset    BIGINT      NOT NULL,
    last_offset     BIGINT      NOT NULL,
    row_count       BIGINT      NOT NULL,
    state           TEXT        NOT NULL CHECK (state IN ('staged', 'published')),
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    published_at    TIMESTAMPTZ
);
CREATE INDEX parquet_files_staged_idx ON parquet_files (state) WHERE state = 'staged';
