//! The transform on the real captures and on every kind of bad input.

use super::*;

const V14: &[u8] =
    include_bytes!("../../../fixtures/randomuser/v1.4-all-nationalities-111-users.json");
const V13: &[u8] = include_bytes!("../../../fixtures/randomuser/v1.3-compact-20-users.json");
const V10: &[u8] = include_bytes!("../../../fixtures/randomuser/v1.0-legacy-6-users.json");

fn at() -> DateTime<Utc> {
    parse_date("2026-11-24T09:00:00Z").unwrap()
}

fn users_of(payload: &[u8]) -> Vec<Value> {
    serde_json::from_slice::<Value>(payload).unwrap()["results"]
        .as_array()
        .unwrap()
        .clone()
}

#[test]
fn every_user_of_every_current_fixture_transforms_faithfully() {
    for (name, payload) in [("v1.4", V14), ("v1.3", V13)] {
        let id = Identity::of(Some("f7"), b"").raw_id;
        let rows = transform(payload, id, at()).unwrap();
        let users = users_of(payload);
        assert_eq!(rows.len(), users.len(), "{name}");
        for (row, user) in rows.iter().zip(&users) {
            assert_eq!(row.raw_id, id);
            assert_eq!(row.email, user["email"].as_str().unwrap(), "{name}");
            assert_eq!(row.first_name, user["name"]["first"].as_str().unwrap());
            assert_eq!(
                row.full_name,
                format!(
                    "{} {} {}",
                    user["name"]["title"].as_str().unwrap(),
                    user["name"]["first"].as_str().unwrap(),
                    user["name"]["last"].as_str().unwrap()
                )
            );
            assert_eq!(row.user_uuid.as_deref(), user["login"]["uuid"].as_str());
            assert_eq!(row.gender.as_deref(), user["gender"].as_str());
            assert_eq!(row.nationality.as_deref(), user["nat"].as_str());
            assert_eq!(
                row.registered_date,
                parse_date(user["registered"]["date"].as_str().unwrap()).unwrap()
            );
            assert_eq!(row.processed_at, at());
        }
        let idx: Vec<i32> = rows.iter().map(|r| r.user_index).collect();
        assert_eq!(idx, (0..users.len() as i32).collect::<Vec<_>>());
    }
}

#[test]
fn persian_script_names_pass_through_intact() {
    let rows = transform(V14, Uuid::nil(), at()).unwrap();
    let persian: Vec<&ProcessedUser> = rows
        .iter()
        .filter(|r| r.nationality.as_deref() == Some("IR"))
        .collect();
    assert!(!persian.is_empty());
    for r in &persian {
        assert!(
            r.full_name
                .chars()
                .any(|c| ('\u{0600}'..='\u{06FF}').contains(&c)),
            "expected Arabic-script letters in {:?}",
            r.full_name
        );
    }
    let v13 = transform(V13, Uuid::nil(), at()).unwrap();
    assert!(v13.iter().any(|r| {
        r.full_name
            .chars()
            .any(|c| ('\u{0600}'..='\u{06FF}').contains(&c))
    }));
}

#[test]
fn postcodes_as_numbers_and_strings_both_become_text() {
    let rows = transform(V14, Uuid::nil(), at()).unwrap();
    let users = users_of(V14);
    let mut numbers = 0;
    let mut strings = 0;
    for (row, user) in rows.iter().zip(&users) {
        match &user["location"]["postcode"] {
            Value::Number(n) => {
                numbers += 1;
                assert_eq!(row.postcode.as_deref(), Some(n.to_string().as_str()));
            }
            Value::String(s) => {
                strings += 1;
                assert_eq!(row.postcode.as_deref(), Some(s.as_str()));
            }
            other => panic!("unexpected postcode {other}"),
        }
    }
    assert!(
        numbers > 0 && strings > 0,
        "fixture should have both ({numbers}, {strings})"
    );
}

#[test]
fn null_id_value_does_not_matter() {
    let users = users_of(V14);
    let nulls = users.iter().filter(|u| u["id"]["value"].is_null()).count();
    assert!(nulls > 0, "fixture has null id.value");
    assert_eq!(transform(V14, Uuid::nil(), at()).unwrap().len(), 111);
}

#[test]
fn legacy_v1_0_is_a_clear_error_not_a_panic() {
    let err = transform(V10, Uuid::nil(), at()).unwrap_err();
    assert_eq!(err.kind(), "legacy_shape");
    assert!(err.to_string().contains("legacy"), "{err}");
}

#[test]
fn only_a_real_nul_escape_is_unstorable() {
    assert!(has_nul_escape(r#"{"a":"\u0000"}"#));
    assert!(has_nul_escape(r#"{"a\u0000":1}"#));
    assert!(
        has_nul_escape(r#"{"a":"\\\u0000"}"#),
        "a backslash, then a NUL"
    );
    assert!(
        !has_nul_escape(r#"{"a":"\\u0000"}"#),
        "a backslash, then text"
    );
    assert!(!has_nul_escape(r#"{"a":"\\\\u0000"}"#));
    assert!(!has_nul_escape(r#"{"a":"u0000 \u0001"}"#));

    // A real user whose name is the text `\u0000` loads, and keeps it verbatim.
    let mut doc: Value = serde_json::from_slice(V13).unwrap();
    doc["results"][0]["name"]["first"] = Value::String("\\u0000'; DROP TABLE x;--".into());
    let payload = serde_json::to_vec(&doc).unwrap();
    let rows = transform(&payload, Uuid::nil(), at()).expect("stored, not refused");
    assert!(rows[0].full_name.contains("\\u0000'; DROP TABLE x;--"));
}

#[test]
fn poison_kinds() {
    let cases: Vec<(&[u8], &str)> = vec![
        (b"\xff\xfe not utf8", "invalid_utf8"),
        (b"<html>502</html>", "not_json"),
        (br#"{"results":[{"name":"#, "not_json"),
        (br#"{"error":"Uh oh"}"#, "api_error"),
        (br#"{"results":[]}"#, "empty_results"),
        (br#"{"info":{}}"#, "wrong_shape"),
        (br#"{"results":[{"name":{"first":"a","last":"b"}}]}"#, "wrong_shape"),
        (
            br#"{"results":[{"name":{"first":"a\u0000","last":"b"},"email":"e","registered":{"date":"2020-01-01T00:00:00Z"}}]}"#,
            "unstorable",
        ),
        (
            br#"{"results":[{"name":{"first":"a","last":"b"},"email":"e","registered":{"date":"last week"}}]}"#,
            "wrong_shape",
        ),
    ];
    for (payload, kind) in cases {
        let err = transform(payload, Uuid::nil(), at()).unwrap_err();
        assert_eq!(
            err.kind(),
            kind,
            "{}: {err}",
            String::from_utf8_lossy(payload)
        );
    }
    assert_eq!(check_size(&[0; 11], 10).unwrap_err().kind(), "too_large");
    assert!(check_size(&[0; 10], 10).is_ok());
}

#[test]
fn login_secrets_are_stripped_and_nothing_else() {
    let text = std::str::from_utf8(V14).unwrap();
    let stripped = strip_login_secrets(text).expect("the fixture has login secrets");
    let mut original: Value = serde_json::from_str(text).unwrap();
    let mut after: Value = serde_json::from_str(&stripped).unwrap();
    for (o, a) in original["results"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .zip(after["results"].as_array_mut().unwrap())
    {
        let login = o["login"].as_object_mut().unwrap();
        for key in LOGIN_SECRETS {
            assert!(
                login.shift_remove(key).is_some(),
                "fixture user has login.{key}"
            );
            assert!(a["login"].get(key).is_none(), "login.{key} stripped");
        }
        assert!(a["login"]["uuid"].is_string() && a["login"]["username"].is_string());
    }
    assert_eq!(original, after, "everything else is kept");
    assert_eq!(
        strip_login_secrets(&stripped),
        None,
        "nothing left to strip"
    );
    assert_eq!(strip_login_secrets("not json"), None);
    assert_eq!(
        transform(stripped.as_bytes(), Uuid::nil(), at()).unwrap(),
        transform(V14, Uuid::nil(), at()).unwrap()
    );
}

#[test]
fn identity_is_the_fetch_id_or_the_payload_never_the_position() {
    let a = Identity::of(Some("0190-a"), V13);
    assert_eq!(a, Identity::of(Some("0190-a"), V13), "deterministic");
    assert_eq!(a.key, "fetch:0190-a");
    // The same fetch id with other bytes: same key and raw id, other digest (a conflict).
    let b = Identity::of(Some("0190-a"), V14);
    assert_eq!((b.key.as_str(), b.raw_id), (a.key.as_str(), a.raw_id));
    assert_ne!(b.digest, a.digest);
    assert_ne!(Identity::of(Some("0190-b"), V13).raw_id, a.raw_id);
    // Without a fetch id the payload is the identity.
    let c = Identity::of(None, V13);
    assert_eq!(c, Identity::of(None, V13));
    assert_eq!(c.key, format!("sha256:{}", hex::encode(c.digest)));
    assert_eq!(
        Identity::of(None, b"abc").key,
        "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
        "the standard SHA-256 test vector"
    );
    assert_ne!(Identity::of(None, V14).raw_id, c.raw_id);
    assert_ne!(c.raw_id, a.raw_id);
}

const USER: &str =
    r#"{"name":{"first":"a","last":"b"},"email":"e","registered":{"date":"2020-01-01T00:00:00Z"}"#;

#[test]
fn stripping_keeps_every_byte_outside_the_login_objects() {
    let payload = format!(
        "{{ \"results\": [\n  {USER}, \"login\": {{ \"uuid\": \"u-1\", \"password\" : \"p\",\n \
         \"salt\":\"s\", \"user\\\"name\": \"x\" }}, \"cell\": 1.50e2 }}\n ], \"info\": {{}} }}"
    );
    let stripped = strip_login_secrets(&payload).expect("a password and a salt");
    let expected = format!(
        "{{ \"results\": [\n  {USER}, \"login\": {{\"uuid\":\"u-1\",\"user\\\"name\":\"x\"}}, \
         \"cell\": 1.50e2 }}\n ], \"info\": {{}} }}"
    );
    assert_eq!(stripped, expected);

    // An escaped name is still a secret's name.
    let escaped =
        format!(r#"{{"results":[{USER},"login":{{"pass\u0077ord":"p","uuid":"u-2"}}}}]}}"#);
    let stripped = strip_login_secrets(&escaped).expect("an escaped `password`");
    assert!(
        stripped.ends_with(r#""login":{"uuid":"u-2"}}]}"#),
        "{stripped}"
    );

    // The loader's path stores the same text and keeps the original for the dead-letter topic.
    let t = transform_owned(payload.clone().into_bytes(), Uuid::nil(), at(), true).unwrap();
    assert_eq!(t.stored, expected);
    assert_eq!(t.original.as_deref(), Some(payload.as_bytes()));
    let kept = transform_owned(payload.clone().into_bytes(), Uuid::nil(), at(), false).unwrap();
    assert_eq!(
        (kept.stored.as_str(), kept.original),
        (payload.as_str(), None)
    );
}

#[test]
fn nesting_past_the_limit_is_refused_even_where_the_transform_does_not_look() {
    let deep = |levels: usize| {
        format!(
            r#"{{"results":[{USER},"picture":{}{}}}]}}"#,
            "[".repeat(levels),
            "]".repeat(levels)
        )
    };
    let err = transform(deep(200).as_bytes(), Uuid::nil(), at()).unwrap_err();
    assert_eq!(err.kind(), "not_json", "{err}");
    assert_eq!(
        transform(deep(20).as_bytes(), Uuid::nil(), at())
            .unwrap()
            .len(),
        1
    );

    // Brackets inside strings (and after escaped quotes) are text, not nesting.
    let brackets = format!(
        r#"{{"results":[{USER},"picture":"\"{}{}"}}]}}"#,
        "[{".repeat(200),
        "\\\\"
    );
    assert_eq!(
        transform(brackets.as_bytes(), Uuid::nil(), at())
            .unwrap()
            .len(),
        1
    );
}
