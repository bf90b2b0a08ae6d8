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

mod identity;
pub use identity::{Identity, digest};

/// The transform's output row, declared with its columns in [`crate::rows`].
pub use crate::rows::ProcessedUser;

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
mod tests;
