//! Hostile records against the parse/transform path: mutations of the real captures and
//! arbitrary JSON, fed through `batch::decode` exactly as the consumer feeds a batch (size limit,
//! UTF-8, parse, transform, login-secret stripping). Whatever comes in, each record is either
//! loadable — one row per user, its stored text free of login secrets (or byte for byte when
//! they are kept) — or poison with a classified reason and its bytes untouched for the DLQ. It
//! never panics. `PROPTEST_CASES` sets the number of cases per property (CI runs the default
//! smoke size; SECURITY.md records a long run).

use loader::batch::{self, SourceRecord};
use loader::transform::{self, LOGIN_SECRETS, TransformError};
use proptest::prelude::*;
use serde_json::Value;

const V13: &[u8] = include_bytes!("../../fixtures/randomuser/v1.3-compact-20-users.json");
const V14: &[u8] =
    include_bytes!("../../fixtures/randomuser/v1.4-all-nationalities-111-users.json");
const V10: &[u8] = include_bytes!("../../fixtures/randomuser/v1.0-legacy-6-users.json");

/// How a case is decoded: the record size limit sits above (0), at (1) or just below (2) the
/// payload's size, and login secrets are stripped or kept.
#[derive(Debug, Clone, Copy)]
struct Knobs {
    limit: u8,
    strip: bool,
}

fn knobs() -> impl Strategy<Value = Knobs> {
    (0u8..3, any::<bool>()).prop_map(|(limit, strip)| Knobs { limit, strip })
}

fn check(payload: &[u8], k: Knobs) {
    let max_bytes = match k.limit {
        0 => usize::MAX,
        1 => payload.len(),
        _ => payload.len().saturating_sub(1).max(1),
    };
    check_decode(payload, max_bytes, k.strip);
}

/// One record through the consumer's decode step, and what must hold of the outcome.
fn check_decode(payload: &[u8], max_bytes: usize, strip: bool) {
    let record = SourceRecord {
        topic: "randomuser.raw".to_string(),
        partition: 3,
        offset: 42,
        key: Some("fetch-id".to_string()),
        fetch_id: Some("fetch-id".to_string()),
        payload: Some(payload.to_vec()),
        fetched_at: chrono::Utc::now(),
        headers: Vec::new(),
    };
    let (good, bad) = batch::decode(vec![record], max_bytes, chrono::Utc::now(), strip);
    assert_eq!(good.len() + bad.len(), 1, "one outcome per record");
    if let Some(poison) = bad.first() {
        let e = &poison.error;
        assert!(!e.kind().is_empty() && !e.to_string().is_empty());
        assert_eq!(
            poison.source.payload.as_deref(),
            Some(payload),
            "poison keeps its bytes for the DLQ"
        );
        if payload.len() > max_bytes {
            assert_eq!(e.kind(), "too_large");
        }
        return;
    }
    let loaded = &good[0];
    assert!(payload.len() <= max_bytes);
    let doc: Value = serde_json::from_slice(payload).expect("accepted payloads are JSON");
    let users = doc["results"].as_array().map_or(0, Vec::len);
    assert!(users > 0);
    assert_eq!(loaded.users.len(), users, "one row per user");
    assert_eq!(loaded.original(), payload, "the DLQ copy is the original");
    let stored: Value = serde_json::from_str(&loaded.payload_text).expect("stored text is JSON");
    if strip {
        for user in stored["results"].as_array().expect("results") {
            if let Some(login) = user.get("login").and_then(Value::as_object) {
                for secret in LOGIN_SECRETS {
                    assert!(!login.contains_key(secret), "{secret} kept: {login:?}");
                }
            }
        }
    } else {
        assert_eq!(
            loaded.payload_text.as_bytes(),
            payload,
            "kept byte for byte"
        );
    }
}

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        ".{0,40}".prop_map(Value::String),
        prop_oneof![
            Just("'; DROP TABLE raw_data; --".to_string()),
            Just("../../etc/passwd".to_string()),
            Just("\u{0}\u{1}\u{7f}\u{202e}".to_string()),
            Just("2026-13-45T99:99:99Z".to_string()),
        ]
        .prop_map(Value::String),
    ];
    leaf.prop_recursive(6, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map("[a-z_]{1,10}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A real user with one field (at any depth) replaced by arbitrary JSON.
fn mutated_user() -> impl Strategy<Value = Value> {
    let users: Vec<Value> = serde_json::from_slice::<Value>(V13).unwrap()["results"]
        .as_array()
        .unwrap()
        .clone();
    (
        0..users.len(),
        prop::collection::vec("[a-z]{1,10}", 1..3),
        arb_json(),
    )
        .prop_map(move |(i, path, v)| {
            let mut user = users[i].clone();
            let keys: Vec<String> = user
                .as_object()
                .map(|o| o.keys().cloned().collect())
                .unwrap_or_default();
            let first = keys[path[0].len() % keys.len()].clone();
            if path.len() > 1 && user[&first].is_object() {
                user[&first][&path[1]] = v;
            } else {
                user[&first] = v;
            }
            user
        })
}

proptest! {
    #[test]
    fn byte_level_mutations_of_real_captures(
        pick in 0usize..3,
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..8),
        cut in any::<prop::sample::Index>(),
        truncate in any::<bool>(),
        k in knobs(),
    ) {
        let mut bytes = [V13, V14, V10][pick].to_vec();
        for (at, byte, op) in edits {
            let i = at.index(bytes.len().max(1));
            match op {
                0 if i < bytes.len() => bytes[i] = byte,
                1 => bytes.insert(i.min(bytes.len()), byte),
                _ if i < bytes.len() => { bytes.remove(i); }
                _ => {}
            }
        }
        if truncate {
            bytes.truncate(cut.index(bytes.len().max(1)));
        }
        check(&bytes, k);
    }

    #[test]
    fn users_with_a_field_replaced_by_arbitrary_json(users in prop::collection::vec(mutated_user(), 1..5), k in knobs()) {
        let doc = serde_json::json!({"results": users, "info": {"seed": "x", "results": 1, "page": 1, "version": "1.4"}});
        check(&serde_json::to_vec(&doc).unwrap(), k);
    }

    #[test]
    fn arbitrary_json_documents(doc in arb_json(), k in knobs()) {
        check(&serde_json::to_vec(&doc).unwrap(), k);
        check(&serde_json::to_vec(&serde_json::json!({"results": [doc]})).unwrap(), k);
    }
}

#[test]
fn deeply_nested_json_is_refused_not_a_stack_overflow() {
    let deep = format!(
        "{{\"results\":[{}{}]}}",
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    let err =
        transform::transform(deep.as_bytes(), uuid::Uuid::nil(), chrono::Utc::now()).unwrap_err();
    assert!(matches!(err, TransformError::NotJson(_)), "{err}");
    // And through the consumer's path: poison, bytes kept.
    for strip in [true, false] {
        check(deep.as_bytes(), Knobs { limit: 0, strip });
    }
}
