//! The transform: one raw randomuser 1.4 response in, one processed row per user out.
//!
//! A pure function of its inputs (the clock is an argument), so it is tested on the real
//! captures and a replay transforms a record exactly as the first load did. Anything it cannot
//! turn into rows is a [`TransformError`] naming its kind: that record is poison and goes to
//! the dead-letter topic; it never stops the partition.

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde::de::{DeserializeOwned, IgnoredAny};
use serde_json::Value;
use serde_json::value::RawValue;
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

mod parse;
use parse::{Envelope, LoginEntries, Street, UserFields};

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
struct Dated {
    date: String,
}

/// The `login` fields randomuser.me fills with a password and its salt and hashes: credentials
/// (even fake ones) that nothing downstream needs.
pub const LOGIN_SECRETS: [&str; 5] = ["password", "salt", "md5", "sha1", "sha256"];

/// The payload without the users' [`LOGIN_SECRETS`]; `None` when there was nothing to remove
/// (or the text is not a JSON object, which the transform refuses anyway). Only the `login`
/// objects that held a secret change (rewritten without it, their other entries as they were):
/// every other byte is the payload's. The raw copies in PostgreSQL and Parquet store this; the
/// topic keeps the original.
pub fn strip_login_secrets(payload: &str) -> Option<String> {
    let envelope: Envelope = serde_json::from_str(payload).ok()?;
    let users: Vec<&RawValue> = serde_json::from_str(envelope.results?.get()).ok()?;
    let logins = users.iter().filter_map(|user| {
        let fields: UserFields = serde_json::from_str(user.get()).ok()?;
        fields.login
    });
    without_secrets(payload, logins)
}

/// The text with each of `logins` (values borrowed from it, in order) rewritten without its
/// [`LOGIN_SECRETS`]; `None` if none held one.
fn without_secrets<'a>(
    text: &str,
    logins: impl IntoIterator<Item = &'a RawValue>,
) -> Option<String> {
    let mut out: Option<String> = None;
    let mut copied = 0;
    for login in logins {
        if !parse::is_object(login) {
            continue;
        }
        let Ok(LoginEntries(entries)) = serde_json::from_str::<LoginEntries>(login.get()) else {
            continue;
        };
        if !entries.iter().any(|(name, _)| is_secret(name)) {
            continue;
        }
        let Some(span) = parse::span_in(text, login).filter(|s| s.start >= copied) else {
            continue;
        };
        let out = out.get_or_insert_with(|| String::with_capacity(text.len()));
        out.push_str(&text[copied..span.start]);
        out.push('{');
        let kept = entries.iter().filter(|(name, _)| !is_secret(name));
        for (i, (name, value)) in kept.enumerate() {
            if i > 0 {
                out.push(',');
            }
            parse::push_name(out, name);
            out.push(':');
            out.push_str(value.get());
        }
        out.push('}');
        copied = span.end;
    }
    out.map(|mut out| {
        out.push_str(&text[copied..]);
        out
    })
}

fn is_secret(name: &str) -> bool {
    LOGIN_SECRETS.contains(&name)
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
    let users = users_in(text)?;
    rows_of(&users, raw_id, processed_at)
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
    let (users, stripped) = match transform_text(&text, raw_id, processed_at, strip) {
        Ok(done) => done,
        Err(e) => return Err((e, text.into_bytes())),
    };
    Ok(match stripped {
        Some(stored) => Transformed {
            users,
            stored,
            original: Some(text.into_bytes()),
        },
        None => Transformed {
            users,
            stored: text,
            original: None,
        },
    })
}

/// The rows and, with `strip`, the text without the login secrets (if it held any).
fn transform_text(
    text: &str,
    raw_id: Uuid,
    processed_at: DateTime<Utc>,
    strip: bool,
) -> Result<(Vec<ProcessedUser>, Option<String>), TransformError> {
    let users = users_in(text)?;
    let rows = rows_of(&users, raw_id, processed_at)?;
    let stripped = if strip {
        without_secrets(text, users.iter().filter_map(|u| u.login))
    } else {
        None
    };
    Ok((rows, stripped))
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

/// How deep a payload may nest: serde_json's own limit, which the members skipped unparsed
/// would otherwise escape (and jsonb, and every engine reading the raw files, would meet).
const MAX_DEPTH: usize = 128;

/// The envelope's checks, in the order their errors take precedence, and the users' members.
fn users_in(text: &str) -> Result<Vec<UserFields<'_>>, TransformError> {
    if !text.trim_start().starts_with('{') {
        return Err(match serde_json::from_str::<IgnoredAny>(text) {
            Err(e) => TransformError::NotJson(e.to_string()),
            Ok(_) => TransformError::NotJson(format!(
                "expected a JSON object, found {}",
                parse::json_type_of(text)
            )),
        });
    }
    let envelope: Envelope =
        serde_json::from_str(text).map_err(|e| TransformError::NotJson(e.to_string()))?;
    if parse::nested_deeper_than(text, MAX_DEPTH) {
        return Err(TransformError::NotJson(format!(
            "nested deeper than {MAX_DEPTH} levels"
        )));
    }
    if has_nul_escape(text) {
        return Err(TransformError::Unstorable);
    }
    if let Some(error) = envelope.error {
        let message = match serde_json::from_str::<String>(error.get()) {
            Ok(text) => text,
            Err(_) => error.get().to_string(),
        };
        return Err(TransformError::ApiError(message));
    }
    let Some(results) = envelope.results else {
        return Err(TransformError::WrongShape("no `results` array".to_string()));
    };
    if !results.get().starts_with('[') {
        return Err(TransformError::NotJson(format!(
            "`results` is {}, expected an array",
            parse::json_type_of(results.get())
        )));
    }
    let users: Vec<&RawValue> =
        serde_json::from_str(results.get()).map_err(|e| TransformError::NotJson(e.to_string()))?;
    if users.is_empty() {
        return Err(TransformError::EmptyResults);
    }
    users
        .into_iter()
        .enumerate()
        .map(|(index, user)| {
            if !parse::is_object(user) {
                return Err(TransformError::WrongShape(format!(
                    "user {index}: expected an object, found {}",
                    parse::json_type_of(user.get())
                )));
            }
            serde_json::from_str(user.get())
                .map_err(|e| TransformError::WrongShape(format!("user {index}: {e}")))
        })
        .collect()
}

/// One row per user.
fn rows_of(
    users: &[UserFields<'_>],
    raw_id: Uuid,
    processed_at: DateTime<Utc>,
) -> Result<Vec<ProcessedUser>, TransformError> {
    users
        .iter()
        .enumerate()
        .map(|(index, user)| user_row(index, user, raw_id, processed_at))
        .collect()
}

/// A member the row needs: absent (or `null`) and mistyped are both the wrong shape.
fn required<T: DeserializeOwned>(
    index: usize,
    name: &str,
    raw: Option<&RawValue>,
) -> Result<T, TransformError> {
    let raw = raw.ok_or_else(|| {
        TransformError::WrongShape(format!("user {index}: missing field `{name}`"))
    })?;
    serde_json::from_str(raw.get())
        .map_err(|e| TransformError::WrongShape(format!("user {index}: `{name}`: {e}")))
}

/// A member the row may go without; mistyped is still the wrong shape.
fn optional<T: DeserializeOwned>(
    index: usize,
    name: &str,
    raw: Option<&RawValue>,
) -> Result<Option<T>, TransformError> {
    raw.map(|raw| required(index, name, Some(raw))).transpose()
}

#[derive(Deserialize)]
struct Login {
    #[serde(default)]
    uuid: Option<String>,
}

fn user_row(
    index: usize,
    user: &UserFields<'_>,
    raw_id: Uuid,
    processed_at: DateTime<Utc>,
) -> Result<ProcessedUser, TransformError> {
    if let Some(detail) = legacy_marker(user) {
        return Err(TransformError::LegacyShape { index, detail });
    }
    let name: Name = required(index, "name", user.name)?;
    let email: String = required(index, "email", user.email)?;
    let registered: Dated = required(index, "registered", user.registered)?;
    let dob: Option<Dated> = optional(index, "dob", user.dob)?;
    let login: Option<Login> = optional(index, "login", user.login)?;
    let registered_date = parse_date(&registered.date).ok_or_else(|| {
        TransformError::WrongShape(format!(
            "user {index}: registered.date {:?} is not ISO-8601",
            registered.date
        ))
    })?;
    let date_of_birth = match &dob {
        Some(d) => Some(parse_date(&d.date).ok_or_else(|| {
            TransformError::WrongShape(format!(
                "user {index}: dob.date {:?} is not ISO-8601",
                d.date
            ))
        })?),
        None => None,
    };
    let full_name = [name.title.as_deref().unwrap_or(""), &name.first, &name.last]
        .iter()
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    let location: Location = optional(index, "location", user.location)?.unwrap_or(Location {
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
        user_uuid: login.and_then(|l| l.uuid),
        full_name,
        title: name.title,
        first_name: name.first,
        last_name: name.last,
        email,
        gender: optional(index, "gender", user.gender)?,
        nationality: optional(index, "nat", user.nat)?,
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
fn legacy_marker(user: &UserFields<'_>) -> Option<String> {
    if user.registered.is_some_and(parse::is_number) {
        return Some("`registered` is a Unix timestamp, not {date, age}".to_string());
    }
    if user.dob.is_some_and(parse::is_number) {
        return Some("`dob` is a Unix timestamp, not {date, age}".to_string());
    }
    let street = user
        .location
        .filter(|l| parse::is_object(l))
        .and_then(|l| serde_json::from_str::<Street>(l.get()).ok())
        .and_then(|l| l.street);
    if street.is_some_and(|s| s.get().starts_with('"')) {
        return Some("`location.street` is a string, not {number, name}".to_string());
    }
    if user.user {
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
