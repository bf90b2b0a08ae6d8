//! Hostile records against the parse/transform path: mutations of the real captures and
//! arbitrary JSON. Whatever comes in, the transform answers Ok with one row per user or a
//! classified error — it never panics. `PROPTEST_CASES` sets the number of cases per property
//! (CI runs the default smoke size; SECURITY.md records a long run).

use loader::transform::{self, TransformError};
use proptest::prelude::*;
use serde_json::Value;

const V13: &[u8] = include_bytes!("../../fixtures/randomuser/v1.3-compact-20-users.json");
const V14: &[u8] =
    include_bytes!("../../fixtures/randomuser/v1.4-all-nationalities-111-users.json");
const V10: &[u8] = include_bytes!("../../fixtures/randomuser/v1.0-legacy-6-users.json");

fn check(payload: &[u8]) {
    let at = chrono::Utc::now();
    match transform::transform(payload, uuid::Uuid::nil(), at) {
        Ok(rows) => {
            let doc: Value = serde_json::from_slice(payload).expect("accepted payloads are JSON");
            assert_eq!(rows.len(), doc["results"].as_array().map_or(0, Vec::len));
            assert!(!rows.is_empty());
        }
        Err(e) => assert!(!e.kind().is_empty() && !e.to_string().is_empty()),
    }
    let _ = transform::strip_login_secrets(&String::from_utf8_lossy(payload));
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
        check(&bytes);
    }

    #[test]
    fn users_with_a_field_replaced_by_arbitrary_json(users in prop::collection::vec(mutated_user(), 1..5)) {
        let doc = serde_json::json!({"results": users, "info": {"seed": "x", "results": 1, "page": 1, "version": "1.4"}});
        check(&serde_json::to_vec(&doc).unwrap());
    }

    #[test]
    fn arbitrary_json_documents(doc in arb_json()) {
        check(&serde_json::to_vec(&doc).unwrap());
        check(&serde_json::to_vec(&serde_json::json!({"results": [doc]})).unwrap());
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
}
