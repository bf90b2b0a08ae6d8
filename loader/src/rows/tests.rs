use super::*;
use crate::batch::{LoadRecord, SourceRecord, decode};
use crate::sink::parquet::{processed_schema, raw_schema};
use crate::sink::postgres::INSERT_RAW;
use sqlx::{Arguments, Execute};

fn records() -> Vec<LoadRecord> {
    let payload = include_bytes!("../../../fixtures/randomuser/v1.3-compact-20-users.json");
    let recs = (0..3)
        .map(|o| SourceRecord {
            topic: "raw".into(),
            partition: 0,
            offset: o,
            key: Some(format!("k{o}")),
            fetch_id: Some(format!("k{o}")),
            payload: Some(payload.to_vec()),
            fetched_at: Utc::now(),
            headers: Vec::new(),
        })
        .collect();
    let (good, bad) = decode(recs, 1 << 20, Utc::now(), false);
    assert!(bad.is_empty());
    good
}

/// A processed row's user columns, in file order: both sinks have them.
const USER_COLUMNS: [&str; 18] = [
    "raw_id",
    "user_index",
    "user_uuid",
    "full_name",
    "title",
    "first_name",
    "last_name",
    "email",
    "gender",
    "nationality",
    "city",
    "state",
    "country",
    "postcode",
    "date_of_birth",
    "registered_date",
    "fetched_at",
    "processed_at",
];

fn names(columns: impl Iterator<Item = &'static Column>) -> Vec<&'static str> {
    columns.map(|c| c.name).collect()
}

/// Binds `rows` of shape `S` and counts the parameters the query got.
fn bound<S: Shape>(rows: &[S::Row<'_>]) -> usize {
    let mut query = S::bind(sqlx::query("SELECT 1"), rows);
    query
        .take_arguments()
        .expect("binds encode")
        .map_or(0, |a| a.len())
}

#[test]
fn parquet_files_keep_their_column_order() {
    // Readers select by name, but a reordered file is a format change: it must be deliberate.
    assert_eq!(
        names(parquet_columns::<RawColumns>()),
        [
            "raw_id",
            "topic",
            "kafka_partition",
            "kafka_offset",
            "fetch_id",
            "fetched_at",
            "user_count",
            "payload"
        ]
    );
    let mut processed = USER_COLUMNS.to_vec();
    processed.extend(["source_topic", "source_partition", "source_offset"]);
    assert_eq!(names(parquet_columns::<ProcessedColumns>()), processed);
}

#[test]
fn schema_batches_and_binds_follow_one_column_list() {
    let recs = records();
    let refs: Vec<&LoadRecord> = recs.iter().collect();
    let users: Vec<_> = refs
        .iter()
        .flat_map(|r| r.users.iter().map(move |u| (*r, u)))
        .collect();

    let raw = crate::sink::parquet::raw_batch(&refs).expect("raw batch");
    assert_eq!(raw.schema(), raw_schema());
    assert_eq!(
        raw.schema()
            .fields()
            .iter()
            .map(|f| f.name().as_str())
            .collect::<Vec<_>>(),
        names(parquet_columns::<RawColumns>())
    );
    let processed = crate::sink::parquet::processed_batch(&refs).expect("processed batch");
    assert_eq!(processed.schema(), processed_schema());
    assert_eq!(processed.num_rows(), users.len());
    assert_eq!(
        processed
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().as_str())
            .collect::<Vec<_>>(),
        names(parquet_columns::<ProcessedColumns>())
    );

    assert_eq!(
        bound::<RawColumns>(&refs),
        pg_columns::<RawColumns>().count()
    );
    assert_eq!(
        bound::<ProcessedColumns>(&users),
        pg_columns::<ProcessedColumns>().count()
    );
}

#[test]
fn postgres_gets_the_columns_it_always_had() {
    // PostgreSQL's schema does not change with the row declarations.
    let mut processed = names(pg_columns::<ProcessedColumns>());
    processed.sort_unstable();
    let mut want = USER_COLUMNS.to_vec();
    want.sort_unstable();
    assert_eq!(processed, want);
    assert_eq!(
        INSERT_RAW.as_str(),
        "WITH r AS MATERIALIZED (SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::int4[], \
         $4::int8[], $5::text[], $6::timestamptz[], $7::int4[], $8::text[], $9::text[], \
         $10::bytea[], $11::int4[]) AS r(raw_id, topic, kafka_partition, kafka_offset, fetch_id, \
         fetched_at, user_count, payload, record_key, payload_sha256, payload_bytes)), \
         new AS (INSERT INTO raw_data (raw_id, topic, kafka_partition, kafka_offset, fetch_id, \
         fetched_at, user_count, payload, record_key, payload_sha256, payload_bytes, created_at, \
         parquet_pending) SELECT r.raw_id, r.topic, r.kafka_partition, r.kafka_offset, r.fetch_id, \
         r.fetched_at, r.user_count, r.payload::jsonb, r.record_key, r.payload_sha256, \
         r.payload_bytes, $12, true FROM r ON CONFLICT DO NOTHING RETURNING raw_id) \
         INSERT INTO raw_payload_text (raw_id, payload_text) \
         SELECT r.raw_id, r.payload FROM r JOIN new USING (raw_id) RETURNING raw_id"
    );
}

#[test]
fn cells_say_their_nullability() {
    let raw = raw_schema();
    let nullable = |name: &str| raw.field_with_name(name).expect(name).is_nullable();
    assert!(nullable("fetch_id"));
    assert!(!nullable("payload"));
    let processed = processed_schema();
    let nullable = |name: &str| processed.field_with_name(name).expect(name).is_nullable();
    assert!(nullable("user_uuid") && nullable("date_of_birth"));
    assert!(!nullable("email") && !nullable("registered_date"));
}
