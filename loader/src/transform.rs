//! The transform: one raw randomuser 1.4 response in, one processed row per user out.
//!
//! A pure function of its inputs (the clock is an argument), so it is tested on the real
//! captures and a replay transforms a record exactly as the first load did. Anything it cannot
//! turn into rows is a [`TransformError`] naming its kind: that record is poison and goes to
//! the dead-letter topic; it never stops the partition.

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::Value;
use uuid::Uuid;

/// Namespace for the deterministic raw ids (UUIDv5 of a record's identity).
const RAW_ID_NAMESPACE: Uuid = Uuid::from_u128(0x6f1c_2b0e_55d1_4a47_9a53_0c2e_7b2d_a1f4);

/// Who a record is, independent of where it sits in the topic: a recreated topic restarts its
/// offsets and a re-published or mirrored record sits at new ones, so a position cannot say
/// whether two deliveries are the same record. The identity can.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Identity {
    /// `fetch:<fetch id>` for the extractor's records, `sha256:<hex>` (of the payload) for
    /// records other tools produced: unique in `raw_data.record_key`.
    pub key: String,
    /// UUIDv5 of `key`: Parquet carries it before the database answers.
    pub raw_id: Uuid,
    /// SHA-256 of the payload as the topic holds it: the same id with other bytes is a conflict.
    pub digest: [u8; 32],
}

impl Identity {
    /// The identity of a record with `fetch_id` (the extractor's) or, without one, of its
    /// payload alone.
    pub fn of(fetch_id: Option<&str>, payload: &[u8]) -> Self {
        let digest = digest(payload);
        let key = match fetch_id {
            Some(id) => format!("fetch:{id}"),
            None => format!("sha256:{}", hex::encode(digest)),
        };
        Self {
            raw_id: Uuid::new_v5(&RAW_ID_NAMESPACE, key.as_bytes()),
            key,
            digest,
        }
    }
}

/// SHA-256 of `bytes`.
pub fn digest(bytes: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).into()
}

/// One user, flattened: a `processed_data` row and a processed Parquet row.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessedUser {
    /// The raw record it came from.
    pub raw_id: Uuid,
    /// Position in the response's `results`: with `raw_id`, the natural key.
    pub user_index: i32,
    /// `login.uuid`.
    pub user_uuid: Option<String>,
    /// Title, first and last name, space-separated.
    pub full_name: String,
    /// `name.title`.
    pub title: Option<String>,
    /// `name.first`.
    pub first_name: String,
    /// `name.last`.
    pub last_name: String,
    /// `email`.
    pub email: String,
    /// `gender`.
    pub gender: Option<String>,
    /// `nat`, the nationality code.
    pub nationality: Option<String>,
    /// `location.city`.
    pub city: Option<String>,
    /// `location.state`.
    pub state: Option<String>,
    /// `location.country`.
    pub country: Option<String>,
    /// `location.postcode`, a number or a string in the API, always text here (leading zeros kept).
    pub postcode: Option<String>,
    /// `dob.date`.
    pub date_of_birth: Option<DateTime<Utc>>,
    /// `registered.date`.
    pub registered_date: DateTime<Utc>,
    /// When the loader transformed it.
    pub processed_at: DateTime<Utc>,
}

/// Why a record is poison.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransformError {
    /// The message has no value.
    #[error("the record has no payload")]
    NoPayload,
    /// Bigger than `LOADER_MAX_RECORD_BYTES`.
    #[error("payload is {size} bytes, over the {limit}-byte limit")]
    TooLarge {
        /// Payload size.
        size: usize,
        /// The configured limit.
        limit: usize,
    },
    /// Not UTF-8, so not JSON.
    #[error("payload is not valid UTF-8: {0}")]
    InvalidUtf8(String),
    /// Not JSON.
    #[error("payload is not JSON: {0}")]
    NotJson(String),
    /// JSON with a NUL escape, which PostgreSQL's jsonb cannot store.
    #[error("payload contains a \\u0000 escape, which PostgreSQL jsonb cannot store")]
    Unstorable,
    /// The API's `error` body.
    #[error("payload is an API error body: {0}")]
    ApiError(String),
    /// `results` empty.
    #[error("payload has no users")]
    EmptyResults,
    /// The pre-1.x shape (Unix-second dates, street as a string, no login.uuid).
    #[error("user {index} has the legacy (pre-1.4) shape: {detail}")]
    LegacyShape {
        /// Which user.
        index: usize,
        /// What gave it away.
        detail: String,
    },
    /// JSON, but not the 1.4 shape.
    #[error("unexpected shape: {0}")]
    WrongShape(String),
}

impl TransformError {
    /// The `kind` header / metric label.
    pub fn kind(&self) -> &'static str {
        match self {
            TransformError::NoPayload => "no_payload",
            TransformError::TooLarge { .. } => "too_large",
            TransformError::InvalidUtf8(_) => "invalid_utf8",
            TransformError::NotJson(_) => "not_json",
            TransformError::Unstorable => "unstorable",
            TransformError::ApiError(_) => "api_error",
            TransformError::EmptyResults => "empty_results",
            TransformError::LegacyShape { .. } => "legacy_shape",
            TransformError::WrongShape(_) => "wrong_shape",
        }
    }
}

#[derive(Deserialize)]
struct ApiUser {
    #[serde(default)]
    gender: Option<String>,
    name: Name,
    #[serde(default)]
    location: Option<Location>,
    email: String,
    #[serde(default)]
    login: Option<Login>,
    #[serde(default)]
    dob: Option<Dated>,
    registered: Dated,
    #[serde(default)]
    nat: Option<String>,
}

#[derive(Deserialize)]
struct Name {
    #[serde(default)]
    title: Option<String>,
    first: String,
    last: String,
}

#[derive(Deserialize)]
struct Location {
    #[serde(default)]
    city: Option<String>,
    #[serde(default)]
    state: Option<String>,
    #[serde(default)]
    country: Option<String>,
    #[serde(default)]
    postcode: Option<Value>,
}

#[derive(Deserialize)]
struct Login {
    #[serde(default)]
    uuid: Option<String>,
}

#[derive(Deserialize)]
struct Dated {
    date: String,
}

/// The `login` fields randomuser.me fills with a password and its salt and hashes: credentials
/// (even fake ones) that nothing downstream needs.
pub const LOGIN_SECRETS: [&str; 5] = ["password", "salt", "md5", "sha1", "sha256"];

/// The payload without the users' [`LOGIN_SECRETS`], key order otherwise kept; `None` when
/// there was nothing to remove (or the text is not a JSON object, which the transform refuses
/// anyway). The raw copies in PostgreSQL and Parquet store this; the topic keeps the original.
pub fn strip_login_secrets(payload: &str) -> Option<String> {
    let mut doc: Value = serde_json::from_str(payload).ok()?;
    if strip_parsed(&mut doc) {
        serde_json::to_string(&doc).ok()
    } else {
        None
    }
}

/// Removes the users' [`LOGIN_SECRETS`] from a parsed response; true if anything went.
fn strip_parsed(doc: &mut Value) -> bool {
    let mut removed = false;
    let users = doc
        .get_mut("results")
        .and_then(Value::as_array_mut)
        .map(|a| a.iter_mut())
        .into_iter()
        .flatten();
    for user in users {
        if let Some(login) = user.get_mut("login").and_then(Value::as_object_mut) {
            for key in LOGIN_SECRETS {
                removed |= login.shift_remove(key).is_some();
            }
        }
    }
    removed
}

/// Checks the payload's envelope without transforming: used where only validity matters.
pub fn check_size(payload: &[u8], limit: usize) -> Result<(), TransformError> {
    if payload.len() > limit {
        return Err(TransformError::TooLarge {
            size: payload.len(),
            limit,
        });
    }
    Ok(())
}

/// Transforms one raw response into its users' rows.
pub fn transform(
    payload: &[u8],
    raw_id: Uuid,
    processed_at: DateTime<Utc>,
) -> Result<Vec<ProcessedUser>, TransformError> {
    let text =
        std::str::from_utf8(payload).map_err(|e| TransformError::InvalidUtf8(e.to_string()))?;
    let doc: Value =
        serde_json::from_str(text).map_err(|e| TransformError::NotJson(e.to_string()))?;
    users_of(text, &doc, raw_id, processed_at)
}

/// What the loader keeps of a record that transformed.
#[derive(Debug)]
pub struct Transformed {
    /// The users' rows.
    pub users: Vec<ProcessedUser>,
    /// What the raw sinks store: the payload, or the payload without the users' login secrets.
    pub stored: String,
    /// The payload byte for byte when `stored` differs from it (kept for the dead-letter topic,
    /// should PostgreSQL refuse the record); `None` when `stored` is the payload itself.
    pub original: Option<Vec<u8>>,
}

/// The loader's hot path: [`transform`] plus the text the raw sinks store — the payload itself
/// (moved, not copied) or, with `strip`, the payload without the users' [`LOGIN_SECRETS`] —
/// from a single parse. On error the payload comes back untouched, for the dead-letter topic.
pub fn transform_owned(
    payload: Vec<u8>,
    raw_id: Uuid,
    processed_at: DateTime<Utc>,
    strip: bool,
) -> Result<Transformed, (TransformError, Vec<u8>)> {
    let text = String::from_utf8(payload).map_err(|e| {
        let error = TransformError::InvalidUtf8(e.utf8_error().to_string());
        (error, e.into_bytes())
    })?;
    let mut doc: Value = match serde_json::from_str(&text) {
        Ok(doc) => doc,
        Err(e) => return Err((TransformError::NotJson(e.to_string()), text.into_bytes())),
    };
    let users = match users_of(&text, &doc, raw_id, processed_at) {
        Ok(users) => users,
        Err(e) => return Err((e, text.into_bytes())),
    };
    if strip && strip_parsed(&mut doc) {
        match serde_json::to_string(&doc) {
            Ok(stored) => {
                return Ok(Transformed {
                    users,
                    stored,
                    original: Some(text.into_bytes()),
                });
            }
            Err(e) => {
                let error = TransformError::WrongShape(format!("cannot re-serialise: {e}"));
                return Err((error, text.into_bytes()));
            }
        }
    }
    Ok(Transformed {
        users,
        stored: text,
        original: None,
    })
}

/// Whether JSON text holds a `\u0000` escape (a NUL, which jsonb refuses), as opposed to an
/// escaped backslash followed by `u0000`: an escape starts after an even run of backslashes.
fn has_nul_escape(text: &str) -> bool {
    let bytes = text.as_bytes();
    let mut from = 0;
    while let Some(i) = text[from..].find("\\u0000") {
        let at = from + i;
        let run = bytes[..at]
            .iter()
            .rev()
            .take_while(|&&b| b == b'\\')
            .count();
        if run % 2 == 0 {
            return true;
        }
        from = at + 1;
    }
    false
}

/// The checks and rows of a parsed response.
fn users_of(
    text: &str,
    doc: &Value,
    raw_id: Uuid,
    processed_at: DateTime<Utc>,
) -> Result<Vec<ProcessedUser>, TransformError> {
    let envelope = doc.as_object().ok_or_else(|| {
        TransformError::NotJson(format!("expected a JSON object, found {}", json_type(doc)))
    })?;
    if has_nul_escape(text) {
        return Err(TransformError::Unstorable);
    }
    match envelope.get("error") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => return Err(TransformError::ApiError(s.clone())),
        Some(other) => return Err(TransformError::ApiError(other.to_string())),
    }
    let results = match envelope.get("results") {
        None | Some(Value::Null) => {
            return Err(TransformError::WrongShape("no `results` array".to_string()));
        }
        Some(Value::Array(a)) => a,
        Some(other) => {
            return Err(TransformError::NotJson(format!(
                "`results` is {}, expected an array",
                json_type(other)
            )));
        }
    };
    if results.is_empty() {
        return Err(TransformError::EmptyResults);
    }
    results
        .iter()
        .enumerate()
        .map(|(index, value)| user_row(index, value, raw_id, processed_at))
        .collect()
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn user_row(
    index: usize,
    value: &Value,
    raw_id: Uuid,
    processed_at: DateTime<Utc>,
) -> Result<ProcessedUser, TransformError> {
    if let Some(detail) = legacy_marker(value) {
        return Err(TransformError::LegacyShape { index, detail });
    }
    let user = ApiUser::deserialize(value)
        .map_err(|e| TransformError::WrongShape(format!("user {index}: {e}")))?;
    let registered_date = parse_date(&user.registered.date).ok_or_else(|| {
        TransformError::WrongShape(format!(
            "user {index}: registered.date {:?} is not ISO-8601",
            user.registered.date
        ))
    })?;
    let date_of_birth = match &user.dob {
        Some(d) => Some(parse_date(&d.date).ok_or_else(|| {
            TransformError::WrongShape(format!(
                "user {index}: dob.date {:?} is not ISO-8601",
                d.date
            ))
        })?),
        None => None,
    };
    let full_name = [
        user.name.title.as_deref().unwrap_or(""),
        &user.name.first,
        &user.name.last,
    ]
    .iter()
    .map(|s| s.trim())
    .filter(|s| !s.is_empty())
    .collect::<Vec<_>>()
    .join(" ");
    let location = user.location.unwrap_or(Location {
        city: None,
        state: None,
        country: None,
        postcode: None,
    });
    let postcode = match location.postcode {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s),
        Some(Value::Number(n)) => Some(n.to_string()),
        Some(other) => {
            return Err(TransformError::WrongShape(format!(
                "user {index}: location.postcode is neither a number nor a string: {other}"
            )));
        }
    };
    Ok(ProcessedUser {
        raw_id,
        user_index: i32::try_from(index)
            .map_err(|_| TransformError::WrongShape("too many users".to_string()))?,
        user_uuid: user.login.and_then(|l| l.uuid),
        full_name,
        title: user.name.title,
        first_name: user.name.first,
        last_name: user.name.last,
        email: user.email,
        gender: user.gender,
        nationality: user.nat,
        city: location.city,
        state: location.state,
        country: location.country,
        postcode,
        date_of_birth,
        registered_date,
        processed_at,
    })
}

/// What marks a user as the legacy (v1.0) shape rather than merely malformed.
fn legacy_marker(user: &Value) -> Option<String> {
    if user.get("registered").is_some_and(Value::is_number) {
        return Some("`registered` is a Unix timestamp, not {date, age}".to_string());
    }
    if user.get("dob").is_some_and(Value::is_number) {
        return Some("`dob` is a Unix timestamp, not {date, age}".to_string());
    }
    if user
        .pointer("/location/street")
        .is_some_and(Value::is_string)
    {
        return Some("`location.street` is a string, not {number, name}".to_string());
    }
    if user.get("user").is_some() {
        return Some("users are wrapped in a `user` object".to_string());
    }
    None
}

fn parse_date(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|d| d.with_timezone(&Utc))
}

#[cfg(test)]
mod tests {
    use super::*;

    const V14: &[u8] =
        include_bytes!("../../fixtures/randomuser/v1.4-all-nationalities-111-users.json");
    const V13: &[u8] = include_bytes!("../../fixtures/randomuser/v1.3-compact-20-users.json");
    const V10: &[u8] = include_bytes!("../../fixtures/randomuser/v1.0-legacy-6-users.json");

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
}
