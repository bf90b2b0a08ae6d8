//! A borrowed view of a response: the envelope, each user's members and a `login`'s entries as
//! slices of the payload's text.
//!
//! The transform reads the few members it needs without building a JSON tree (a `Value` of a
//! 100-user response is thousands of allocations, and building it was most of a load's CPU), and
//! the login secrets are cut out of the text by position, so the rest is stored byte for byte.

use std::borrow::Cow;
use std::fmt;
use std::ops::Range;

use serde::Deserialize;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;

/// The top level: the two members the transform looks at, unparsed.
#[derive(Deserialize)]
pub(super) struct Envelope<'a> {
    #[serde(default, borrow)]
    pub error: Option<&'a RawValue>,
    #[serde(default, borrow)]
    pub results: Option<&'a RawValue>,
}

/// One user's members, unparsed: the legacy shape is told apart before any of them is typed.
/// `null` reads as absent, as it did for the typed fields.
#[derive(Deserialize)]
pub(super) struct UserFields<'a> {
    #[serde(default, borrow)]
    pub gender: Option<&'a RawValue>,
    #[serde(default, borrow)]
    pub name: Option<&'a RawValue>,
    #[serde(default, borrow)]
    pub location: Option<&'a RawValue>,
    #[serde(default, borrow)]
    pub email: Option<&'a RawValue>,
    #[serde(default, borrow)]
    pub login: Option<&'a RawValue>,
    #[serde(default, borrow)]
    pub dob: Option<&'a RawValue>,
    #[serde(default, borrow)]
    pub registered: Option<&'a RawValue>,
    #[serde(default, borrow)]
    pub nat: Option<&'a RawValue>,
    /// Whether the v0.x `user` wrapper is there at all (even as `null`).
    #[serde(default, deserialize_with = "present")]
    pub user: bool,
}

/// The one member of `location` the legacy check needs.
#[derive(Deserialize)]
pub(super) struct Street<'a> {
    #[serde(default, borrow)]
    pub street: Option<&'a RawValue>,
}

fn present<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    IgnoredAny::deserialize(d).map(|_| true)
}

/// A `login` object's entries in order, names unescaped and values unparsed.
pub(super) struct LoginEntries<'a>(pub Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'de> Deserialize<'de> for LoginEntries<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Entries;
        impl<'de> Visitor<'de> for Entries {
            type Value = LoginEntries<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut entries = Vec::with_capacity(map.size_hint().unwrap_or(8));
                while let Some((Name(name), value)) = map.next_entry::<Name, &RawValue>()? {
                    entries.push((name, value));
                }
                Ok(LoginEntries(entries))
            }
        }
        d.deserialize_map(Entries)
    }
}

/// A member name, borrowed from the text unless it had escapes (serde's `Cow` always copies).
struct Name<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Name<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Text;
        impl<'de> Visitor<'de> for Text {
            type Value = Name<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a member name")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Name(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Name(Cow::Owned(v.to_owned())))
            }
        }
        d.deserialize_str(Text)
    }
}

/// What kind of JSON value a raw value is, for error messages.
pub(super) fn json_type_of(raw: &str) -> &'static str {
    match raw.trim_start().as_bytes().first() {
        Some(b'n') => "null",
        Some(b't' | b'f') => "a boolean",
        Some(b'"') => "a string",
        Some(b'[') => "an array",
        Some(b'{') => "an object",
        _ => "a number",
    }
}

/// Whether a raw value is an object (JSON text starts with its first byte's kind).
pub(super) fn is_object(raw: &RawValue) -> bool {
    raw.get().starts_with('{')
}

/// Whether a raw value is a number.
pub(super) fn is_number(raw: &RawValue) -> bool {
    raw.get()
        .as_bytes()
        .first()
        .is_some_and(|b| *b == b'-' || b.is_ascii_digit())
}

/// Whether valid JSON text nests arrays and objects deeper than `limit`.
pub(super) fn nested_deeper_than(text: &str, limit: usize) -> bool {
    let mut depth = 0usize;
    let mut bytes = text.as_bytes().iter();
    while let Some(&b) = bytes.next() {
        match b {
            b'"' => {
                // A string: skip to its closing quote, stepping over escapes.
                while let Some(&c) = bytes.next() {
                    match c {
                        b'\\' => {
                            bytes.next();
                        }
                        b'"' => break,
                        _ => {}
                    }
                }
            }
            b'[' | b'{' => {
                depth += 1;
                if depth > limit {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

/// Where a raw value borrowed from `text` sits in it.
pub(super) fn span_in(text: &str, raw: &RawValue) -> Option<Range<usize>> {
    let start = (raw.get().as_ptr() as usize).checked_sub(text.as_ptr() as usize)?;
    let end = start.checked_add(raw.get().len())?;
    (end <= text.len() && text.get(start..end) == Some(raw.get())).then_some(start..end)
}

/// Appends a member name as JSON text (the escapes JSON requires, nothing more).
pub(super) fn push_name(out: &mut String, name: &str) {
    out.push('"');
    for c in name.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}
