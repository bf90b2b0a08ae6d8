//! The peer's input: one record per user, the processed row the loader would write into
//! `processed_data`, as Kafka Connect's `JsonConverter` reads it with `schemas.enable=true`
//! (`{"schema": …, "payload": …}`, key and value). The key is the primary key
//! (`raw_id`, `user_index`); the value is the whole row, its timestamps Debezium's
//! `ZonedTimestamp` (ISO-8601 text, microseconds kept) and `raw_id` Debezium's `Uuid`, so the sink
//! binds them as `timestamptz` and `uuid`. Each user goes to its response's partition, in order.
//!
//! The transform the peer cannot do (a response into users) is done here, before and untimed.

use crate::preload::Topic;
use anyhow::Context;
use chrono::{DateTime, Utc};
use loader::transform::ProcessedUser;
use rdkafka::ClientConfig;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use serde_json::{Value, json};
use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

/// The per-user topic as produced.
pub struct UserTopic {
    /// Its name.
    pub name: String,
    /// Records (users) in it.
    pub users: u64,
    /// Key + value bytes in it, envelopes included.
    pub bytes: u64,
    /// Per partition, the key (`raw_id`, `user_index`) of its last record: once those rows are in
    /// PostgreSQL, so is every row before them (a partition is one task's, written in order).
    pub last: BTreeMap<i32, (uuid::Uuid, i32)>,
}

/// A `ZonedTimestamp` field: Debezium's logical type for a timestamp with its zone, as text.
fn zoned(field: &str, optional: bool) -> Value {
    json!({"field": field, "type": "string", "optional": optional,
           "name": "io.debezium.time.ZonedTimestamp", "version": 1})
}

fn text(field: &str, optional: bool) -> Value {
    json!({"field": field, "type": "string", "optional": optional})
}

fn key_fields() -> Vec<Value> {
    vec![
        json!({"field": "raw_id", "type": "string", "optional": false,
               "name": "io.debezium.data.Uuid", "version": 1}),
        json!({"field": "user_index", "type": "int32", "optional": false}),
    ]
}

/// The key's schema: the primary key of `processed_data`.
pub fn key_schema() -> Value {
    json!({"type": "struct", "name": "processed_data.Key", "optional": false,
           "fields": key_fields()})
}

/// The value's schema: every column of `processed_data` but `created_at` (its default, `now()`,
/// fills it as the loader's rows get theirs).
pub fn value_schema() -> Value {
    let mut fields = key_fields();
    fields.extend([
        text("user_uuid", true),
        text("full_name", false),
        text("title", true),
        text("first_name", false),
        text("last_name", false),
        text("email", false),
        text("gender", true),
        text("nationality", true),
        text("city", true),
        text("state", true),
        text("country", true),
        text("postcode", true),
        zoned("date_of_birth", true),
        zoned("registered_date", false),
        zoned("fetched_at", false),
        zoned("processed_at", false),
    ]);
    json!({"type": "struct", "name": "processed_data.Value", "optional": false,
           "fields": fields})
}

fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// The key and value payloads of one user's row.
pub fn payloads(u: &ProcessedUser, fetched_at: DateTime<Utc>) -> (Value, Value) {
    let key = json!({"raw_id": u.raw_id.to_string(), "user_index": u.user_index});
    let value = json!({
        "raw_id": u.raw_id.to_string(),
        "user_index": u.user_index,
        "user_uuid": u.user_uuid,
        "full_name": u.full_name,
        "title": u.title,
        "first_name": u.first_name,
        "last_name": u.last_name,
        "email": u.email,
        "gender": u.gender,
        "nationality": u.nationality,
        "city": u.city,
        "state": u.state,
        "country": u.country,
        "postcode": u.postcode,
        "date_of_birth": u.date_of_birth.map(ts),
        "registered_date": ts(u.registered_date),
        "fetched_at": ts(fetched_at),
        "processed_at": ts(u.processed_at),
    });
    (key, value)
}

/// `{"schema": <schema>, "payload": <payload>}` with the schema already serialised (it is the
/// same in every record).
pub fn envelope(schema: &str, payload: &Value) -> anyhow::Result<String> {
    let payload = serde_json::to_string(payload).context("serialising a payload")?;
    Ok(format!("{{\"schema\":{schema},\"payload\":{payload}}}"))
}

/// Builds and produces the per-user topic `name` from the preloaded responses (lz4, acks=all,
/// idempotent, as the extractor produces), each user into its response's partition.
pub async fn produce(brokers: &str, name: &str, source: &Topic) -> anyhow::Result<UserTopic> {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("compression.type", "lz4")
        .set("linger.ms", "20")
        .create()
        .context("cannot create a Kafka producer")?;
    let key_schema = serde_json::to_string(&key_schema()).context("serialising a schema")?;
    let value_schema = serde_json::to_string(&value_schema()).context("serialising a schema")?;
    let processed_at = Utc::now();
    let mut pending: VecDeque<DeliveryFuture> = VecDeque::new();
    let mut topic = UserTopic {
        name: name.to_string(),
        users: 0,
        bytes: 0,
        last: BTreeMap::new(),
    };
    for r in &source.records {
        let body = &source.payloads[r.payload].body;
        let raw_id = loader::transform::Identity::of(Some(&r.key), body).raw_id;
        let users = loader::transform::transform(body, raw_id, processed_at)
            .map_err(|e| anyhow::anyhow!("a preloaded record does not transform: {e}"))?;
        for u in &users {
            let (k, v) = payloads(u, r.fetched_at);
            let key = envelope(&key_schema, &k)?;
            let value = envelope(&value_schema, &v)?;
            topic.bytes += (key.len() + value.len()) as u64;
            topic.users += 1;
            topic.last.insert(r.partition, (u.raw_id, u.user_index));
            let mut record = FutureRecord::to(name)
                .partition(r.partition)
                .key(&key)
                .payload(&value);
            // Enqueue without waiting for each delivery; when librdkafka's queue is full, wait
            // for the oldest deliveries and try again.
            loop {
                match producer.send_result(record) {
                    Ok(delivery) => {
                        pending.push_back(delivery);
                        break;
                    }
                    Err((e, back)) => {
                        let Some(oldest) = pending.pop_front() else {
                            anyhow::bail!("producing to {name}: {e}");
                        };
                        delivered(oldest, name).await?;
                        record = back;
                    }
                }
            }
            while pending.len() > 50_000 {
                if let Some(oldest) = pending.pop_front() {
                    delivered(oldest, name).await?;
                }
            }
        }
    }
    for d in pending {
        delivered(d, name).await?;
    }
    producer
        .flush(Duration::from_secs(60))
        .with_context(|| format!("flushing {name}"))?;
    Ok(topic)
}

async fn delivered(d: DeliveryFuture, topic: &str) -> anyhow::Result<()> {
    match d.await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err((e, _))) => Err(anyhow::anyhow!("producing to {topic}: {e}")),
        Err(_) => Err(anyhow::anyhow!(
            "producing to {topic}: the delivery was cancelled"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user() -> ProcessedUser {
        let pool = randomuser_stub::fixture_users().unwrap();
        let (body, _) = randomuser_stub::response(&pool, "peer-test", 1, 2);
        let body = serde_json::to_vec(&body).unwrap();
        let raw_id = loader::transform::Identity::of(Some("k"), &body).raw_id;
        let at = "2026-12-06T10:00:00.123456Z".parse().unwrap();
        loader::transform::transform(&body, raw_id, at)
            .unwrap()
            .remove(1)
    }

    /// The envelope is what JsonConverter reads: a schema naming every payload field, in order,
    /// nullable exactly where the column is, the key the primary key.
    #[test]
    fn envelope_matches_its_schema() {
        let u = user();
        let fetched = "2026-12-06T09:59:59.5Z".parse().unwrap();
        let (k, v) = payloads(&u, fetched);
        let schema = serde_json::to_string(&value_schema()).unwrap();
        let doc: Value = serde_json::from_str(&envelope(&schema, &v).unwrap()).unwrap();
        let fields = doc["schema"]["fields"].as_array().unwrap();
        let payload = doc["payload"].as_object().unwrap();
        let names: Vec<&str> = fields
            .iter()
            .map(|f| f["field"].as_str().unwrap())
            .collect();
        let keys: Vec<&str> = payload.keys().map(String::as_str).collect();
        assert_eq!(names, keys, "the payload has the schema's fields, in order");
        assert_eq!(names.len(), 18, "processed_data's columns but created_at");
        for f in fields {
            let name = f["field"].as_str().unwrap();
            let nullable = matches!(
                name,
                "user_uuid"
                    | "title"
                    | "gender"
                    | "nationality"
                    | "city"
                    | "state"
                    | "country"
                    | "postcode"
                    | "date_of_birth"
            );
            assert_eq!(f["optional"], nullable, "{name}");
            if !nullable {
                assert!(!payload[name].is_null(), "{name} is set");
            }
        }
        assert_eq!(doc["schema"]["type"], "struct");
        assert_eq!(payload["user_index"], 1);
        assert_eq!(payload["raw_id"], u.raw_id.to_string());
        assert_eq!(payload["fetched_at"], "2026-12-06T09:59:59.500000Z");
        assert_eq!(payload["processed_at"], "2026-12-06T10:00:00.123456Z");
        assert_eq!(fields[0]["name"], "io.debezium.data.Uuid");
        assert_eq!(fields[15]["name"], "io.debezium.time.ZonedTimestamp");
        let key_schema = serde_json::to_string(&key_schema()).unwrap();
        let key: Value = serde_json::from_str(&envelope(&key_schema, &k).unwrap()).unwrap();
        assert_eq!(
            key["payload"],
            json!({"raw_id": u.raw_id.to_string(), "user_index": 1})
        );
        assert_eq!(key["schema"]["fields"].as_array().unwrap().len(), 2);
    }
}
